"""Meta-Attention: one entry point runs a layer's whole attention task table (paper §4.2.1).

``plan`` (once per step) builds the task table (``xyserve.plan.task_table``) and turns it into an
execution schedule; ``run`` (once per layer) executes it. On CUDA tensors the Triton kernel runs
the task table in one launch; elsewhere the CPU path below runs.

CPU path (single-row decode tiles go to ``kernels.cpu.decode``'s numba kernel; the rest is torch ops),
chosen by measurement on a 2-core x86 box (``xyserve bench kernels``);
the fused CPU flash kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``, which also
returns the log-sum-exp) does the math, with a plain matmul/softmax fallback:

* Tiles of every stage -- prefill chunks, decodes, verifies, from any request -- are grouped into
  *packs* of like shape (decode rows alone; other tiles by tile size), kept in the task table's
  cost order and split where the key extent drops below 3/4 of the pack's longest, so
  padding stays small. A pack runs as
  batched fused attention calls, so forty decode stages cost one call, not forty.
* The query heads of one KV group are packed into the tile's rows (GQA): K/V are never repeated.
* K/V are read from the paged cache through the block tables one bounded KV chunk at a time
  (the CPU analogue of a kernel's tile loads): there is no per-request concatenation or
  contiguous copy of a history, and chunks are merged with the online-softmax (log-sum-exp)
  update, so a long context runs in memory bounded by ``kv_chunk_bytes``.
* Masks (causal with any prefix offset, decode, verify, tree) are derived from positions, built
  once per step in ``plan`` and shared by every layer; chunks that only see history need none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from xyserve.kernels.attention.metadata import AttentionMetadata
from xyserve.kernels.cpu import decode as cpu_decode
from xyserve.plan.task_table import TaskTable, Tile, build_task_table

NEG = -1.0e30  # additive mask value: finite, so a fully masked chunk row merges with weight 0

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@dataclass
class _Chunk:
    """One fused call: tiles [0, num) of a pack (or a slice of them) against one KV range."""

    b0: int
    b1: int
    c0: int  # first key position
    width: int  # keys read (a multiple of the block size)
    block_ids: torch.Tensor  # [(b1 - b0) * width / block_size] physical blocks, long
    mask: torch.Tensor | None  # [(b1 - b0), 1, R*G, width] additive, or None (all visible)


@dataclass
class _Pack:
    rows: int  # R: query rows per tile, padded to the pack's largest tile
    q_index: torch.Tensor  # [B, R] flat query row of each tile row (padding -> 0)
    valid: torch.Tensor  # [V] positions in the flattened [B * R] that are real rows
    out_rows: torch.Tensor  # [V] their flat query rows
    chunks: list[_Chunk] = field(default_factory=list)

    @property
    def num_tiles(self) -> int:
        return int(self.q_index.shape[0])


@dataclass
class MetaAttentionPlan:
    meta: AttentionMetadata
    tasks: TaskTable
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    packs: list[_Pack]
    decode: cpu_decode.DecodePlan | None = None  # single-row tiles for the numba kernel
    triton: Any = None  # device arrays of the task table, built when tensors are on CUDA


def _group_tiles(tiles: list[Tile], order: list[int], ratio: float) -> list[list[int]]:
    """Packs of like tiles, in task-table (cost) order, split where the key extent drops."""
    classes: dict[tuple[bool, int], list[int]] = {}
    for t in order:
        tile = tiles[t]
        key = (tile.num_rows == 1 and not tile.has_tree, tile.tile_size)
        classes.setdefault(key, []).append(t)
    packs: list[list[int]] = []
    for members in classes.values():
        members.sort(key=lambda t: -tiles[t].kv_extent)
        cur: list[int] = []
        for t in members:
            if cur and tiles[t].kv_extent < ratio * tiles[cur[0]].kv_extent:
                packs.append(cur)
                cur = []
            cur.append(t)
        if cur:
            packs.append(cur)
    return packs


def _chunk_mask(
    tiles: list[Tile],
    members: list[int],
    rows: int,
    group: int,
    c0: int,
    width: int,
    tree_masks: list[torch.Tensor | None],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive mask of one chunk, or None when every real row sees every key of it."""
    need = False
    for t in members:
        tile = tiles[t]
        first_masked = tile.context_len if tile.has_tree else tile.context_len + tile.row_offset + 1
        if c0 + width > min(first_masked, tile.kv_extent):
            need = True
            break
    if not need:
        return None
    b = len(members)
    kpos = torch.arange(c0, c0 + width, device=device)
    qpos = torch.full((b, rows), 1 << 40, dtype=torch.long, device=device)  # padding sees all
    for i, t in enumerate(members):
        tile = tiles[t]
        base = tile.context_len + tile.row_offset
        qpos[i, : tile.num_rows] = torch.arange(base, base + tile.num_rows, device=device)
    allowed = kpos.view(1, 1, -1) <= qpos.unsqueeze(-1)  # causal by position (incl. decode)
    for i, t in enumerate(members):
        tile = tiles[t]
        if not tile.has_tree:
            continue
        tree = tree_masks[tile.stage].to(device)
        ctx, n = tile.context_len, tree.shape[0]
        rel = kpos - ctx
        in_new = (rel >= 0) & (rel < n)
        sub = tree[tile.row_offset : tile.row_offset + tile.num_rows]  # [rows, n]
        seen = sub[:, rel.clamp(0, n - 1)] & in_new  # [rows, width]
        allowed[i, : tile.num_rows] = (kpos < ctx) | seen
    add = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, NEG)
    # Rows are packed (row, head-in-group): repeat each row's mask for the group's heads.
    return add.unsqueeze(2).expand(b, rows, group, width).reshape(b, 1, rows * group, width)


def build_plan(
    meta: AttentionMetadata,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    num_workers: int = 1,
    kv_chunk: int = 512,
    kv_chunk_bytes: int = 64 << 20,
    group_ratio: float = 0.75,
    dtype: torch.dtype = torch.float32,
    decode_kernel: bool = True,
) -> MetaAttentionPlan:
    """Task table plus the CPU schedule: packs of tiles and their KV chunks and masks.

    With ``decode_kernel`` (and numba, float32), single-row causal tiles -- decodes, and the
    last row of a chunk -- go to ``kernels.cpu.decode`` instead of packs.
    """
    table = meta.table
    device = meta.slot_mapping.device
    bs = table.block_size
    group = num_q_heads // num_kv_heads
    tasks = build_task_table(table, num_kv_heads, num_workers)
    tiles = tasks.tiles
    seen: set[int] = set()
    order = [u.tile for u in tasks.units if not (u.tile in seen or seen.add(u.tile))]
    decode = None
    if decode_kernel and cpu_decode.available(dtype):
        single = [t for t in order if tiles[t].num_rows == 1 and not tiles[t].has_tree]
        order = [t for t in order if tiles[t].num_rows != 1 or tiles[t].has_tree]
        decode = cpu_decode.build_decode_plan(
            [tiles[t].q_start for t in single],
            [tiles[t].kv_extent for t in single],
            [
                table.rows[tiles[t].stage].block_table[: -(-tiles[t].kv_extent // bs)]
                for t in single
            ],
            num_workers,
        )
    elem = torch.finfo(dtype).bits // 8
    max_keys = max(bs, kv_chunk_bytes // max(1, 2 * num_kv_heads * head_dim * elem))
    chunk = max(bs, (kv_chunk // bs) * bs)
    packs: list[_Pack] = []
    for members in _group_tiles(tiles, order, group_ratio):
        rows = max(tiles[t].num_rows for t in members)
        q_index = torch.zeros((len(members), rows), dtype=torch.long)
        valid: list[int] = []
        out_rows: list[int] = []
        for i, t in enumerate(members):
            tile = tiles[t]
            q_index[i, : tile.num_rows] = torch.arange(tile.q_start, tile.q_start + tile.num_rows)
            valid.extend(range(i * rows, i * rows + tile.num_rows))
            out_rows.extend(range(tile.q_start, tile.q_start + tile.num_rows))
        pack = _Pack(
            rows=rows,
            q_index=q_index.to(device),
            valid=torch.tensor(valid, dtype=torch.long, device=device),
            out_rows=torch.tensor(out_rows, dtype=torch.long, device=device),
        )
        exts = [tiles[t].kv_extent for t in members]
        c0 = 0
        while c0 < exts[0]:
            active = sum(1 for e in exts if e > c0)
            width = min(chunk, math.ceil((exts[0] - c0) / bs) * bs)
            per_call = max(1, max_keys // width)
            for b0 in range(0, active, per_call):
                b1 = min(active, b0 + per_call)
                ids = []
                for t in members[b0:b1]:
                    bt = table.rows[tiles[t].stage].block_table
                    for j in range(c0 // bs, (c0 + width) // bs):
                        ids.append(bt[j] if j < len(bt) else 0)  # past the end: masked
                mask = _chunk_mask(
                    tiles, members[b0:b1], rows, group, c0, width, meta.tree_masks, dtype, device
                )
                pack.chunks.append(
                    _Chunk(
                        b0, b1, c0, width, torch.tensor(ids, dtype=torch.long, device=device), mask
                    )
                )
            c0 += width
        packs.append(pack)
    return MetaAttentionPlan(meta, tasks, num_q_heads, num_kv_heads, head_dim, packs, decode)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention of one chunk: (output [B, H, L, D], log-sum-exp [B, H, L])."""
    if _FLASH_CPU is not None and q.device.type == "cpu":
        o, lse = _FLASH_CPU(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        return o, lse
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask.float()
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v.float()).to(q.dtype)
    return o, lse


class Workspace:
    """Reused gather buffers for K/V chunks.

    A fresh multi-MB tensor per chunk and layer comes from ``mmap`` and page-faults on first
    touch; profiled once on the dev box, that made the gathers ~3x slower than a copy into
    warm memory.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, like.dtype, like.device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf[:n].view(shape)


def run_cpu(
    plan: MetaAttentionPlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Execute every pack of the plan; rows of empty stages stay zero."""
    t, hq, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    group = hq // hkv
    ws = workspace or Workspace()
    k_rows = k_cache.view(nb, -1)
    v_rows = v_cache.view(nb, -1)
    out = q.new_zeros((t, hq, d))
    if plan.decode is not None:
        cpu_decode.run_decode(plan.decode, q, k_cache, v_cache, scale, out)
    for pack in plan.packs:
        b, r = pack.num_tiles, pack.rows
        # [B, R, Hkv, G, D] -> [B, Hkv, R*G, D]: the KV group's heads ride in the tile's rows.
        qp = q.index_select(0, pack.q_index.view(-1)).view(b, r, hkv, group, d)
        qp = qp.transpose(1, 2).reshape(b, hkv, r * group, d)
        acc: torch.Tensor | None = None
        lse: torch.Tensor | None = None
        for c in pack.chunks:
            n = c.b1 - c.b0
            shape = (c.block_ids.numel(), bs * hkv * d)
            k = torch.index_select(k_rows, 0, c.block_ids, out=ws.take("k", shape, k_cache))
            v = torch.index_select(v_rows, 0, c.block_ids, out=ws.take("v", shape, v_cache))
            k = k.view(n, c.width, hkv, d).transpose(1, 2)
            v = v.view(n, c.width, hkv, d).transpose(1, 2)
            o, l_ = _attend(qp[c.b0 : c.b1], k, v, c.mask, scale)
            if c.c0 == 0 and c.b0 == 0 and c.b1 == b:
                acc, lse = o.float(), l_.float()
                continue
            if acc is None or lse is None:
                acc = qp.new_zeros(qp.shape, dtype=torch.float32)
                lse = qp.new_full(qp.shape[:-1], float("-inf"), dtype=torch.float32)
            if c.c0 == 0:
                acc[c.b0 : c.b1] = o
                lse[c.b0 : c.b1] = l_
                continue
            # Online-softmax merge of this chunk into the running (acc, lse).
            a, s = acc[c.b0 : c.b1], lse[c.b0 : c.b1]
            new = torch.logaddexp(s, l_)
            a.mul_(torch.exp(s - new).unsqueeze(-1)).add_(o * torch.exp(l_ - new).unsqueeze(-1))
            s.copy_(new)
        if acc is None:
            continue
        res = acc.to(q.dtype).view(b, hkv, r, group, d).transpose(1, 2).reshape(b * r, hq, d)
        if r > 1:
            res = res.index_select(0, pack.valid)
        out.index_copy_(0, pack.out_rows, res)
    return out

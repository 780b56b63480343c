"""Meta-Attention's CPU plan: the task table cut into packs and KV chunks, and the decode tiles.

Built once per step on the host (``build_plan``), run by every layer
(``kernels.attention.meta.cpu.run_cpu``). Tiles of every stage -- prefill chunks, decodes,
verifies, from any request -- come from the task table (``plan.task_table``) and are grouped
into *packs* of like shape (decode rows alone; other tiles by tile size), kept in the task
table's cost order and split where the key extent drops below ``group_ratio`` of the pack's
longest, so padding stays small. Each pack is cut into KV chunks of at most ``kv_chunk`` keys
and ``kv_chunk_bytes`` of gathered K/V per call; a chunk's additive mask (causal with any prefix
offset, decode, verify, tree) is derived from positions here, and is None where every real row
sees every key of the chunk. Single-row causal tiles and the rows of verifies (chain or tree)
may go instead to the numba decode kernel, one row each (a tree node with its ancestors as
extra keys), whose plan (``DecodePlan``) deals them to the threads in cost order, as the task
table deals its units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.task_table import TaskTable, Tile, build_task_table, snake_deal
from xyserve.plan.token_table import StageKind, TokenTable, visible_keys

NEG = -1.0e30  # additive mask value: finite, so a fully masked chunk row merges with weight 0


@dataclass
class DecodePlan:
    """Decode tiles of one step, in worker-major order; built once, shared by every layer."""

    q_rows: np.ndarray  # [S] int64 flat query row of each tile
    kv_lens: np.ndarray  # [S] int32 keys of each tile
    tables: np.ndarray  # [S, max_blocks] int32 block tables
    worker_offsets: np.ndarray  # [W + 1] int64: tiles [off[w], off[w+1]) run on thread w
    rows: torch.Tensor  # [S] long: the same rows, for the torch side
    total_keys: int = 0  # sum of kv_lens and extra keys: the step's work, the same every layer
    # Keys beyond the first kv_lens[s] positions (a tree node's ancestors): tile s also sees
    # positions extra_pos[extra_off[s]:extra_off[s + 1]] of its table.
    extra_off: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # [S + 1]
    extra_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [E]

    @property
    def num_tiles(self) -> int:
        return int(self.q_rows.shape[0])


def build_decode_plan(
    q_rows: list[int],
    kv_lens: list[int],
    tables: list[list[int]],
    num_workers: int,
    extras: list[tuple[int, ...]] | None = None,
) -> DecodePlan:
    """``extras[i]``: positions tile ``i`` sees beyond its first ``kv_lens[i]`` (its table
    must cover them)."""
    extras = extras or [()] * len(q_rows)
    keys = [n + len(e) for n, e in zip(kv_lens, extras)]
    costs = sorted(range(len(q_rows)), key=lambda i: -keys[i])  # decode tile area = keys
    dealt = snake_deal([keys[i] for i in costs], max(1, num_workers))
    order = [costs[j] for w in dealt for j in w]
    offs = np.zeros(len(dealt) + 1, dtype=np.int64)
    offs[1:] = np.cumsum([len(w) for w in dealt])
    width = max((len(tables[i]) for i in order), default=1)
    bt = np.zeros((len(order), max(1, width)), dtype=np.int32)
    for j, i in enumerate(order):
        bt[j, : len(tables[i])] = tables[i]
    rows = np.array([q_rows[i] for i in order], dtype=np.int64)
    extra_off = np.zeros(len(order) + 1, dtype=np.int64)
    extra_off[1:] = np.cumsum([len(extras[i]) for i in order])
    extra_pos = np.array([p for i in order for p in extras[i]], dtype=np.int64)
    return DecodePlan(
        q_rows=rows,
        kv_lens=np.array([kv_lens[i] for i in order], dtype=np.int32),
        tables=bt,
        worker_offsets=offs,
        rows=torch.from_numpy(rows),
        total_keys=sum(keys),
        extra_off=extra_off,
        extra_pos=extra_pos,
    )


@dataclass
class KVChunk:
    """One fused call: tiles [0, num) of a pack (or a slice of them) against one KV range."""

    b0: int
    b1: int
    c0: int  # first key position
    width: int  # keys read (a multiple of the block size)
    block_ids: torch.Tensor  # [(b1 - b0) * width / block_size] physical blocks, long
    mask: torch.Tensor | None  # [(b1 - b0), 1, R*G, width] additive, or None (all visible)


@dataclass
class TilePack:
    rows: int  # R: query rows per tile, padded to the pack's largest tile
    q_index: torch.Tensor  # [B, R] flat query row of each tile row (padding -> 0)
    valid: torch.Tensor  # [V] positions in the flattened [B * R] that are real rows
    out_rows: torch.Tensor  # [V] their flat query rows
    chunks: list[KVChunk] = field(default_factory=list)

    @property
    def num_tiles(self) -> int:
        return int(self.q_index.shape[0])


@dataclass
class MetaAttentionPlan:
    meta: AttentionMetadata
    tasks: TaskTable | None  # None on a plan patched by ``advance_plan``: see ``task_table``
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    packs: list[TilePack]
    decode: DecodePlan | None = None  # single-row tiles for the numba kernel
    num_workers: int = 1  # the workers its tiles are dealt to

    def task_table(self) -> TaskTable:
        """The task table of ``meta``. The CPU run reads only the packs and the decode plan,
        so a patched plan builds it here, when asked, not in every decode step."""
        if self.tasks is None:
            self.tasks = build_task_table(self.meta.table, self.num_kv_heads, self.num_workers)
        return self.tasks


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
    # float16 cannot hold NEG: its most negative finite value masks as well (still finite)
    neg = max(NEG, torch.finfo(dtype).min)
    add = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, neg)
    # Rows are packed (row, head-in-group): repeat each row's mask for the group's heads.
    return add.unsqueeze(2).expand(b, rows, group, width).reshape(b, 1, rows * group, width)


def _to_decode_kernel(table: TokenTable, tile: Tile) -> bool:
    """Whether a tile's rows go to the numba decode kernel, one row each: single-row tiles
    (decodes, a chunk's last row) and the rows of a verify, chain or tree (the k + 1 rows of
    a chain verify see the history and the new keys up to their own, so each is a decode row
    of its own length; a tree node sees the history, the real new tokens and its ancestors:
    a decode row with a few extra keys). Run so, a verify step costs about what a decode
    step costs, with no pack, gather or mask."""
    return tile.num_rows == 1 or table.rows[tile.stage].kind is StageKind.VERIFY


def _decode_rows(table: TokenTable, tile: Tile) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(flat query row, keys it sees as a prefix of its table, stage, positions it also sees)
    of each row of a tile bound for the decode kernel."""
    if not _to_decode_kernel(table, tile):
        return []
    out = []
    mask = table.rows[tile.stage].tree_mask
    for i in range(tile.num_rows):
        prefix, extra = visible_keys(tile.context_len, tile.row_offset + i, mask)
        out.append((tile.q_start + i, prefix, tile.stage, extra))
    return out


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

    With ``decode_kernel`` (the caller's word that the numba decode kernel runs for this dtype),
    single-row causal tiles -- decodes, and the last row of a chunk -- and the rows of chain
    verifies (chain or tree: a node's ancestors as extra keys) go to its ``DecodePlan`` instead
    of packs.
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
    if decode_kernel:
        single = [r for t in order for r in _decode_rows(table, tiles[t])]
        order = [t for t in order if not _to_decode_kernel(table, tiles[t])]
        decode = build_decode_plan(
            [q for q, _, _, _ in single],
            [n for _, n, _, _ in single],
            [
                table.rows[s].block_table[: -(-max(n, 1 + max(extra, default=-1)) // bs)]
                for _, n, s, extra in single
            ],
            num_workers,
            [extra for _, _, _, extra in single],
        )
    elem = torch.finfo(dtype).bits // 8
    max_keys = max(bs, kv_chunk_bytes // max(1, 2 * num_kv_heads * head_dim * elem))
    chunk = max(bs, (kv_chunk // bs) * bs)
    packs: list[TilePack] = []
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
        pack = TilePack(
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
                    KVChunk(
                        b0, b1, c0, width, torch.tensor(ids, dtype=torch.long, device=device), mask
                    )
                )
            c0 += width
        packs.append(pack)
    return MetaAttentionPlan(
        meta, tasks, num_q_heads, num_kv_heads, head_dim, packs, decode, tasks.num_workers
    )


def advance_plan(plan: MetaAttentionPlan, meta: AttentionMetadata) -> MetaAttentionPlan | None:
    """The plan of ``meta``, patched from ``plan``, when ``meta`` is the next step of the same
    decode batch (``AttentionMetadata.advanced``) and every tile runs on the decode kernel;
    None otherwise. Every key count grows by one, so the tiles' cost order and their dealing to
    the workers stay as they were: only the key counts and a block table column that a new
    block opens change (in place). The task table is left to ``task_table``, which builds it
    only if asked."""
    d = plan.decode
    rows = meta.table.rows
    if plan.packs or d is None or d.num_tiles != len(rows) or d.extra_pos.size:
        return None
    bs = meta.table.block_size
    kv = d.kv_lens
    width = d.tables.shape[1]
    if -(-(int(kv.max(initial=0)) + 1) // bs) > width:
        return None  # a wider table: build afresh
    for j, stage in enumerate(d.q_rows.tolist()):  # decode-only: tile j is stage q_rows[j]
        pos = int(kv[j])  # the new key's position
        if pos + 1 != rows[stage].kv_len:
            return None
        if pos % bs == 0:  # the first key of a new block
            d.tables[j, pos // bs] = rows[stage].block_table[pos // bs]
    kv += 1
    d.total_keys += d.num_tiles
    return MetaAttentionPlan(
        meta, None, plan.num_q_heads, plan.num_kv_heads, plan.head_dim, [], d, plan.num_workers
    )

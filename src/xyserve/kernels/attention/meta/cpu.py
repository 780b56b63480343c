"""Meta-Attention's CPU path: runs a step's plan (``plan.meta_attention``) for one layer.

Single-row decode tiles go to the numba decode kernel (``kernels.cpu.decode``); each pack of
like tiles runs as batched fused attention calls (``aten::_scaled_dot_product_flash_attention_for_cpu``,
which also returns the log-sum-exp; a plain matmul/softmax where it is missing), so forty
decode stages cost one call, not forty:

* The query heads of one KV group are packed into the tile's rows (GQA): K/V are never repeated.
* K/V are read from the paged cache through the block tables one bounded KV chunk at a time
  (the CPU analogue of a kernel's tile loads) into reused buffers: there is no per-request
  concatenation or contiguous copy of a history, and chunks are merged with the online-softmax
  (log-sum-exp) update, so a long context runs in memory bounded by the plan's
  ``kv_chunk_bytes``.
* Masks come from the plan, built once per step and shared by every layer.
"""

from __future__ import annotations

import math

import torch

from xyserve.kernels.cpu import decode as cpu_decode
from xyserve.plan.meta_attention import MetaAttentionPlan

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


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
    """Reused gather buffers for K/V chunks: a fresh multi-MB tensor per chunk and layer would
    come from ``mmap`` and page-fault on first touch (docs/perf.md)."""

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
    out = q.new_zeros((t, hq, d))
    if plan.decode is not None:
        cpu_decode.run_decode(plan.decode, q, k_cache, v_cache, scale, out)
    if not plan.packs:  # a decode-only step: nothing below runs
        return out
    nb, bs, hkv, _ = k_cache.shape
    group = hq // hkv
    ws = workspace or Workspace()
    k_rows = k_cache.view(nb, -1)
    v_rows = v_cache.view(nb, -1)
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

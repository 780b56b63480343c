"""Slow, obviously-correct twins of the fast kernels: the oracles of the kernel tests.

Attention builds each stage's dense mask (``gather.stage_mask``) over K/V gathered from the
paged cache and runs a plain softmax in float64, one query head at a time (GQA by indexing the
KV head, never by copying). Nothing here is tuned; clarity wins.
"""

from __future__ import annotations

from typing import Any

import torch

from xyserve.kernels.attention.gather import gather_kv, stage_mask
from xyserve.plan.attention_metadata import AttentionMetadata


def reference_attention(
    meta: AttentionMetadata,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Dense masked attention of every stage, computed in float64 and cast back."""
    out = torch.zeros_like(q)
    hq, hkv = q.shape[1], k_cache.shape[2]
    group = hq // hkv
    for row, tree in zip(meta.table.rows, meta.tree_masks):
        n = row.num_tokens
        if n == 0:
            continue
        k = gather_kv(k_cache, row.block_table, row.kv_len).double()
        v = gather_kv(v_cache, row.block_table, row.kv_len).double()
        mask = stage_mask(n, row.kv_len, tree, q.device)
        for h in range(hq):
            qs = q[row.start : row.start + n, h].double()  # [n, D]
            s = (qs @ k[:, h // group].T) * scale
            s = s.masked_fill(~mask, float("-inf"))
            p = torch.softmax(s, dim=-1)
            out[row.start : row.start + n, h] = (p @ v[:, h // group]).to(q.dtype)
    return out


class ReferenceAttention:
    """The ``reference`` attention backend: dense masked attention, for tests and debugging."""

    name = "reference"

    def plan(
        self, meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int, head_dim: int
    ) -> Any:
        return meta

    def run(self, plan: AttentionMetadata, q, k_cache, v_cache, scale: float) -> torch.Tensor:
        return reference_attention(plan, q, k_cache, v_cache, scale)

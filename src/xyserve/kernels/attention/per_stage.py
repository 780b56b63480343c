"""Per-stage attention: what a user gets without meta-kernels.

One ``scaled_dot_product_attention`` call per stage, on K/V gathered from the paged cache into
contiguous tensors, with the stage's mask. It is the baseline of ``xyserve bench kernels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xyserve.kernels.attention.gather import gather_kv, stage_mask
from xyserve.plan.attention_metadata import AttentionMetadata


class PerStageSDPA:
    name = "sdpa"

    def plan(self, meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int, head_dim: int):
        return meta

    def run(self, plan: AttentionMetadata, q, k_cache, v_cache, scale: float) -> torch.Tensor:
        out = torch.empty_like(q)
        # Rows past the stages (a padded step's padding: engine.padded_step) attend to nothing.
        # An unpadded step has none, and skips the slice and the zero_ call in every layer.
        n = plan.table.num_tokens
        if q.shape[0] > n:
            out[n:].zero_()
        hq, hkv = q.shape[1], k_cache.shape[2]
        group = hq // hkv
        for row, tree in zip(plan.table.rows, plan.tree_masks):
            n = row.num_tokens
            if n == 0:
                continue
            qs = q[row.start : row.start + n].transpose(0, 1)  # [Hq, n, D]
            k = gather_kv(k_cache, row.block_table, row.kv_len).transpose(0, 1)
            v = gather_kv(v_cache, row.block_table, row.kv_len).transpose(0, 1)
            if group > 1:
                k = k.repeat_interleave(group, dim=0)
                v = v.repeat_interleave(group, dim=0)
            if tree is None and n == row.kv_len:
                o = F.scaled_dot_product_attention(qs, k, v, is_causal=True, scale=scale)
            elif tree is None and n == 1:
                o = F.scaled_dot_product_attention(qs, k, v, scale=scale)
            else:
                mask = stage_mask(n, row.kv_len, tree, q.device)
                o = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, scale=scale)
            out[row.start : row.start + n] = o.transpose(0, 1)
        return out

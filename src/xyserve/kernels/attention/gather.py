"""One stage's keys and values gathered from the paged cache, and its dense mask: the pieces
of the slow attention paths (reference, per-stage SDPA, the benchmark's baselines).

The masking rule is the one ``plan.attention_metadata`` states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stage_mask(
    num_tokens: int, kv_len: int, tree_mask: torch.Tensor | None, device
) -> torch.Tensor:
    """Dense bool mask [num_tokens, kv_len] of one stage (True = may attend)."""
    ctx = kv_len - num_tokens
    mask = torch.ones((num_tokens, kv_len), dtype=torch.bool, device=device)
    if num_tokens:
        new = (
            tree_mask.to(device)
            if tree_mask is not None
            else torch.ones((num_tokens, num_tokens), dtype=torch.bool, device=device).tril()
        )
        mask[:, ctx:] = new
    return mask


def gather_kv(
    cache: torch.Tensor, blocks: Sequence[int] | torch.Tensor, kv_len: int
) -> torch.Tensor:
    """Contiguous [kv_len, Hkv, D] copy of one stage's keys or values: its blocks in order, cut
    at ``kv_len``. ``blocks`` is the stage's block table, or its block ids already on the cache's
    device (a plan built once per step)."""
    if not isinstance(blocks, torch.Tensor):
        nblk = -(-kv_len // cache.shape[1])
        blocks = torch.tensor(blocks[:nblk], dtype=torch.long, device=cache.device)
    return cache.index_select(0, blocks).flatten(0, 1)[:kv_len]

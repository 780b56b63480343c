"""Attention test/bench cases: a token table over a shuffled paged cache, with random q/K/V.

Shared by the kernel tests and ``xyserve bench kernels`` so both exercise the same layouts:
blocks are dealt in random order (paging is never accidentally contiguous) and the cache holds
random values in unused slots, so a kernel that reads past a stage's keys is caught.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from xyserve.kernels.metadata import AttentionMetadata
from xyserve.plan.token_table import TokenTable


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``num_tokens`` new tokens after ``context_len`` history keys."""

    num_tokens: int
    context_len: int
    prefill: bool = False
    num_spec_tokens: int = 0
    tree: bool = False  # verify with a random token tree instead of a chain


@dataclass
class AttentionCase:
    meta: AttentionMetadata
    q: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    scale: float


def random_tree_mask(n: int, rng: random.Random) -> tuple[tuple[bool, ...], ...]:
    """Ancestor-or-self mask of a random tree over n new tokens (token 0 is the root)."""
    parent = [-1] + [rng.randrange(i) for i in range(1, n)]
    rows = []
    for i in range(n):
        row = [False] * n
        j = i
        while j >= 0:
            row[j] = True
            j = parent[j]
        rows.append(tuple(row))
    return tuple(rows)


def build_case(
    specs: list[StageSpec],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    spare_blocks: int = 2,
) -> AttentionCase:
    rng = random.Random(seed)
    need = [(s.context_len + s.num_tokens + block_size - 1) // block_size for s in specs]
    num_blocks = sum(need) + spare_blocks
    perm = list(range(num_blocks))
    rng.shuffle(perm)
    table = TokenTable(block_size=block_size)
    pos = 0
    for i, s in enumerate(specs):
        blocks = perm[pos : pos + need[i]]
        pos += need[i]
        tree = random_tree_mask(s.num_tokens, rng) if s.tree and s.num_tokens else None
        spec = s.num_spec_tokens or (max(0, s.num_tokens - 1) if s.tree else 0)
        table.add(
            f"r{i}",
            s.num_tokens,
            s.context_len + s.num_tokens,
            blocks,
            num_spec_tokens=spec,
            is_prefill=s.prefill,
            tree_mask=tree,
        )
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype).to(device)
    v = torch.randn(shape, generator=gen).to(dtype).to(device)
    q = torch.randn((table.num_tokens, num_q_heads, head_dim), generator=gen).to(dtype).to(device)
    meta = AttentionMetadata.build(table, device=device)
    return AttentionCase(meta, q, k, v, 1.0 / head_dim**0.5)

"""Rotary position embeddings, with Llama-3 and linear scaling (HF's conventions): the tables.

The rotation itself, with the cache write it feeds, is ``kernels.ops.rope_and_cache``.
"""

from __future__ import annotations

import math

import torch


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv
    rtype = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling.get("factor", 1.0))
    if rtype == "linear":
        return inv / factor
    if rtype == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type {rtype!r}")


class RotaryEmbedding:
    """Precomputed cos/sin tables indexed by position (non-interleaved halves, as HF)."""

    def __init__(self, head_dim: int, max_pos: int, theta: float, scaling: dict | None, device):
        inv = inv_frequencies(head_dim, theta, scaling)
        t = torch.arange(max_pos, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(device)
        self.sin = emb.sin().to(device)

    def tables(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [T, 1, D/2] of a step's positions: gathered once, used by every layer.

        Both halves of a row of the table are equal (non-interleaved rotation), so one is kept.
        """
        half = self.cos.shape[-1] // 2
        return (
            self.cos[positions, :half].unsqueeze(1).to(dtype),
            self.sin[positions, :half].unsqueeze(1).to(dtype),
        )

"""Rotary position embeddings, with Llama-3 and linear scaling (HF's conventions)."""

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


def token_minor(x: torch.Tensor) -> bool:
    """Whether x's tokens (dim 0) are adjacent in memory: the column-major output of a swapped
    GEMM, maybe with a padded stride."""
    return x.shape[0] > 1 and x.stride(0) == 1


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

    @staticmethod
    def like(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table`` ([T, 1, D/2]) laid out like ``x``: token-minor when x is column-major (the
        output of a ``swap`` GEMM), so that ``apply`` runs in memory order. Idempotent."""
        if token_minor(x) and table.stride(0) != 1:
            return table.squeeze(1).t().contiguous().t().unsqueeze(1)
        return table

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [T, H, D]; cos/sin from ``tables`` (best passed through ``like(., x)``).

        ``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]``, written half by half into a tensor
        of x's layout: four elementwise passes, no rotated copy.
        """
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        if token_minor(x):
            out = x.new_empty((x.shape[1], x.shape[2], x.shape[0])).permute(2, 0, 1)
        else:
            out = torch.empty_like(x)
        o1, o2 = out[..., :half], out[..., half:]
        torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
        return out

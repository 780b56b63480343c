"""Plain references shared by the kernel and ops tests (not collected: no test_ prefix)."""

from __future__ import annotations

import torch


def rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's ``x * cos + rotate_half(x) * sin`` on [T, H, D], with [T, 1, D/2] half tables."""
    half = x.shape[-1] // 2
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

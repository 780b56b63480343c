"""RMSNorm on CPU in one numba pass per row, for float32 rows that are contiguous in memory.

Why: the torch expression (pow, mean, add, rsqrt, two multiplies) launches six ops per norm, and
a decode step of the ~100M bench model runs 25 norms of 64 x 768 (figures: docs/perf.md). The
arithmetic follows
the torch expression (x * rsqrt(mean(x^2) + eps), then * weight, in float32); only the order of
the sum of squares differs. Other layouts and dtypes take the torch path.
"""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels.cpu import FASTMATH_KEEP_NAN
from xyserve.kernels.cpu.views import as_numpy

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None


def _rms_rows(x: np.ndarray, w: np.ndarray, eps: np.float32, out: np.ndarray) -> None:
    t_count, d = x.shape  # pragma: no cover - compiled
    for t in range(t_count):
        ss = np.float32(0.0)
        for j in range(d):
            ss += x[t, j] * x[t, j]
        r = np.float32(1.0) / np.sqrt(ss / np.float32(d) + eps)
        for j in range(d):
            out[t, j] = w[j] * (x[t, j] * r)


# numpy's error model: a NaN row (or a zero row with eps 0) comes out as NaN/inf in that row
# alone, as torch's does, instead of raising ZeroDivisionError for the whole step.
_kernel = (
    njit(cache=True, nogil=True, fastmath=set(FASTMATH_KEEP_NAN), error_model="numpy")(_rms_rows)
    if njit is not None
    else None
)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel may run; the weight's checks are ``as_numpy``'s, made once per weight
    tensor (its view is cached)."""
    return (
        _kernel is not None
        and x.dim() == 2
        and x.dtype == torch.float32
        and x.is_cpu
        and x.stride(-1) == 1
        and weight.dtype == torch.float32
        and as_numpy(weight) is not None
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x * rsqrt(mean(x^2) + eps)`` row by row; the output keeps x's strides."""
    out = torch.empty_like(x)
    _kernel(
        x.numpy() if not x.requires_grad else x.detach().numpy(),
        as_numpy(weight),
        np.float32(eps),
        out.numpy(),
    )
    return out


def warmup() -> None:
    if _kernel is not None:
        rms_norm(torch.ones((2, 4)), torch.ones(4), 1e-6)

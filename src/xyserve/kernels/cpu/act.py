"""SwiGLU's ``silu(gate) * up`` on CPU in one numba kernel, straight from the gate_up GEMM's
row-major output.

Why: torch runs it as two ops over the [T, 2I] GEMM output (``silu`` on the gate half, then an
in-place multiply), and numba's ``np.exp`` would be a scalar libm call per element. Here each
row takes two vectorizable passes with ``kernels.cpu.exp``'s polynomial exp (figures:
docs/perf.md). The result is within a few float32 ulps of torch's for finite inputs (a NaN
stays NaN; an infinite gate is not handled as torch does).
Other layouts (a ``swap`` GEMM's column-major output) and dtypes take the torch path.
"""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels.cpu import FASTMATH_KEEP_NAN, exp, use_cpu_threads
from xyserve.kernels.cpu.cache import depends_on
from xyserve.kernels.cpu.exp import exp_parts

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None

if njit is not None:

    @njit(inline="always", fastmath=set(FASTMATH_KEEP_NAN))
    def silu_mul_row(gu, t, out, p, bits):  # pragma: no cover - compiled
        """``out[t] = silu(gu[t, :I]) * gu[t, I:]``, with ``silu(g) = g * sigmoid(g)`` from
        ``z = exp(-|g|)`` (never overflows): ``sigmoid(g) = 1 / (1 + z)`` for g >= 0, else
        ``z / (1 + z)``. ``p`` (float32) and ``bits`` (int32): scratch of at least I."""
        half = out.shape[1]
        pow2 = bits[:half].view(np.float32)  # 2**n of each element, as float bits
        for j in range(half):
            q, n = exp_parts(-abs(gu[t, j]))
            p[j] = q
            bits[j] = (n + 127) << 23
        for j in range(half):
            g = gu[t, j]
            z = p[j] * pow2[j]
            num = g if g >= 0 else g * z
            out[t, j] = num / (np.float32(1.0) + z) * gu[t, half + j]

    @depends_on(exp)  # a NaN in the gate or up half must come out as NaN
    @njit(parallel=True, fastmath=set(FASTMATH_KEEP_NAN), cache=True)
    def _silu_mul_rows(gu, out):  # pragma: no cover - compiled
        """:func:`silu_mul_row` for every row."""
        half = out.shape[1]
        for t in prange(gu.shape[0]):
            silu_mul_row(gu, t, out, np.empty(half, np.float32), np.empty(half, np.int32))


def applies(gu: torch.Tensor) -> bool:
    return (
        njit is not None
        and gu.dim() == 2
        and gu.is_cpu
        and gu.dtype == torch.float32
        and gu.is_contiguous()
        and gu.shape[-1] % 2 == 0
    )


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a [T, 2I] gate_up output, as a row-major [T, I] tensor."""
    if not applies(gu):
        g, u = gu.chunk(2, dim=-1)
        return torch.nn.functional.silu(g).mul_(u)
    out = torch.empty((gu.shape[0], gu.shape[1] // 2), dtype=gu.dtype)
    if out.numel():
        use_cpu_threads(items=out.shape[0], work=out.numel())
        _silu_mul_rows(gu.numpy() if not gu.requires_grad else gu.detach().numpy(), out.numpy())
    return out


def warmup() -> None:
    """Compile (or load from numba's cache) the kernel now, not inside the first step."""
    if njit is not None:
        silu_mul(torch.zeros((2, 8)))

"""SmoothGEMM's ``numba`` CPU entry point: a register-blocked GEMM for the few token rows of
decode steps.

Why: with M (token rows) at 64 and below and cold weights, MKL's sgemm on the 2-core dev box
is far from both its compute peak and the memory floor of streaming the weight once (a one-off
microbenchmark, 2 threads, a 4096 x 768 weight cycled through 200 MB of copies, GFLOP/s of
this kernel against ``torch.mm(w, x.T)``: 34 vs 11 at M=4, 54 vs 18 at M=8, 90 vs 62 at 16,
116 vs 96 at 32, 126 vs 105 at 64). ``xyserve tune`` still decides per (op, bucket), against
``F.linear``, with the same margin as every other entry point.

Each thread owns a contiguous share of the weight rows (so it streams only that share, like
``swap``), and computes 4 weight rows x 3 token rows at a time: 12 running dot products over K,
which LLVM vectorizes along K (``fastmath`` lets it reassociate the sums), so each weight vector
loaded serves 3 token rows and each token vector 4 weight rows. The output is row-major, like
``F.linear``'s. numba is optional: without it (or for dtypes other than float32) ``F.linear``
runs.
"""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels import use_cpu_threads

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None


def available(dtype: torch.dtype) -> bool:
    return numba is not None and dtype == torch.float32


if numba is not None:

    @njit(parallel=True, fastmath=True, cache=True)
    def _gemm_nt(x, w, y, threads):  # pragma: no cover - compiled
        """``y[M, N] = x[M, K] @ w[N, K].T`` for C-contiguous float32 arrays, on ``threads``
        shares of the weight rows."""
        m_count, k_count = x.shape
        n_count = w.shape[0]
        quads = n_count // 4
        m3 = m_count - m_count % 3
        for t in prange(threads):
            for p in range(quads * t // threads, quads * (t + 1) // threads):
                n = 4 * p
                for m in range(0, m3, 3):
                    s00 = s01 = s02 = s10 = s11 = s12 = np.float32(0.0)
                    s20 = s21 = s22 = s30 = s31 = s32 = np.float32(0.0)
                    for k in range(k_count):
                        a0 = w[n, k]
                        a1 = w[n + 1, k]
                        a2 = w[n + 2, k]
                        a3 = w[n + 3, k]
                        c0 = x[m, k]
                        c1 = x[m + 1, k]
                        c2 = x[m + 2, k]
                        s00 += a0 * c0
                        s01 += a0 * c1
                        s02 += a0 * c2
                        s10 += a1 * c0
                        s11 += a1 * c1
                        s12 += a1 * c2
                        s20 += a2 * c0
                        s21 += a2 * c1
                        s22 += a2 * c2
                        s30 += a3 * c0
                        s31 += a3 * c1
                        s32 += a3 * c2
                    y[m, n] = s00
                    y[m + 1, n] = s01
                    y[m + 2, n] = s02
                    y[m, n + 1] = s10
                    y[m + 1, n + 1] = s11
                    y[m + 2, n + 1] = s12
                    y[m, n + 2] = s20
                    y[m + 1, n + 2] = s21
                    y[m + 2, n + 2] = s22
                    y[m, n + 3] = s30
                    y[m + 1, n + 3] = s31
                    y[m + 2, n + 3] = s32
                for m in range(m3, m_count):  # the last one or two token rows
                    s0 = s1 = s2 = s3 = np.float32(0.0)
                    for k in range(k_count):
                        c = x[m, k]
                        s0 += w[n, k] * c
                        s1 += w[n + 1, k] * c
                        s2 += w[n + 2, k] * c
                        s3 += w[n + 3, k] * c
                    y[m, n] = s0
                    y[m, n + 1] = s1
                    y[m, n + 2] = s2
                    y[m, n + 3] = s3
        for n in range(4 * quads, n_count):  # the last one to three weight rows
            for m in range(m_count):
                s = np.float32(0.0)
                for k in range(k_count):
                    s += w[n, k] * x[m, k]
                y[m, n] = s


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, threads: int | None = None
) -> torch.Tensor:
    """``x @ weight.T + bias`` for a 2-D float32 CPU ``x`` of any layout (copied to row-major,
    which costs O(M K) against the GEMM's O(M N K))."""
    x2 = x.detach().contiguous()
    w = weight.detach().contiguous()
    y = torch.empty((x2.shape[0], w.shape[0]), dtype=torch.float32)
    t = use_cpu_threads(threads)
    _gemm_nt(x2.numpy(), w.numpy(), y.numpy(), t)
    return y if bias is None else y.add_(bias)


def warmup() -> None:
    """Compile (or load from numba's cache) the kernel now, not inside the first step."""
    if numba is not None:
        linear(torch.zeros((4, 8)), torch.zeros((5, 8)), None)

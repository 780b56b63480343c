"""Greedy token ids from row- or column-major float32 CPU logits, in one pass over memory.

With SmoothGEMM's ``swap`` entry point the lm_head returns logits as a column-major [R, V] view
(a contiguous [V, R] buffer). ``torch.argmax(dim=-1)`` walks that layout row by row, with a
stride of R floats per element; this kernel reads the buffer once in memory order and keeps a
running maximum per row. Ties go to the first index, as ``torch.argmax``; any other layout or
dtype, or a NaN in a batch, takes the torch path. Row-major logits (the numba GEMM's) get a
second kernel, one row per thread at a time, whose rows go through :func:`first_argmax`, which
the fused CPU forward calls on its rows too. Figures: docs/perf.md.
"""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels.cpu import use_cpu_threads

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None


def _argmax_columns(xt: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[r] = argmax_v xt[v, r]`` for a contiguous [V, R] array; NaN makes out[r] = -1."""
    v_count, r_count = xt.shape
    best = xt[0].copy()
    idx = np.zeros(r_count, np.int64)
    nan = best != best
    for v in range(1, v_count):
        row = xt[v]
        for r in range(r_count):
            gt = row[r] > best[r]
            nan[r] |= row[r] != row[r]
            best[r] = row[r] if gt else best[r]
            idx[r] = v if gt else idx[r]
    for r in range(r_count):
        out[r] = -1 if nan[r] else idx[r]


ARGMAX_CHUNK = 256  # values per chunk of :func:`first_argmax`


def first_argmax(x: np.ndarray) -> int:  # pragma: no cover - compiled
    """The first index of the largest value of the 1-D array ``x`` (its values compared as
    numbers: a row with a NaN gets some index, and its callers take another path for it).
    A compare-and-branch per value costs a dependent chain (about 3.4 cycles a value at 4,096
    values); here each chunk of ``ARGMAX_CHUNK`` values keeps 16 running maxima (vector
    lanes, no branch), the chunks' maxima give the largest value, and only the first chunk
    that holds it is scanned for its first index."""
    n = x.shape[0]
    chunks = n // ARGMAX_CHUNK
    if chunks < 2:
        best, idx = x[0], 0
        for v in range(1, n):
            if x[v] > best:
                best, idx = x[v], v
        return idx
    top = np.empty(chunks, x.dtype)
    lanes = np.empty(16, x.dtype)
    for c in range(chunks):
        base = c * ARGMAX_CHUNK
        for e in range(16):
            lanes[e] = x[base + e]
        for v in range(base + 16, base + ARGMAX_CHUNK, 16):
            for e in range(16):
                xv = x[v + e]
                lanes[e] = xv if xv > lanes[e] else lanes[e]
        m = lanes[0]
        for e in range(1, 16):
            m = lanes[e] if lanes[e] > m else m
        top[c] = m
    best = top[0]
    for c in range(1, chunks):
        best = top[c] if top[c] > best else best
    tail = chunks * ARGMAX_CHUNK
    for v in range(tail, n):
        best = x[v] if x[v] > best else best
    for c in range(chunks):
        if top[c] == best:
            for v in range(c * ARGMAX_CHUNK, (c + 1) * ARGMAX_CHUNK):
                if x[v] == best:
                    return v
    for v in range(tail, n):
        if x[v] == best:
            return v
    return 0  # not reached for numbers; a NaN row may end here


def _argmax_rows(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[r] = argmax_v x[r, v]`` for a contiguous [R, V] array, rows split over threads;
    a NaN in a row makes out[r] = -1 (infinities compare as numbers, as in torch)."""
    for r in prange(x.shape[0]):
        row = x[r]
        nan = False
        for v in range(row.shape[0]):
            nan |= row[v] != row[v]
        out[r] = -1 if nan else first_argmax(row)


if njit is not None:
    first_argmax = njit(inline="always")(first_argmax)
_kernel = njit(cache=True, nogil=True)(_argmax_columns) if njit is not None else None
_row_kernel = (
    njit(cache=True, nogil=True, parallel=True)(_argmax_rows) if njit is not None else None
)


def greedy_ids(logits: torch.Tensor) -> list[int]:
    """``logits.argmax(dim=-1).tolist()``, fast for float32 CPU logits that are row-major
    (the ``numba`` and ``linear`` GEMM entry points) or column-major (also with a padded row
    stride, as ``swap8`` leaves them)."""
    if (
        _kernel is None
        or logits.dim() != 2
        or logits.device.type != "cpu"
        or logits.dtype != torch.float32
        or logits.shape[0] < 2
    ):
        return logits.argmax(dim=-1).tolist()
    out = np.empty(logits.shape[0], np.int64)
    if logits.is_contiguous():
        use_cpu_threads(items=logits.shape[0], work=logits.numel())
        _row_kernel(logits.numpy(), out)
    elif logits.stride(0) == 1 and logits.stride(1) >= logits.shape[0]:
        _kernel(logits.t().numpy(), out)
    else:
        return logits.argmax(dim=-1).tolist()
    if (out < 0).any():  # NaN somewhere: torch's rule (NaN is the maximum) decides
        return logits.argmax(dim=-1).tolist()
    return out.tolist()


def warmup() -> None:
    """Compile (or load from numba's cache) the kernels now, not inside the first step: rows,
    columns, and columns with a padded stride (``swap8``), each its own numba signature."""
    if _kernel is not None:
        greedy_ids(torch.zeros((2, 3)))
        greedy_ids(torch.zeros((3, 2)).t())
        greedy_ids(torch.zeros((3, 4))[:, :2].t())

"""SmoothGEMM's CUDA tuning search: Triton tiles, launch knobs and split-K, against cuBLAS.

For one (op, padded M) the search times, with ``triton.testing.do_bench`` (CUDA events, median):

1. the vendor GEMM (``F.linear``, cuBLAS) on the same operands;
2. Triton tile shapes (``BLOCK_M`` no taller than the bucket), ``BLOCK_N``/``BLOCK_K``, warps
   and pipeline stages, with one K range;
3. for buckets of few M-tiles (pm <= 128), the three fastest tiles again with split-K
   (2-16 K ranges, each at least two K-tiles long): a decode step's GEMM has too few output
   tiles to fill the GPU's multiprocessors, and split-K multiplies its programs.

The fastest Triton config is kept unless cuBLAS is faster, in which case the bucket's entry
names cuBLAS (``gpu_impl="cublas"``): SmoothGEMM's rule, tuned per bucket and never slower
than the vendor. Configs that fail to compile or launch (shared memory, registers) are skipped.
Not searched: Hopper TMA descriptors and persistent (stream-K) kernels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from xyserve.plan.gemm_table import GemmConfig

SPLITS = (2, 4, 8, 16)


def tile_candidates(pm: int, k: int) -> list[GemmConfig]:
    """Triton tile and launch configurations worth timing for a bucket of ``pm`` rows."""
    out = []
    for bm, bn, bk, warps, stages in itertools.product(
        (16, 32, 64, 128), (64, 128, 256), (32, 64, 128), (4, 8), (3, 4)
    ):
        if bm > max(16, pm) or bk > max(32, k):
            continue
        if bm * bn >= 128 * 256 and warps == 4:  # too many accumulators for 4 warps
            continue
        out.append(GemmConfig(bm, bn, bk, 8, warps, stages))
    return out


def split_candidates(best: list[GemmConfig], pm: int, k: int) -> list[GemmConfig]:
    """Split-K variants of the fastest tiles, where the M-tiles alone are too few."""
    if pm > 128:
        return []
    out = []
    for cfg, s in itertools.product(best, SPLITS):
        if k // s >= 2 * cfg.block_k:
            out.append(GemmConfig(**{**cfg.__dict__, "split_k": s}))
    return out


def do_bench_ms(warmup_ms: int, rep_ms: int) -> Callable[[Callable[[], object]], float]:
    from triton.testing import do_bench

    return lambda fn: float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def tune_one_cuda(
    w: torch.Tensor,
    x: torch.Tensor,
    timer: Callable[[Callable[[], object]], float] | None = None,
    allow_tf32: bool = False,
) -> tuple[GemmConfig, dict[str, float]]:
    """The bucket's config for ``x @ w.T`` (``x`` has the bucket's padded M rows), and the
    times (ms) of cuBLAS and of the best Triton config, for the report."""
    from xyserve.kernels.gemm.triton_kernel import smooth_matmul

    timer = timer or do_bench_ms(5, 20)
    pm, k = x.shape

    def time_cfg(cfg: GemmConfig) -> float | None:
        try:
            return timer(lambda: smooth_matmul(x, w, None, cfg, allow_tf32))
        except Exception:  # does not compile or fit: not a candidate
            return None

    t_cublas = timer(lambda: torch.nn.functional.linear(x, w))
    timed = [(t, c) for c in tile_candidates(pm, k) if (t := time_cfg(c)) is not None]
    timed.sort(key=lambda tc: tc[0])
    top = [c for _, c in timed[:3]]
    timed += [(t, c) for c in split_candidates(top, pm, k) if (t := time_cfg(c)) is not None]
    if not timed:
        return GemmConfig(gpu_impl="cublas"), {"cublas_ms": t_cublas}
    t_best, best = min(timed, key=lambda tc: tc[0])
    times = {"cublas_ms": t_cublas, "triton_ms": t_best}
    return (best if t_best < t_cublas else GemmConfig(gpu_impl="cublas")), times

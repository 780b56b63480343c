"""Wall-clock timing of short CPU calls, shared by the tuner and ``bench kernels``.

A small GEMM on a cold weight is short enough that a single ``perf_counter`` sample is at the
mercy of one OpenMP barrier or one timer tick on a busy machine (docs/perf.md). So a sample is
the mean over a block of calls lasting about ``target_s`` (10 ms by default); callers interleave
the variants round by round and compare them by ``paired_ratio`` (or keep each one's minimum
over rounds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def block_time(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds per call over ``calls`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def calls_for(fn: Callable[[], object], target_s: float = 0.01, cap: int = 128) -> int:
    """Calls per block so that a block of ``fn`` lasts about ``target_s`` (1 to ``cap``)."""
    fn()  # warm-up
    t = statistics.median(block_time(fn, 1) for _ in range(3))
    return max(1, min(cap, round(target_s / max(t, 1e-9))))


def paired_ratio(ts: list[float], base: list[float]) -> float:
    """Median over rounds of ``ts[i] / base[i]``, samples taken in the same rounds.

    Interference on a shared box comes in bursts longer than a round, and slows both samples
    of a round alike, so the per-round ratio cancels most of it; the median drops the bursts
    that fall between the two.
    """
    return statistics.median(t / b for t, b in zip(ts, base, strict=True))

"""The thread count of a call repeated every step, chosen online from its measured times.

A parallel call's best thread count moves with the machine: on a quiet two-core machine the
fused decode call runs a row 1.3-1.6x faster on two threads than on one, but once another
process keeps a core busy, the second thread's wake-ups wait for that core and a two-thread
call can take ten to two hundred times its quiet time (docs/perf.md, "Session 30"). A count
chosen once at start is then wrong for the rest of the run. So each call's time is recorded
under its count and a bucket (the caller's: say one row, or several), and the next call of
the bucket uses the count whose median of its recent times is lowest. The counts not in use
are tried again now and then, in a short burst (their old times say nothing of the machine
now), at intervals that double each time the burst loses (up to ``max_interval`` calls) and
start again from ``min_interval`` when it wins; a burst stops after its first call where that
call took more than twice the count in use, so a slow count costs one call per try.

The choice changes speed only: the fused call's results do not depend on its thread count
(``tests/xyserve/test_thread_choice.py``).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    best: int
    recent: dict[int, deque[float]]
    calls: int = 0  # since the last burst
    interval: int = 0
    exploring: int | None = None  # the count of a burst under way
    burst_left: int = 0


@dataclass
class ThreadChoice:
    """``counts``: the thread counts to choose from; ``first``: the one to start with."""

    counts: tuple[int, ...]
    first: int
    window: int = 5  # times kept per count and bucket (their median decides)
    burst: int = 3  # calls of a burst
    min_interval: int = 64  # calls between bursts, after a burst that won
    max_interval: int = 16384
    _buckets: dict[int, _Bucket] = field(default_factory=dict, repr=False)
    switches: int = 0  # how often the count in use changed (for the log and the tests)

    def __post_init__(self) -> None:
        if self.first not in self.counts:
            raise ValueError(f"first ({self.first}) must be one of counts {self.counts}")

    def _bucket(self, key: int) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            recent = {n: deque(maxlen=self.window) for n in self.counts}
            b = self._buckets[key] = _Bucket(self.first, recent, interval=self.min_interval)
        return b

    def _median(self, b: _Bucket, n: int) -> float:
        r = b.recent[n]
        return statistics.median(r) if r else float("inf")

    def pick(self, key: int) -> int:
        """The thread count for the next call of bucket ``key``."""
        b = self._bucket(key)
        if b.exploring is not None:
            return b.exploring
        if len(self.counts) > 1 and b.calls >= b.interval:
            others = [n for n in self.counts if n != b.best]
            # the count tried longest ago: the one with the fewest recent times, in order
            b.exploring = min(others, key=lambda n: len(b.recent[n]))
            b.recent[b.exploring].clear()  # its old times say nothing of the machine now
            b.burst_left = self.burst
            return b.exploring
        return b.best

    def observe(self, key: int, threads: int, seconds: float) -> None:
        """Record a call's time; update the bucket's choice."""
        b = self._bucket(key)
        b.recent[threads].append(seconds)
        if b.exploring is None:
            b.calls += 1
            best = min(self.counts, key=lambda n: self._median(b, n))
            if best != b.best and self._median(b, best) < self._median(b, b.best):
                b.best = best
                self.switches += 1
            return
        b.burst_left -= 1
        lost_badly = seconds > 2.0 * self._median(b, b.best)
        if b.burst_left > 0 and not lost_badly:
            return
        won = self._median(b, threads) < self._median(b, b.best)
        if won:
            b.best = threads
            self.switches += 1
            b.interval = self.min_interval
        else:
            b.interval = min(2 * b.interval, self.max_interval)
        b.exploring, b.calls = None, 0

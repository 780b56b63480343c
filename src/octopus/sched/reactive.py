"""`reactive`: static partition plus threshold-triggered rebalancing.

Every period, inside each cluster, if the backlog per PEA of the most and least loaded TBs
differs by more than `threshold` mean task durations, PEAs move from the light TB to the
heavy one (paying reconfiguration when next used). Across clusters, queued work migrates
from the most to the least loaded cluster under the same threshold (paying the data
transfer). `best_reactive` sweeps the threshold, so the baseline is always at its best.
"""

from __future__ import annotations

import math

from octopus.sched.base import PartitionedScheduler


class ReactiveScheduler(PartitionedScheduler):
    name = "reactive"

    def __init__(self, threshold: float = 1.0, period_us: float = 100.0, mapping=None):
        if not threshold >= 0:  # NaN too: it compares false, which silently meant static
            raise ValueError(f"reactive: threshold must be >= 0 (inf: static), got {threshold}")
        super().__init__(mapping)
        self.threshold, self.tick_us = threshold, period_us

    def attach(self, api) -> None:
        super().attach(api)
        tot = sum(api.load) or 1.0
        calls = sum(api.profile["calls"]) or 1.0
        self.unit = tot / calls  # mean PEA-us per invocation
        self.moves = self._moves_before = 0

    def _backlog(self, c: int, tb: int) -> float:
        return len(self.q[c][tb]) * self.api.ewma[tb] * self.fp[tb]

    def on_tick(self, t: float) -> None:
        self._moves_before = self.moves
        if math.isinf(self.threshold):
            return
        lim = self.threshold * self.unit
        T, api = self.T, self.api
        for c in range(len(self.q)):
            pr = [self._backlog(c, tb) / self.n_own[c][tb] for tb in range(T)]
            hi = max(range(T), key=pr.__getitem__)
            donors = [tb for tb in range(T) if self.n_own[c][tb] > self.fp[tb] and tb != hi]
            if not donors:
                continue
            lo = min(donors, key=pr.__getitem__)
            if pr[hi] - pr[lo] <= lim:
                continue
            m = max(1, (self.n_own[c][lo] - self.fp[lo]) // 2)
            fl = self.free[c][lo]
            moved = [fl.pop() for _ in range(min(m, len(fl)))]
            if len(moved) < m:  # busy ones change owner now, join `hi` when they finish
                busy = [
                    p
                    for p in self.members[c]
                    if self.own[p] == lo and (api.running[p] or api.is_blocked[p])
                ]
                for p in busy[: m - len(moved)]:
                    self.own[p] = hi
                    self.n_own[c][lo] -= 1
                    self.n_own[c][hi] += 1
            for p in moved:
                self.own[p] = hi
                self.free[c][hi].append(p)
            self.n_own[c][lo] -= len(moved)
            self.n_own[c][hi] += len(moved)
            self.moves += 1
            self.drain(c, hi, t)
        self._migrate(t, lim)

    def quiescent(self) -> bool:
        """Whether the last tick changed nothing: every change it makes (PEAs moved between
        TBs, work migrated between clusters) counts one move."""
        return self.moves == self._moves_before

    def _migrate(self, t: float, lim: float) -> None:
        n = len(self.q)
        if n < 2:
            return
        npc = self.api.arch.peas_in_cluster
        w = [sum(self._backlog(c, tb) for tb in range(self.T)) / npc for c in range(n)]
        hi = max(range(n), key=w.__getitem__)
        lo = min(range(n), key=w.__getitem__)
        if w[hi] - w[lo] <= lim:
            return
        budget = (w[hi] - w[lo]) / 2 * npc
        ewma, fp = self.api.ewma, self.fp
        while budget > 0:
            tb = max(range(self.T), key=lambda x: self._backlog(hi, x))
            if not self.q[hi][tb]:
                break
            k = self.q[hi][tb].pop()
            budget -= ewma[tb] * fp[tb]
            self.q[lo][tb].append(k)
            self.drain(lo, tb, t)
        self.moves += 1


THRESHOLDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)

"""`greedy`: any free PEA, first come first served, reconfiguring whenever needed.

Prefers a PEA already warm for the TB and the cluster holding the data, but never waits for
one: no partition, no lookahead.
"""

from __future__ import annotations

from collections import deque

from octopus.sched.base import Scheduler


class GreedyScheduler(Scheduler):
    name = "greedy"

    def attach(self, sim) -> None:
        super().attach(sim)
        arch = sim.arch
        self.fp = sim.cw.footprint
        self.q: deque = deque()
        self.free = [list(ids) for ids in arch.cluster_peas]  # per cluster
        self.nc = arch.n_clusters

    def _place(self, k: int, t: float) -> bool:
        sim = self.sim
        tb = sim.node[k]
        fp = self.fp[tb]
        c0 = sim.data_cluster(k)
        for c in [c0] + [c for c in range(self.nc) if c != c0]:
            fl = self.free[c]
            if len(fl) >= fp:
                cfg = sim.cfg
                warm = [i for i in range(len(fl) - 1, -1, -1) if cfg[fl[i]] == tb][:fp]
                peas = [fl[i] for i in warm]
                for i in sorted(warm, reverse=True):
                    fl.pop(i)
                while len(peas) < fp:
                    peas.append(fl.pop())
                sim.start(k, peas, t)
                return True
        return False

    def submit(self, k: int, t: float) -> None:
        if self.q or not self._place(k, t):
            self.q.append(k)

    def on_free(self, peas, t: float) -> None:
        cl = self.sim.pea_cluster
        for p in peas:
            self.free[cl[p]].append(p)
        q = self.q
        while q and self._place(q[0], t):
            q.popleft()

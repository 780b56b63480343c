"""`greedy`: any free PEA, first come first served, reconfiguring whenever needed.

Prefers a PEA already warm for the TB and the cluster holding the data, but never waits for
one: no partition, no lookahead.
"""

from __future__ import annotations

from collections import deque

from octopus.sched.api import Scheduler, SchedulerAPI


class GreedyScheduler(Scheduler):
    name = "greedy"

    def attach(self, api: SchedulerAPI) -> None:
        super().attach(api)
        arch = api.arch
        self.fp = api.footprint
        self.q: deque = deque()
        # per cluster: free PEAs keyed by their current configuration (-1: none)
        self.free = [{-1: list(reversed(ids))} for ids in arch.cluster_peas]
        self.nfree = [len(ids) for ids in arch.cluster_peas]
        self.nc = arch.n_clusters
        self._pea_cluster, self._config, self._node = arch.pea_cluster, api.config, api.node

    def _take(self, c: int, tb: int, fp: int) -> list[int]:
        fr = self.free[c]
        self.nfree[c] -= fp
        warm = fr.get(tb)
        if fp == 1:
            if warm:
                return [warm.pop()]
            for fl in fr.values():
                if fl:
                    return [fl.pop()]
        peas: list[int] = []
        while warm and len(peas) < fp:
            peas.append(warm.pop())
        if len(peas) < fp:
            for fl in fr.values():
                while fl and len(peas) < fp:
                    peas.append(fl.pop())
                if len(peas) >= fp:
                    break
        return peas

    def _place(self, k: int, t: float) -> bool:
        """Start k in the cluster holding its data, else in the first with room (a fabric of
        several clusters; one cluster is served by `on_free`)."""
        api = self.api
        tb = self._node[k]
        fp = self.fp[tb]
        nfree = self.nfree
        c = api.data_cluster(k)
        if nfree[c] < fp:
            c = next((i for i in range(self.nc) if nfree[i] >= fp), -1)
            if c < 0:
                return False
        api.start(k, self._take(c, tb, fp), t)
        return True

    def on_ready(self, k: int, t: float) -> None:
        q = self.q
        if self.nc == 1:
            q.append(k)
            if len(q) == 1:  # nothing queued before k: serve it now if it fits
                self.on_free((), t)
        elif q or not self._place(k, t):
            q.append(k)

    def on_free(self, peas, t: float) -> None:
        cl, cfg, free, nfree = self._pea_cluster, self._config, self.free, self.nfree
        for p in peas:
            c = cl[p]
            fr = free[c]
            fl = fr.get(cfg[p])
            if fl is None:
                fr[cfg[p]] = fl = []
            fl.append(p)
            nfree[c] += 1
        q = self.q
        if self.nc > 1:
            while q and self._place(q[0], t):
                q.popleft()
            return
        # one cluster (the simple configuration): start the queue's head while it fits, with
        # _take's one-PEA case inline (a warm PEA, else the first free one); start never
        # calls back into the scheduler, so the head leaves the queue as it starts
        fp, node, start, fr = self.fp, self._node, self.api.start, free[0]
        while q:
            tb = node[q[0]]
            f = fp[tb]
            if nfree[0] < f:
                return
            if f == 1:
                nfree[0] -= 1
                warm = fr.get(tb)
                if warm:
                    start(q.popleft(), [warm.pop()], t)
                    continue
                for fl in fr.values():
                    if fl:
                        start(q.popleft(), [fl.pop()], t)
                        break
            else:
                start(q.popleft(), self._take(0, tb, f), t)

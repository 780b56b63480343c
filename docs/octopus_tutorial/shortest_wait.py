"""Shortest expected wait, with work stealing: a complete octopus scheduler on the public API."""

from collections import deque

from octopus.sched.api import Scheduler


class ShortestWait(Scheduler):
    name = "shortest-wait"
    control_plane = True  # control blocks are decided by CBUs, as in Octopus

    def attach(self, api):
        super().attach(api)
        a = api.arch
        self.q = [deque() for _ in range(a.n_clusters)]  # one FIFO per cluster
        self.work = [0.0] * a.n_clusters  # expected PEA-us queued per cluster
        self.free = [list(ids) for ids in a.cluster_peas]  # free PEAs per cluster

    def cost(self, k):  # expected PEA-us of invocation k
        tb = self.api.node[k]
        return self.api.ewma[tb] * self.api.footprint[tb]

    def on_ready(self, k, t):
        api, n = self.api, self.api.arch.peas_in_cluster

        def wait(c):  # queueing delay per PEA, plus moving k's inputs to cluster c
            return self.work[c] / n + api.input_us(k, api.arch.cluster_peas[c][0])

        c = min(range(len(self.q)), key=wait)
        self.q[c].append(k)
        self.work[c] += self.cost(k)
        self.dispatch(c, t)

    def on_free(self, peas, t):
        for p in peas:
            self.free[self.api.arch.pea_cluster[p]].append(p)
        for c in {self.api.arch.pea_cluster[p] for p in peas}:
            self.dispatch(c, t)
            if not self.q[c]:  # idle PEAs: steal from the tail of the longest queue
                victim = max(range(len(self.q)), key=lambda v: len(self.q[v]))
                while self.q[victim] and self.fits(c, self.q[victim][-1]):
                    k = self.q[victim].pop()
                    self.work[victim] -= self.cost(k)
                    self.launch(c, k, t)

    def fits(self, c, k):
        return len(self.free[c]) >= self.api.footprint[self.api.node[k]]

    def dispatch(self, c, t):
        while self.q[c] and self.fits(c, self.q[c][0]):
            k = self.q[c].popleft()
            self.work[c] -= self.cost(k)
            self.launch(c, k, t)

    def launch(self, c, k, t):
        tb, cfg = self.api.node[k], self.api.config
        self.free[c].sort(key=lambda p: cfg[p] == tb)  # PEAs warm for tb last: popped first
        peas = [self.free[c].pop() for _ in range(self.api.footprint[tb])]
        self.api.start(k, peas, t)

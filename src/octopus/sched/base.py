"""The scheduler interface the simulator calls, and the compile-time partition helper."""

from __future__ import annotations

from collections import deque


class Scheduler:
    """Decides where and when ready task invocations start.

    The simulator calls `submit` when an invocation becomes ready, `on_free` when PEAs finish,
    `on_decision` when a control block decides, and `tick` every `tick_us` (if set).
    """

    name = "base"
    control_plane = False  # True: control blocks are decided by CBUs on the control plane
    tick_us: float | None = None

    def attach(self, sim) -> None:
        self.sim = sim

    def submit(self, k: int, t: float) -> None:
        raise NotImplementedError

    def on_free(self, peas, t: float) -> None:
        raise NotImplementedError

    def on_decision(self, k: int, t: float) -> None:
        pass

    def tick(self, t: float) -> None:
        pass


def partition(n: int, loads: list[float], mins: list[int]) -> list[int]:
    """Split n PEAs proportionally to `loads` (largest remainder), each TB at least its min."""
    if sum(mins) > n:
        raise ValueError(
            f"cluster of {n} PEAs cannot hold one group per task block (needs {sum(mins)})"
        )
    tot = sum(loads) or 1.0
    ideal = [n * x / tot for x in loads]
    alloc = [max(m, int(i)) for m, i in zip(mins, ideal)]
    while sum(alloc) > n:
        j = max(
            (i for i in range(len(alloc)) if alloc[i] > mins[i]), key=lambda i: alloc[i] - ideal[i]
        )
        alloc[j] -= 1
    while sum(alloc) < n:
        j = max(range(len(alloc)), key=lambda i: ideal[i] - alloc[i])
        alloc[j] += 1
    return alloc


class PartitionedScheduler(Scheduler):
    """Per-cluster replica of a compile-time partition; each PEA is owned by one TB.

    The TB's configuration is loaded at compile time (free). Instances are pinned to a home
    cluster; each TB has a FIFO queue per cluster.
    """

    def attach(self, sim) -> None:
        super().attach(sim)
        arch, T = sim.arch, sim.T
        self.T, self.fp = T, sim.cw.footprint
        self.own = [-1] * arch.n_peas
        self.q = [[deque() for _ in range(T)] for _ in range(arch.n_clusters)]
        self.free = [[[] for _ in range(T)] for _ in range(arch.n_clusters)]
        self.n_own = [[0] * T for _ in range(arch.n_clusters)]
        alloc = partition(arch.peas_in_cluster, sim.load, self.fp)
        for c, ids in enumerate(arch.cluster_peas):
            i = 0
            for tb, m in enumerate(alloc):
                for p in ids[i : i + m]:
                    self.own[p] = tb
                    sim.cfg[p] = tb
                    self.free[c][tb].append(p)
                self.n_own[c][tb] = m
                i += m

    def cluster_for(self, k: int) -> int:
        sim = self.sim
        return sim.inst_home[sim.inst[k]]

    def submit(self, k: int, t: float) -> None:
        c, tb = self.cluster_for(k), self.sim.node[k]
        q, fl, fp = self.q[c][tb], self.free[c][tb], self.fp[tb]
        if not q and len(fl) >= fp:
            self.sim.start(k, [fl.pop() for _ in range(fp)], t)
        else:
            q.append(k)

    def on_free(self, peas, t: float) -> None:
        cl, own, free = self.sim.pea_cluster, self.own, self.free
        touched = set()
        for p in peas:
            c, tb = cl[p], own[p]
            free[c][tb].append(p)
            touched.add((c, tb))
        for c, tb in touched:
            self.drain(c, tb, t)

    def drain(self, c: int, tb: int, t: float) -> None:
        q, fl, fp, start = self.q[c][tb], self.free[c][tb], self.fp[tb], self.sim.start
        while q and len(fl) >= fp:
            start(q.popleft(), [fl.pop() for _ in range(fp)], t)

"""The compile-time partition shared by the partitioned schedulers, and its helpers."""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop, heappush

from octopus.sched.api import Scheduler, SchedulerAPI


def partition(n: int, loads: list[float], mins: list[int]) -> list[int]:
    """Split n PEAs proportionally to `loads` (largest remainder), each TB at least its min.

    Start from max(min, floor(ideal share)); while that over-commits, take one PEA from the
    TB above its min that holds the most beyond its ideal share; while it under-commits,
    give one to the TB furthest below its share; ties go to the lowest index. The repeated
    choice uses a heap of (-gap, tb), whose order is exactly that of the arg-max with ties
    to the first index (the tests compare it with the plain loop)."""
    if sum(mins) > n:
        raise ValueError(
            f"cluster of {n} PEAs cannot hold one group per task block (needs {sum(mins)})"
        )
    tot = sum(loads) or 1.0
    ideal = [n * x / tot for x in loads]
    alloc = [a if (a := int(i)) > m else m for m, i in zip(mins, ideal)]  # max(m, floor)
    s = sum(alloc)
    if s > n:
        h = [(i - a, j) for j, (a, i, m) in enumerate(zip(alloc, ideal, mins)) if a > m]
        heapify(h)
        while s > n:
            _, j = heappop(h)
            alloc[j] -= 1
            s -= 1
            if alloc[j] > mins[j]:
                heappush(h, (ideal[j] - alloc[j], j))
    elif s < n:
        h = [(a - i, j) for j, (a, i) in enumerate(zip(alloc, ideal))]
        heapify(h)
        while s < n:
            _, j = heappop(h)
            alloc[j] += 1
            s += 1
            heappush(h, (alloc[j] - ideal[j], j))
    return alloc


def mapping_fits(arch, footprint: list[int], mapping: str) -> bool:
    """Whether `mapping`'s compile-time partition can give every TB one group: the whole
    fabric for `regions`, each cluster for `replicated`."""
    return sum(footprint) <= (arch.n_peas if mapping == "regions" else arch.peas_in_cluster)


def lay_out(api: SchedulerAPI, groups, alloc: list[int], own: list[int], free, n_own) -> list:
    """Partition each group of PEAs (a cluster, or the whole fabric) by `alloc`: TB tb gets
    the next alloc[tb] PEAs of the group, in order; they become owned by tb (`own`), free
    (`free[g][tb]`) and configured for it at compile time (free of cost). `n_own[g][tb]`
    counts them. Returns each group's PEAs left over."""
    rest = []
    for g, ids in enumerate(groups):
        i = 0
        for tb, m in enumerate(alloc):
            for p in ids[i : i + m]:
                own[p] = tb
                api.configure_at_compile_time(p, tb)
                free[g][tb].append(p)
            n_own[g][tb] = m
            i += m
        rest.append(ids[i:])
    return rest


class FreePool:
    """Free PEAs of one TB region, kept per cluster so dispatch can take the nearest ones."""

    __slots__ = ("by", "n", "cl", "cx")

    def __init__(self, pea_cluster: list[int], cx: int):
        self.by: dict[int, list[int]] = {}
        self.n, self.cl, self.cx = 0, pea_cluster, cx

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def append(self, p: int) -> None:
        fl = self.by.get(self.cl[p])
        if fl is None:
            self.by[self.cl[p]] = fl = []
        fl.append(p)
        self.n += 1

    def pop(self) -> int:
        for fl in self.by.values():
            if fl:
                self.n -= 1
                return fl.pop()
        raise IndexError("pop from an empty pool")

    def take(self, fp: int, c: int) -> list[int]:
        """fp PEAs, from cluster c first, then from the nearest clusters of the region."""
        out: list[int] = []
        fl = self.by.get(c)
        while fl and len(out) < fp:
            out.append(fl.pop())
        if len(out) < fp:
            cx, x, y = self.cx, c % self.cx, c // self.cx
            order = sorted(
                (d for d, fl in self.by.items() if fl and d != c),
                key=lambda d: abs(d % cx - x) + abs(d // cx - y),
            )
            for d in order:
                fl = self.by[d]
                while fl and len(out) < fp:
                    out.append(fl.pop())
                if len(out) >= fp:
                    break
        self.n -= len(out)
        return out


def snake_order(arch) -> list[int]:
    """PEAs in boustrophedon order over the cluster grid (and inside each cluster), so that
    consecutive slices are compact regions and consecutive regions are neighbours."""
    cx, cy = arch.clusters
    px, _ = arch.peas_per_cluster
    out = []
    for y in range(cy):
        xs = range(cx) if y % 2 == 0 else range(cx - 1, -1, -1)
        for x in xs:
            ids = arch.cluster_peas[y * cx + x]
            rows = [ids[i : i + px] for i in range(0, len(ids), px)]
            for r, row in enumerate(rows):
                out += row if r % 2 == 0 else row[::-1]
    return out


class PartitionedScheduler(Scheduler):
    """A compile-time partition of the PEAs among TBs; each PEA is owned by one TB.

    Two mappings (the architecture lists those its compiler may choose from, and the
    baseline runs with the best one):
    - `replicated`: every cluster holds a replica of the partition of its PEAs; instances
      are pinned to a home cluster; each (cluster, TB) has a FIFO queue;
    - `regions`: the whole fabric is partitioned: each TB owns ONE compact region (a spatial
      pipeline across clusters, TBs laid out in pipeline order), with one fabric-wide FIFO
      per TB; its TBU dispatches to the free PEAs of its region nearest the input data, so
      data flows between regions over the mesh.
    The TB's configuration is loaded at compile time (free).
    """

    def __init__(self, mapping: str | None = None):
        self.mapping = mapping

    def attach(self, api: SchedulerAPI) -> None:
        super().attach(api)
        arch, T = api.arch, api.n_tasks
        if self.mapping is None:  # the first mapping that fits (else the first: refused below)
            fits = [m for m in arch.baseline_mappings if mapping_fits(arch, api.footprint, m)]
            self.mapping = (fits or arch.baseline_mappings)[0]
        self.T, self.fp = T, api.footprint
        self.own = [-1] * arch.n_peas
        if self.mapping == "regions":
            self.members = [snake_order(arch)]
            self.vc = [0] * arch.n_peas  # one virtual cluster: the fabric
            self.free = [[FreePool(arch.pea_cluster, arch.clusters[0]) for _ in range(T)]]
        else:
            self.members = arch.cluster_peas
            self.vc = arch.pea_cluster
            self.free = [[[] for _ in range(T)] for _ in range(arch.n_clusters)]
        nvc = len(self.members)
        self.q = [[deque() for _ in range(T)] for _ in range(nvc)]
        self.n_own = [[0] * T for _ in range(nvc)]
        alloc = partition(len(self.members[0]), api.load, self.fp)
        lay_out(api, self.members, alloc, self.own, self.free, self.n_own)

    def cluster_for(self, k: int) -> int:
        if self.mapping == "regions":
            return 0
        return self.api.home_cluster(k)

    def _take(self, c: int, tb: int, k: int) -> list[int]:
        fl, fp = self.free[c][tb], self.fp[tb]
        if self.mapping == "regions":
            return fl.take(fp, self.api.data_cluster(k))
        return [fl.pop() for _ in range(fp)]

    def on_ready(self, k: int, t: float) -> None:
        c, tb = self.cluster_for(k), self.api.node[k]
        q, fl, fp = self.q[c][tb], self.free[c][tb], self.fp[tb]
        if not q and len(fl) >= fp:
            self.api.start(k, self._take(c, tb, k), t)
        else:
            q.append(k)

    def on_free(self, peas, t: float) -> None:
        vc, own, free = self.vc, self.own, self.free
        touched = set()
        for p in peas:
            c, tb = vc[p], own[p]
            free[c][tb].append(p)
            touched.add((c, tb))
        for c, tb in touched:
            self.drain(c, tb, t)

    def drain(self, c: int, tb: int, t: float) -> None:
        q, fl, fp, start = self.q[c][tb], self.free[c][tb], self.fp[tb], self.api.start
        while q and len(fl) >= fp:
            k = q.popleft()
            start(k, self._take(c, tb, k), t)

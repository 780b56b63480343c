"""Octopus's periodic re-sizing of base shares, for every cluster at once, compiled (numba).

Each tick (`OctopusScheduler._adapt`) every cluster updates its demand EWMA from what it saw,
adds its current queue, and splits its PEAs among the TBs with `base.partition`; the class
of each TB then sets its base share. On a wafer that is 64 partitions a tick (its share of
a run: docs/perf.md, octopus section), so the arithmetic of all clusters is one compiled
call. It repeats
the Python operations exactly, in the same order (`tests/octopus/test_shares.py` compares
it with `partition` and the Python formulas: the results are bit-identical); moving the
PEAs between the shares stays in Python.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
from numba import njit


class ShareResizer:
    """The demand EWMA of every (cluster, TB) and the per-tick call that re-sizes the base
    shares from it (`resize_shares`), with the arrays that call takes."""

    def __init__(
        self,
        demand: list[list[float]],
        fp: list[int],
        frac: list[float],
        npc: int,
        resize: bool,
        dds: bool,
    ):
        self.demand = np.array(demand, dtype=np.float64)
        nc, T = self.demand.shape
        self.fp = np.array(fp, dtype=np.int64)
        self.frac = np.array(frac, dtype=np.float64)
        self.npc, self.resize, self.dds = npc, resize, dds
        self.target = np.zeros((nc, T), dtype=np.int64)
        self.active = np.zeros(nc, dtype=np.bool_)
        self.before = self.demand.copy()  # the demand before the last step

    def unchanged(self) -> bool:
        """Whether the last step left the demand exactly as it was."""
        return bool(np.array_equal(self.before, self.demand))

    def step(self, queues, seen, ewma) -> tuple[list[bool], list[list[int]]]:
        """One tick: fold `seen` (per cluster and TB) into the demand, then per cluster
        whether it re-sizes and its base-share targets (from the lengths of `queues`)."""
        nc, T = self.demand.shape
        np.copyto(self.before, self.demand)
        qlen = np.fromiter(map(len, chain.from_iterable(queues)), np.int64, nc * T)
        resize_shares(
            self.demand,
            np.array(seen, dtype=np.float64),
            qlen.reshape(nc, T),
            np.array(ewma, dtype=np.float64),
            self.fp,
            self.frac,
            self.npc,
            self.resize,
            self.dds,
            self.target,
            self.active,
        )
        return self.active.tolist(), self.target.tolist()


@njit("void(int64, float64[::1], int64[::1], int64[::1])", cache=True, nogil=True)
def _partition_row(n, loads, mins, out):  # pragma: no cover (compiled)
    """`base.partition(n, loads, mins)` into `out`: the heap's pops are arg-mins of the same
    keys with ties to the lowest index, which is the heap's order of (key, index) pairs."""
    m = loads.shape[0]
    tot = 0.0
    for j in range(m):
        tot += loads[j]
    if tot == 0.0:
        tot = 1.0
    ideal = np.empty(m)
    s = 0
    for j in range(m):
        ideal[j] = n * loads[j] / tot
        a = int(ideal[j])
        out[j] = a if a > mins[j] else mins[j]
        s += out[j]
    while s > n:  # take one from the TB above its min holding most beyond its share
        best, bj = 0.0, -1
        for j in range(m):
            if out[j] > mins[j]:
                g = ideal[j] - out[j]
                if bj < 0 or g < best:
                    best, bj = g, j
        out[bj] -= 1
        s -= 1
    while s < n:  # give one to the TB furthest below its share
        best, bj = 0.0, -1
        for j in range(m):
            g = out[j] - ideal[j]
            if bj < 0 or g < best:
                best, bj = g, j
        out[bj] += 1
        s += 1


@njit(
    "void(float64[:, ::1], float64[:, ::1], int64[:, ::1], float64[::1], int64[::1],"
    " float64[::1], int64, boolean, boolean, int64[:, ::1], boolean[::1])",
    cache=True,
    nogil=True,
)
def resize_shares(
    demand, seen, qlen, ewma, fp, frac, npc, resize, dds, target, active
):  # pragma: no cover (compiled)
    """For each cluster c: demand[c] += 0.3 * (seen[c] - demand[c]); then, when `resize`
    and some demand is left, its base-share targets into target[c] (active[c] = True):
    the partition of `npc` PEAs by demand + queued work (qlen x EWMA x footprint), each TB
    at least its footprint; with `dds`, max(footprint, int(share x frac))."""
    nc, m = demand.shape
    want = np.empty(m)
    share = np.empty(m, dtype=np.int64)
    for c in range(nc):
        nz = False
        for j in range(m):
            x = demand[c, j]
            x = x + 0.3 * (seen[c, j] - x)
            demand[c, j] = x
            if x != 0.0:
                nz = True
        active[c] = resize and nz
        if not active[c]:
            continue
        for j in range(m):
            want[j] = demand[c, j] + qlen[c, j] * ewma[j] * fp[j] + 1e-9
        _partition_row(npc, want, fp, share)
        for j in range(m):
            if dds:
                a = int(share[j] * frac[j])
                target[c, j] = a if a > fp[j] else fp[j]
            else:
                target[c, j] = share[j]

"""Octopus's periodic re-sizing of base shares, for every cluster at once, compiled (numba).

Each tick (`OctopusScheduler._adapt`) every cluster updates its demand EWMA from what it saw,
adds its current queue, and splits its PEAs among the TBs with `base.partition`; the class
of each TB then sets its base share. On a wafer that is 64 partitions a tick, about a tenth
of a full run as Python, so the arithmetic of all clusters is one compiled call. It repeats
the Python operations exactly, in the same order (`tests/octopus/test_shares.py` compares
it with `partition` and the Python formulas: the results are bit-identical); moving the
PEAs between the shares stays in Python.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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

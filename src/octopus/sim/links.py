"""Contended transfers over the mesh links, compiled (numba).

One transfer with link contention waits until every directed link of its XY route is free,
holds all of them for its serialisation time and arrives one route latency later. It runs
once per input moved between PEAs, and on a wafer its route crosses about eight links, so
this hot, self-contained piece is compiled (its share of a run: docs/perf.md, octopus
section). It computes exactly
what `Physics.transfer` computed in Python (the same IEEE operations in the same order:
the results are bit-identical; `tests/octopus/test_fast_paths.py` compares it with a
link-by-link Python reference).

State is two arrays, so that one call unboxes little:
- `fa` (float64): the time until which each directed link is reserved, index
  `(y * W + x) * 4 + d` (d: 0 east, 1 west, 2 north, 3 south), then at `fa[n_links:]` the
  constants (hop latency, inter-die hop latency, bytes per us on a die, across dies) and
  the NoC counters (bytes sent, byte-hops);
- `geo` (int64, one row per PEA): mesh x, mesh y, die x, die y, the PEA's link index base
  (its cell times 4), and in row 0 the stride of a mesh column (4 W).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from numba import njit

from octopus.arch.config import Arch
from octopus.sim.physics import NOC_BYTE_HOPS, NOC_BYTES

HOP, DIE_HOP, BW, DIE_BW = range(4)  # offsets of the constants past the links


def link_tables(arch: Arch) -> tuple[np.ndarray, np.ndarray, int]:
    """Fresh `fa` and `geo` for `arch` (all links free), and the number of links."""
    n_links = arch.grid_w * arch.grid_h * 4
    fa = np.zeros(n_links + 6)
    fa[n_links + HOP] = arch.hop_latency_us
    fa[n_links + DIE_HOP] = arch.die_hop_latency_us
    fa[n_links + BW] = arch.bytes_per_us
    fa[n_links + DIE_BW] = arch.die_bytes_per_us
    geo = np.zeros((arch.n_peas, 6), dtype=np.int64)
    geo[:, 0] = arch.pea_x
    geo[:, 1] = arch.pea_y
    geo[:, 2] = arch.pea_dx
    geo[:, 3] = arch.pea_dy
    geo[:, 4] = [(y * arch.grid_w + x) * 4 for x, y in zip(arch.pea_x, arch.pea_y)]
    geo[0, 5] = 4 * arch.grid_w
    return fa, geo, n_links


@njit(cache=True, nogil=True, inline="always")
def _route(fa, geo, q, p, b):  # pragma: no cover (compiled)
    """`Arch.route(q, p, b)`: (hops, latency, serialisation time) of one XY route."""
    base = fa.shape[0] - 6
    dx = geo[p, 0] - geo[q, 0]
    dy = geo[p, 1] - geo[q, 1]
    hops = (dx if dx > 0 else -dx) + (dy if dy > 0 else -dy)
    ex = geo[q, 2] - geo[p, 2]
    ey = geo[q, 3] - geo[p, 3]
    dies = (ex if ex > 0 else -ex) + (ey if ey > 0 else -ey)
    if dies:
        lat = (hops - dies) * fa[base + HOP] + dies * fa[base + DIE_HOP]
        ser = b / fa[base + DIE_BW]
    else:
        lat = hops * fa[base + HOP]
        ser = b / fa[base + BW]
    return hops, lat, ser


@njit("float64(float64[::1], int64[:, ::1], int64, int64, float64)", cache=True, nogil=True)
def route_us(fa, geo, q, p, b):  # pragma: no cover (compiled)
    """`Arch.transfer_us(q, p, b)` for q >= 0, q != p: b bytes on an idle mesh (nothing is
    reserved or counted; the balancer's cost of moving an input)."""
    _, lat, ser = _route(fa, geo, q, p, b)
    return lat + ser


@njit(
    "float64(float64[::1], int64[:, ::1], int64, int64, float64, float64)",
    cache=True,
    nogil=True,
)
def contended_transfer(fa, geo, q, p, b, t):  # pragma: no cover (compiled)
    """Send b bytes from PEA q to PEA p, issued at t, reserving the route's links; returns
    the time to arrival and adds to the NoC counters."""
    base = fa.shape[0] - 6
    hops, lat, ser = _route(fa, geo, q, p, b)
    dx = geo[p, 0] - geo[q, 0]
    fa[base + NOC_BYTES] += b
    fa[base + NOC_BYTE_HOPS] += b * hops
    # the X leg runs along q's row to the corner cell (x of p, y of q), the Y leg along p's
    # column: each is a strided run of links
    cq, cp, w4 = geo[q, 4], geo[p, 4], geo[0, 5]
    cc = cq + 4 * dx
    if dx > 0:
        x0, x1 = cq, cc
    else:
        x0, x1 = cc + 5, cq + 5
    if cp > cc:
        y0, y1 = cc + 2, cp + 2
    else:
        y0, y1 = cp + w4 + 3, cc + w4 + 3
    s = t  # every link of the route is free from s
    for i in range(x0, x1, 4):
        if fa[i] > s:
            s = fa[i]
    for i in range(y0, y1, w4):
        if fa[i] > s:
            s = fa[i]
    e = s + ser
    for i in range(x0, x1, 4):
        fa[i] = e
    for i in range(y0, y1, w4):
        fa[i] = e
    return e + lat - t


def bind(fn, fa: np.ndarray, geo: np.ndarray):
    """`fn(fa, geo, ...)` with the fabric's arrays bound, calling the compiled code of fn's
    one signature directly: the dispatcher would match the argument types on every call,
    and the arguments here always have that signature. A plain function (numba's
    NUMBA_DISABLE_JIT=1 leaves `fn` one) is bound as it is."""
    overloads = getattr(fn, "overloads", None)
    if not overloads:
        return partial(fn, fa, geo)
    return partial(overloads[fn.signatures[0]].entry_point, fa, geo)

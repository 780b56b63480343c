"""The physical model: moving input data over the mesh, and loading configurations.

Each cost exists once here: `transfer` (with or without link contention) and `reconfigure`.
The formula for one uncontended route is `Arch.route` (`transfer` repeats it inline, tested
equal).
"""

from __future__ import annotations

from octopus.arch.config import Arch


class Physics:
    __slots__ = (
        "arch",
        "rc_us",
        "contention",
        "link_free",
        "noc_bytes",
        "noc_byte_hops",
        "n_reconfig",
        "reconf_spans",
        "record",
        "_px",
        "_py",
        "_ddx",
        "_ddy",
        "_dies",
        "_hop",
        "_die_hop",
        "_bw",
        "_die_bw",
        "_w4",
        "_cell",
    )

    def __init__(self, arch: Arch, config_bytes: list[int], record: bool):
        self.arch = arch
        self.rc_us = [arch.reconfig_us(b) for b in config_bytes]  # per TB
        self.contention = arch.link_contention
        # link contention: time until which each directed mesh link is reserved
        self.link_free = [0.0] * (arch.grid_w * arch.grid_h * 4) if self.contention else []
        self.noc_bytes = 0.0
        self.noc_byte_hops = 0.0
        self.n_reconfig = 0
        self.reconf_spans: list[tuple] = []  # (PEA, start, end, TB) when recording
        self.record = record
        # Arch.route's inputs, bound once: transfer computes the same route inline (it runs
        # once per moved input; tests compare it with Arch.route)
        self._px, self._py, self._w4 = arch.pea_x, arch.pea_y, 4 * arch.grid_w
        self._ddx, self._ddy, self._dies = arch.pea_dx, arch.pea_dy, arch.n_dies > 1
        self._hop, self._die_hop = arch.hop_latency_us, arch.die_hop_latency_us
        self._bw, self._die_bw = arch.bytes_per_us, arch.die_bytes_per_us
        self._cell = [(y * arch.grid_w + x) * 4 for x, y in zip(arch.pea_x, arch.pea_y)]

    def transfer(self, q: int, p: int, b: float, t: float) -> float:
        """Send b bytes from PEA q to PEA p, issued at t; returns the time to arrival.

        With link contention the transfer waits until every directed link of its XY route
        is free, then holds all of them for its serialisation time (bottleneck bandwidth);
        it arrives one route latency later."""
        px, py = self._px, self._py
        dx = px[p] - px[q]
        hops = (dx if dx > 0 else -dx) + abs(py[p] - py[q])
        if self._dies:
            ddx, ddy = self._ddx, self._ddy
            dies = abs(ddx[q] - ddx[p]) + abs(ddy[q] - ddy[p])
        else:
            dies = 0
        if dies:
            lat = (hops - dies) * self._hop + dies * self._die_hop
            ser = b / self._die_bw
        else:
            lat = hops * self._hop
            ser = b / self._bw
        self.noc_bytes += b
        self.noc_byte_hops += b * hops
        if not self.contention:
            return lat + ser
        # link d of mesh cell (x, y) is link_free[(y * W + x) * 4 + d], d: 0 east, 1 west,
        # 2 north, 3 south. The X leg runs along q's row to the corner cell (x of p, y of q),
        # the Y leg along p's column: each is a strided slice of link_free
        cq, cp = self._cell[q], self._cell[p]
        cc, W4 = cq + 4 * dx, self._w4  # the corner cell, and the stride of a column
        xs = slice(cq, cc, 4) if dx > 0 else slice(cc + 5, cq + 5, 4)
        ys = slice(cc + 2, cp + 2, W4) if cp > cc else slice(cp + W4 + 3, cc + W4 + 3, W4)
        lf = self.link_free
        bx, by = lf[xs], lf[ys]
        s = t  # every link of the route is free from s
        for x in bx:
            if x > s:
                s = x
        for x in by:
            if x > s:
                s = x
        e = s + ser
        lf[xs] = [e] * len(bx)
        lf[ys] = [e] * len(by)
        return e + lat - t

    def reconfigure(self, p: int, tb: int, r: float, time_reconf: list[float]) -> float:
        """Load TB tb's configuration into PEA p from time r; returns when it is loaded."""
        rc = self.rc_us[tb]
        if self.record:
            self.reconf_spans.append((p, r, r + rc, tb))
        time_reconf[p] += rc
        self.n_reconfig += 1
        return r + rc

"""The physical model: moving input data over the mesh, and loading configurations.

Each cost exists once here: `transfer` (with or without link contention) and `reconfigure`.
The formula for one uncontended route is `Arch.route`.
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
        "_route",
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
        self._route = arch.route

    def transfer(self, q: int, p: int, b: float, t: float) -> float:
        """Send b bytes from PEA q to PEA p, issued at t; returns the time to arrival.

        With link contention the transfer waits until every directed link of its XY route
        is free, then holds all of them for its serialisation time (bottleneck bandwidth);
        it arrives one route latency later."""
        hops, lat, ser = self._route(q, p, b)
        self.noc_bytes += b
        self.noc_byte_hops += b * hops
        if not self.contention:
            return lat + ser
        arch = self.arch
        px, py, W = arch.pea_x, arch.pea_y, arch.grid_w
        x0, y0, x1, y1 = px[q], py[q], px[p], py[p]
        # link (x, y, d) is lf[(y * W + x) * 4 + d], d: 0 east, 1 west, 2 north, 3 south; the
        # X leg is a run of links of row y0 (stride 4), the Y leg one of column x1 (stride 4W)
        if x1 > x0:
            xs = slice((y0 * W + x0) * 4, (y0 * W + x1) * 4, 4)
        else:
            xs = slice((y0 * W + x1 + 1) * 4 + 1, (y0 * W + x0 + 1) * 4 + 1, 4)
        if y1 > y0:
            ys = slice((y0 * W + x1) * 4 + 2, (y1 * W + x1) * 4 + 2, 4 * W)
        else:
            ys = slice(((y1 + 1) * W + x1) * 4 + 3, ((y0 + 1) * W + x1) * 4 + 3, 4 * W)
        lf = self.link_free
        bx, by = lf[xs], lf[ys]
        s = max([t, *bx, *by])  # every link of the route is free from s
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

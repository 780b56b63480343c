"""The physical model: moving input data over the mesh, and loading configurations.

Each cost exists once here: `transfer` (with or without link contention) and `reconfigure`.
The formula for one uncontended route is `Arch.route` (`transfer` repeats it inline, tested
equal); a contended transfer is compiled (`links.contended_transfer`, the same formula).
"""

from __future__ import annotations

from functools import partial

from octopus.arch.config import Arch

NOC_BYTES, NOC_BYTE_HOPS = 4, 5  # offsets of the NoC counters past the links (see links)


class Physics:
    __slots__ = (
        "arch",
        "rc_us",
        "contention",
        "link_free",
        "_noc_bytes",
        "_noc_byte_hops",
        "_fa",
        "_geo",
        "_n_links",
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
        "_contended",
        "route_us",
        "send",
    )

    def __init__(self, arch: Arch, config_bytes: list[int], record: bool):
        self.arch = arch
        self.rc_us = [arch.reconfig_us(b) for b in config_bytes]  # per TB
        self.contention = arch.link_contention
        # link contention: time until which each directed mesh link is reserved (a view of
        # the compiled transfer's state, which also counts its NoC traffic)
        if self.contention:
            from octopus.sim.links import contended_transfer, link_tables, route_us

            self._fa, self._geo, self._n_links = link_tables(arch)
            self._contended = contended_transfer
            self.route_us = partial(route_us, self._fa, self._geo)
            self.send = partial(contended_transfer, self._fa, self._geo)
        else:
            self._fa, self._geo, self._n_links, self._contended = None, None, 0, None
            self.route_us = arch.transfer_us
            self.send = self.transfer
        # send(q, p, b, t): `transfer` as the core calls it, once per moved input (with
        # contention the compiled transfer bound to this fabric's arrays, without a frame)
        # route_us(q, p, b): the time of b bytes from PEA q to PEA p (q >= 0, q != p) on an
        # idle mesh, nothing reserved or counted (Arch.transfer_us; compiled where the
        # contended transfer is)
        self.link_free = self._fa[: self._n_links] if self.contention else []
        self._noc_bytes = 0.0  # uncontended transfers' counters (contended: in _fa)
        self._noc_byte_hops = 0.0
        self.n_reconfig = 0
        self.reconf_spans: list[tuple] = []  # (PEA, start, end, TB) when recording
        self.record = record
        # Arch.route's inputs, bound once: transfer computes the same route inline (it runs
        # once per moved input; tests compare it with Arch.route)
        self._px, self._py = arch.pea_x, arch.pea_y
        self._ddx, self._ddy, self._dies = arch.pea_dx, arch.pea_dy, arch.n_dies > 1
        self._hop, self._die_hop = arch.hop_latency_us, arch.die_hop_latency_us
        self._bw, self._die_bw = arch.bytes_per_us, arch.die_bytes_per_us

    @property
    def noc_bytes(self) -> float:
        """Bytes sent over the mesh."""
        if self._fa is None:
            return self._noc_bytes
        return self._noc_bytes + float(self._fa[-6 + NOC_BYTES])

    @property
    def noc_byte_hops(self) -> float:
        """Bytes sent times the hops each crossed."""
        if self._fa is None:
            return self._noc_byte_hops
        return self._noc_byte_hops + float(self._fa[-6 + NOC_BYTE_HOPS])

    def transfer(self, q: int, p: int, b: float, t: float) -> float:
        """Send b bytes from PEA q to PEA p, issued at t; returns the time to arrival.

        With link contention the transfer waits until every directed link of its XY route
        is free, then holds all of them for its serialisation time (bottleneck bandwidth);
        it arrives one route latency later (`links.contended_transfer`)."""
        if self.contention:
            return self._contended(self._fa, self._geo, q, p, b, t)
        px, py = self._px, self._py
        dx, dy = px[p] - px[q], py[p] - py[q]
        hops = (dx if dx > 0 else -dx) + (dy if dy > 0 else -dy)
        if self._dies and (
            dies := abs(self._ddx[q] - self._ddx[p]) + abs(self._ddy[q] - self._ddy[p])
        ):
            lat = (hops - dies) * self._hop + dies * self._die_hop
            ser = b / self._die_bw
        else:
            lat = hops * self._hop
            ser = b / self._bw
        self._noc_bytes += b
        self._noc_byte_hops += b * hops
        return lat + ser

    def reconfigure(self, p: int, tb: int, r: float, time_reconf: list[float]) -> float:
        """Load TB tb's configuration into PEA p from time r; returns when it is loaded."""
        rc = self.rc_us[tb]
        if self.record:
            self.reconf_spans.append((p, r, r + rc, tb))
        time_reconf[p] += rc
        self.n_reconfig += 1
        return r + rc

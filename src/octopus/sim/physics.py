"""The physical model: moving input data over the mesh, and loading configurations.

Each cost exists once here: `transfer` (with or without link contention) and `reconfigure`.
The formula for one uncontended route is `Arch.route` (`transfer` repeats it inline, tested
equal); a contended transfer is compiled (`links.contended_transfer`, the same formula).
"""

from __future__ import annotations

from octopus.arch.config import Arch

NOC_BYTES, NOC_BYTE_HOPS = 4, 5  # offsets of the NoC counters past the links (see links)


class Physics:
    __slots__ = (
        "arch",
        "rc_us",
        "contention",
        "link_free",
        "_noc",
        "_plain",
        "_fa",
        "_geo",
        "_n_links",
        "n_reconfig",
        "reconf_spans",
        "record",
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
            from octopus.sim.links import bind, contended_transfer, link_tables, route_us

            self._fa, self._geo, self._n_links = link_tables(arch)
            self._contended = contended_transfer
            self.route_us = bind(route_us, self._fa, self._geo)
            self.send = bind(contended_transfer, self._fa, self._geo)
        else:
            self._fa, self._geo, self._n_links, self._contended = None, None, 0, None
            self.route_us = arch.transfer_us
        # send(q, p, b, t): `transfer` as the core calls it, once per moved input (with
        # contention the compiled transfer bound to this fabric's arrays, without a frame)
        # route_us(q, p, b): the time of b bytes from PEA q to PEA p (q >= 0, q != p) on an
        # idle mesh, nothing reserved or counted (Arch.transfer_us; compiled where the
        # contended transfer is)
        self.link_free = self._fa[: self._n_links] if self.contention else []
        # uncontended transfers' counters, bytes and byte-hops (contended: in _fa)
        self._noc = [0.0, 0.0]
        self.n_reconfig = 0
        self.reconf_spans: list[tuple] = []  # (PEA, start, end, TB) when recording
        self.record = record
        self._plain = _uncontended_send(arch, self._noc)  # the route without contention
        if not self.contention:
            self.send = self._plain

    @property
    def noc_bytes(self) -> float:
        """Bytes sent over the mesh."""
        if self._fa is None:
            return self._noc[0]
        return self._noc[0] + float(self._fa[-6 + NOC_BYTES])

    @property
    def noc_byte_hops(self) -> float:
        """Bytes sent times the hops each crossed."""
        if self._fa is None:
            return self._noc[1]
        return self._noc[1] + float(self._fa[-6 + NOC_BYTE_HOPS])

    def transfer(self, q: int, p: int, b: float, t: float) -> float:
        """Send b bytes from PEA q to PEA p, issued at t; returns the time to arrival.

        With link contention the transfer waits until every directed link of its XY route
        is free, then holds all of them for its serialisation time (bottleneck bandwidth);
        it arrives one route latency later (`links.contended_transfer`)."""
        if self.contention:
            return self._contended(self._fa, self._geo, q, p, b, t)
        return self._plain(q, p, b, t)

    def reconfigure(self, p: int, tb: int, r: float, time_reconf: list[float]) -> float:
        """Load TB tb's configuration into PEA p from time r; returns when it is loaded."""
        rc = self.rc_us[tb]
        if self.record:
            self.reconf_spans.append((p, r, r + rc, tb))
        time_reconf[p] += rc
        self.n_reconfig += 1
        return r + rc


def _uncontended_send(arch: Arch, noc: list[float]):
    """`Physics.transfer` without link contention: `Arch.route`'s formula inline (it runs
    once per moved input; tests compare it with Arch.route), over the fabric's tables bound
    as the closure's cells (no attribute lookups per call). It adds to `noc`, the bytes and
    byte-hops sent."""
    px, py, ddx, ddy = arch.pea_x, arch.pea_y, arch.pea_dx, arch.pea_dy
    multi_die = arch.n_dies > 1
    hop, die_hop = arch.hop_latency_us, arch.die_hop_latency_us
    bw, die_bw = arch.bytes_per_us, arch.die_bytes_per_us

    def send(q: int, p: int, b: float, t: float) -> float:
        dx, dy = px[p] - px[q], py[p] - py[q]
        hops = (dx if dx > 0 else -dx) + (dy if dy > 0 else -dy)
        if multi_die and (dies := abs(ddx[q] - ddx[p]) + abs(ddy[q] - ddy[p])):
            lat = (hops - dies) * hop + dies * die_hop
            ser = b / die_bw
        else:
            lat = hops * hop
            ser = b / bw
        noc[0] += b
        noc[1] += b * hops
        return lat + ser

    return send

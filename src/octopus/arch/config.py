"""Architecture description (schema `octopus-arch/1`) and its derived cost model.

Units: time in microseconds, sizes in bytes, bandwidth in GB/s (= 1000 bytes/us), PEA
throughput in TOPS (= 1 Mop/us), so a TB of W Mop on k PEAs runs W / (k * TOPS) us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from octopus.checks import number, read_document

SCHEMA = "octopus-arch/1"
CONFIG_DIR = Path(__file__).parent / "configs"
MAPPINGS = ("regions", "replicated")
# PEAs in one architecture: every PEA gets its entries in per-PEA tables, built in Python
# when the Arch is made (1,048,576 take about a second), so clusters: [1000, 1000] of 8x8
# PEAs hung while it built 64 million. The shipped wafer has 4,096; a Cerebras WSE-2-sized
# fabric (850,000 cores) still fits.
MAX_PEAS = 1 << 20


@dataclass
class Arch:
    name: str
    clusters: tuple[int, int]
    peas_per_cluster: tuple[int, int]
    clusters_per_die: tuple[int, int]
    throughput_tops: float = 1.0
    # local memory of one PEA for configuration + weights (0: unlimited, TBs never split)
    pea_memory_bytes: int = 0
    hop_latency_us: float = 0.01
    link_gbps: float = 64.0
    die_hop_latency_us: float = 0.2
    die_link_gbps: float = 16.0
    reconfig_base_us: float = 2.0
    reconfig_gbps: float = 8.0
    control_plane_us: float = 0.5
    data_plane_us: float = 20.0
    # time a data-plane decision occupies the PEA that produced its input (baseline only;
    # 0: decisions never occupy PEAs)
    data_plane_pea_us: float = 0.0
    central_decision_us: float = 5.0
    # contention: a transfer reserves every mesh link on its XY route for its serialisation
    link_contention: bool = False
    # bounded output buffers: slots per PEA for results not yet read (0 = unbounded)
    buffer_slots: int = 0
    # compile-time mappings the baseline compiler may choose from (the best one is kept)
    baseline_mappings: tuple[str, ...] = ("replicated",)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        cx, cy = self.clusters
        px, py = self.peas_per_cluster
        dx, dy = self.clusters_per_die
        if cx * cy * px * py > MAX_PEAS:  # checked before the per-PEA tables are built
            raise ValueError(
                f"arch: fields 'clusters' x 'peas_per_cluster': {cx}x{cy} clusters of {px}x{py} "
                f"PEAs make {cx * cy * px * py} PEAs, more than {MAX_PEAS} (MAX_PEAS)"
            )
        self.n_clusters = cx * cy
        self.peas_in_cluster = px * py
        self.n_peas = self.n_clusters * self.peas_in_cluster
        self.pea_x, self.pea_y, self.pea_cluster, self.pea_die = [], [], [], []
        self.pea_dx, self.pea_dy = [], []
        self.cluster_peas: list[list[int]] = []
        for c in range(self.n_clusters):
            ccx, ccy = c % cx, c // cx
            ids = []
            for k in range(self.peas_in_cluster):
                x, y = ccx * px + k % px, ccy * py + k // px
                ids.append(len(self.pea_x))
                self.pea_x.append(x)
                self.pea_y.append(y)
                self.pea_cluster.append(c)
                self.pea_dx.append(ccx // dx)
                self.pea_dy.append(ccy // dy)
                self.pea_die.append((ccy // dy) * ((cx + dx - 1) // dx) + ccx // dx)
            self.cluster_peas.append(ids)
        self.neighbors = []
        for c in range(self.n_clusters):
            ccx, ccy = c % cx, c // cx
            nb = [
                (ccy + dy_) * cx + ccx + dx_
                for dx_, dy_ in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= ccx + dx_ < cx and 0 <= ccy + dy_ < cy
            ]
            self.neighbors.append(nb)
        self.n_dies = len(set(self.pea_die))
        self.grid_w, self.grid_h = cx * px, cy * py
        for m in self.baseline_mappings:
            if m not in MAPPINGS:
                raise ValueError(
                    f"arch: field 'baseline.mappings': unknown {m!r} (one of {', '.join(MAPPINGS)})"
                )
        if self.buffer_slots < 0:
            raise ValueError("arch: field 'buffer.slots_per_pea': must be >= 0")
        self.bytes_per_us = self.link_gbps * 1000.0
        self.die_bytes_per_us = self.die_link_gbps * 1000.0

    def route(self, src: int, dst: int, nbytes: float) -> tuple[int, float, float]:
        """One uncontended XY route: (hops, latency, serialisation time). Cut-through mesh:
        per-hop latency (inter-die hops slower) plus serialisation on the slowest link."""
        hops = abs(self.pea_x[src] - self.pea_x[dst]) + abs(self.pea_y[src] - self.pea_y[dst])
        if self.n_dies > 1:
            dx, dy = self.pea_dx, self.pea_dy
            dies = abs(dx[src] - dx[dst]) + abs(dy[src] - dy[dst])
            if dies:
                lat = (hops - dies) * self.hop_latency_us + dies * self.die_hop_latency_us
                return hops, lat, nbytes / self.die_bytes_per_us
        return hops, hops * self.hop_latency_us, nbytes / self.bytes_per_us

    def transfer_us(self, src: int, dst: int, nbytes: float) -> float:
        """Time to move nbytes from PEA src to PEA dst on an idle mesh."""
        if src == dst or src < 0:
            return 0.0
        _, lat, ser = self.route(src, dst, nbytes)
        return lat + ser

    def reconfig_us(self, config_bytes: int) -> float:
        return self.reconfig_base_us + config_bytes / (self.reconfig_gbps * 1000.0)

    def diameter_us(self) -> float:
        """Latency of one control message corner to corner (used by the central balancer)."""
        return self.transfer_us(0, self.n_peas - 1, 64)


# The fields each section reads: any other is a typo (`link_bandwith_gbps` left the
# default 64 GB/s in place, silently) and is refused by name, as in a workflow file.
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "pea": ("throughput_tops", "memory_bytes"),
    "mesh": (
        "hop_latency_us",
        "link_bandwidth_gbps",
        "inter_die_hop_latency_us",
        "inter_die_bandwidth_gbps",
        "link_contention",
    ),
    "buffer": ("slots_per_pea",),
    "baseline": ("mappings",),
    "reconfig": ("base_us", "bandwidth_gbps"),
    "control": (
        "control_plane_latency_us",
        "data_plane_latency_us",
        "data_plane_pea_us",
        "central_decision_us",
    ),
}
TOP_KEYS = ("schema", "name", "description", "sources", "clusters", "peas_per_cluster")
TOP_KEYS += ("clusters_per_die", *SECTION_KEYS)


def _unknown(keys, known: tuple[str, ...], where: str, probs: list[str]) -> None:
    """One problem per key of `keys` not in `known`, naming it and the known ones."""
    for k in sorted(set(keys) - set(known), key=str):
        probs.append(f"arch: field '{where}{k}': unknown (known: {', '.join(known)})")


def _section(doc: dict, key: str, probs: list[str]) -> dict:
    v = doc.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        probs.append(f"arch: field '{key}': expected a mapping")
        return {}
    _unknown(v, SECTION_KEYS[key], f"{key}.", probs)
    return v


def _pair(doc: dict, key: str, probs: list[str], default=None) -> tuple[int, int]:
    """Two positive integers (a grid size)."""
    v = doc.get(key, default)
    ok = (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)
    )
    if not ok:
        what = "missing" if v is None else f"got {v!r}"
        probs.append(f"arch: field '{key}': expected two positive integers, {what}")
        return (1, 1)
    return (v[0], v[1])


def _number(
    sec: dict, name: str, key: str, default, probs: list[str], *, positive=False, integer=False
):
    """Field `key` of section `name`, checked by `checks.number` as `name.key` (> 0 when
    `positive`: it divides); None if wrong (the problems are raised before it is used)."""
    v = sec.get(key, default)
    return number(v, f"arch: field '{name}.{key}'", probs, positive=positive, integer=integer)


def free_arch(
    name: str, peas: tuple[int, int], control_us: float, throughput_tops: float = 1.0
) -> Arch:
    """One cluster of `peas` PEAs where data movement and reconfiguration are free, and
    decisions take `control_us` on either plane: the machine of the SimPy cross-check and
    of the free-pool references. Free means exactly zero: the link and reconfiguration
    bandwidths are infinite (b / inf is 0.0), which the file format refuses (a bandwidth
    must be finite). A huge finite bandwidth leaves tiny costs, which break ties of fixed
    work times in another order than the SimPy model does."""
    return Arch(
        name=name,
        clusters=(1, 1),
        peas_per_cluster=peas,
        clusters_per_die=(1, 1),
        throughput_tops=throughput_tops,
        hop_latency_us=0.0,
        link_gbps=math.inf,
        die_link_gbps=math.inf,
        reconfig_base_us=0.0,
        reconfig_gbps=math.inf,
        control_plane_us=control_us,
        data_plane_us=control_us,
    )


def arch_from_dict(doc: dict) -> Arch:
    """Build an Arch from a parsed `octopus-arch/1` document. Every field is checked first
    (a zero bandwidth or throughput divides by zero, a negative latency or NaN gives PEA
    time shares beyond [0, 100%]); the error lists each problem, naming the field."""
    if not isinstance(doc, dict):
        raise ValueError("arch: expected a mapping at the top level")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"arch: field 'schema': expected {SCHEMA!r}, got {doc.get('schema')!r}")
    probs: list[str] = []
    _unknown(doc, TOP_KEYS, "", probs)
    pea, mesh = _section(doc, "pea", probs), _section(doc, "mesh", probs)
    rc, ctl = _section(doc, "reconfig", probs), _section(doc, "control", probs)
    buf, bl = _section(doc, "buffer", probs), _section(doc, "baseline", probs)
    clusters = _pair(doc, "clusters", probs)
    peas = _pair(doc, "peas_per_cluster", probs)
    per_die = _pair(doc, "clusters_per_die", probs, doc.get("clusters"))
    contention = mesh.get("link_contention", False)
    if not isinstance(contention, bool):
        probs.append(
            f"arch: field 'mesh.link_contention': expected true or false, got {contention!r}"
        )
    mappings = bl.get("mappings", ["replicated"])
    if not isinstance(mappings, list) or not mappings:
        probs.append("arch: field 'baseline.mappings': expected a non-empty list")
        mappings = ["replicated"]
    kw = dict(
        throughput_tops=_number(pea, "pea", "throughput_tops", 1.0, probs, positive=True),
        pea_memory_bytes=_number(pea, "pea", "memory_bytes", 0, probs, integer=True),
        hop_latency_us=_number(mesh, "mesh", "hop_latency_us", 0.01, probs),
        link_gbps=_number(mesh, "mesh", "link_bandwidth_gbps", 64.0, probs, positive=True),
        die_hop_latency_us=_number(mesh, "mesh", "inter_die_hop_latency_us", 0.2, probs),
        die_link_gbps=_number(mesh, "mesh", "inter_die_bandwidth_gbps", 16.0, probs, positive=True),
        reconfig_base_us=_number(rc, "reconfig", "base_us", 2.0, probs),
        reconfig_gbps=_number(rc, "reconfig", "bandwidth_gbps", 8.0, probs, positive=True),
        control_plane_us=_number(ctl, "control", "control_plane_latency_us", 0.5, probs),
        data_plane_us=_number(ctl, "control", "data_plane_latency_us", 20.0, probs),
        data_plane_pea_us=_number(ctl, "control", "data_plane_pea_us", 0.0, probs),
        central_decision_us=_number(ctl, "control", "central_decision_us", 5.0, probs),
        buffer_slots=_number(buf, "buffer", "slots_per_pea", 0, probs, integer=True),
    )
    if probs:
        raise ValueError("\n  ".join(probs))
    return Arch(
        name=str(doc.get("name", "arch")),
        clusters=clusters,
        peas_per_cluster=peas,
        clusters_per_die=per_die,
        link_contention=contention,
        baseline_mappings=tuple(mappings),
        meta={k: doc[k] for k in ("description", "sources") if k in doc},
        **kw,
    )


def arch_file(path_or_name: str | Path) -> Path:
    """The file `load_arch` reads: a path, or a name (chip, chiplet, wafer) from the shipped
    configs. Also what a grid row's fingerprint hashes (`grid.fingerprint`)."""
    p = Path(path_or_name)
    if not p.exists():
        p = CONFIG_DIR / f"{path_or_name}.yaml"
        if not p.exists():
            names = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
            raise FileNotFoundError(f"unknown architecture {path_or_name!r} (shipped: {names})")
    return p


def load_arch(path_or_name: str | Path) -> Arch:
    """Load from a path, or by name (chip, chiplet, wafer) from the shipped configs."""
    p = arch_file(path_or_name)
    doc = read_document(p, "arch")
    try:
        return arch_from_dict(doc)
    except ValueError as e:  # the file named before each field's problem
        raise ValueError(f"arch {str(p)!r}:\n  {e}") from None


def list_arches() -> list[str]:
    return sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))

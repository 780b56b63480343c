"""The OWG file format (schema `octopus-owg/1`), loading and validation.

Validation collects every problem and names the node and the field, so a user can fix a
hand-written workflow in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from octopus.checks import number, read_document, shown
from octopus.owg.dist import Dist, DistError, parse_dist

SCHEMA = "octopus-owg/1"
NODE_TYPES = ("task", "branch", "fanout", "loop", "join")
DEFAULT_LEVELS = {"low": 0.25, "medium": 0.6, "high": 1.0}

# Limits on sizes that cost time and memory in proportion to their value. An instance is
# unrolled into one row per invocation when it is admitted (and 400 instances are unrolled
# to profile a workflow before a run), so a fanout count of 1e9 hung `octopus run` while it
# built rows. The shipped suite unrolls to at most ~700 invocations per instance.
MAX_INSTANCE_INVOCATIONS = 10_000  # tasks (layer groups included) and decisions per instance
# A TB larger than its PEA group's memory is compiled into chained layer groups (see
# `sample.split_stages`), one invocation each: 1e10 config bytes on 0.5 MiB PEAs made
# 19,074 of them and `octopus run` crawled for minutes. The suite's models need at most 6.
MAX_LAYER_GROUPS = 1024
MAX_INSTANCES = 1_000_000  # instances in one run (each keeps its rows until the run ends)

# The fields each block type reads ("description" is free text on any block): a field not
# listed here is a typo (``out_byte`` left ``out_bytes`` at 0) and is refused by name.
_COMMON_KEYS = frozenset(("id", "type", "next", "description"))
NODE_KEYS: dict[str, frozenset[str]] = {
    "task": _COMMON_KEYS
    | {"kind", "footprint", "work", "config_bytes", "in_bytes", "out_bytes", "join"},
    "branch": _COMMON_KEYS | {"probs"},
    "fanout": _COMMON_KEYS | {"count", "body", "join", "max_count"},
    "join": _COMMON_KEYS,
    "loop": _COMMON_KEYS | {"body", "exit", "max_trips", "trips", "continue_prob"},
}


class WorkflowError(ValueError):
    """Invalid workflow; `.problems` lists one message per problem (node and field named),
    and `.source` the file they are in, where the workflow came from one."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = "" if source is None else f" {source!r}"
        super().__init__(f"invalid workflow{where}:\n  " + "\n  ".join(problems))


@dataclass
class TaskBlock:
    """A task block (TB): one AI or general computation, run on `footprint` PEAs."""

    id: str
    kind: str
    footprint: int
    work: Dist  # Mop per invocation
    config_bytes: int
    in_bytes: int
    out_bytes: int
    next: list[str] = field(default_factory=list)
    join: str | None = None  # required when `next` forks to several successors
    stage: int = 0  # set by split_stages: index of this layer group in its model
    stages: int = 1  # number of layer groups the model was compiled into


@dataclass
class ControlBlock:
    """A control block (CB): branch, fanout, loop or join; decided on the control plane."""

    id: str
    type: str
    next: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # branch
    count: Dist | None = None  # fanout
    max_count: int | None = None  # fanout (optional cap)
    body: str | None = None  # fanout, loop
    join: str | None = None  # fanout
    exit: str | None = None  # loop
    trips: Dist | None = None  # loop
    continue_prob: float | None = None  # loop
    max_trips: int | None = None  # loop


@dataclass
class Workflow:
    """A validated workflow; `tasks` fixes the TB index used everywhere in the simulator."""

    name: str
    entry: str
    nodes: dict[str, TaskBlock | ControlBlock]
    levels: dict[str, float]
    arrival: dict
    meta: dict

    @property
    def tasks(self) -> list[str]:
        return [n for n, b in self.nodes.items() if isinstance(b, TaskBlock)]


def _num(d: dict, key: str, where: str, probs: list[str], *, integer=False, default=None):
    """Field `key` of node mapping `d`, checked by `checks.number` (None if wrong)."""
    return number(d.get(key, default), f"{where}: field '{key}'", probs, integer=integer)


def do_while_mean_trips(p: float, max_trips: int) -> float:
    """Mean trip count of a do-while loop: one trip, then another with probability `p`, up
    to `max_trips`; the sum of p**t for t < max_trips, in closed form, so that a large
    bound (a `max_trips` of 1e9 that means "unbounded") costs no time."""
    if p >= 1.0:
        return float(max_trips)
    return (1.0 - p**max_trips) / (1.0 - p)


_SMALLER = {
    "count": "a smaller count or a max_count",
    "trips": "fewer trips or a smaller max_trips",
    "continue_prob": "a smaller continue_prob or max_trips",
}


def _check_expansion(mean: float, cap: int | None, where: str, key: str, probs: list[str]) -> None:
    """A fanout count or loop trip count whose mean (capped by `max_count`/`max_trips`)
    alone unrolls an instance past `MAX_INSTANCE_INVOCATIONS` is refused at load time;
    a draw in the tail is refused when it is sampled (`sample.CompiledWorkflow.sample`)."""
    if cap is not None:
        mean = min(mean, cap)
    if mean > MAX_INSTANCE_INVOCATIONS:
        probs.append(
            f"{where}: field '{key}': a mean of {mean:g} expands to more than "
            f"{MAX_INSTANCE_INVOCATIONS} invocations per instance (MAX_INSTANCE_INVOCATIONS); "
            f"give {_SMALLER[key]}"
        )


def _ref(v, where: str, key: str, probs: list[str]) -> str | None:
    """A reference to one node: its id. An integer counts as its string, as in `id`; any
    other type (a list, a mapping) is a problem, since it cannot name a node."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        probs.append(f"{where}: field '{key}': expected a node id, got {v!r}")
        return None
    return str(v)


def _refs(v, where: str, probs: list[str]) -> list[str]:
    """`next`: one node id or a list of them."""
    if v is None:
        return []
    if not isinstance(v, list):
        v = [v]
    out = [_ref(x, where, "next", probs) for x in v]
    return [x for x in out if x is not None]


def _dist(d: dict, key: str, where: str, probs: list[str]) -> Dist | None:
    if key not in d:
        probs.append(f"{where}: field '{key}': missing")
        return None
    try:
        return parse_dist(d[key], f"{where}: field '{key}'")
    except DistError as e:
        probs.append(str(e))
        return None


def parse_workflow(doc: dict) -> Workflow:
    """Build and validate a Workflow from a parsed YAML/JSON document."""
    probs: list[str] = []
    if not isinstance(doc, dict):
        raise WorkflowError(["document: expected a mapping"])
    if doc.get("schema") != SCHEMA:
        probs.append(f"document: field 'schema': expected {SCHEMA!r}, got {doc.get('schema')!r}")
    raw = doc.get("nodes")
    if not isinstance(raw, list) or not raw:
        raise WorkflowError(probs + ["document: field 'nodes': expected a non-empty list"])
    nodes: dict[str, TaskBlock | ControlBlock] = {}
    for i, nd in enumerate(raw):
        if not isinstance(nd, dict) or nd.get("id") is None:
            probs.append(f"nodes[{i}]: field 'id': missing")
            continue
        nid = _ref(nd["id"], f"nodes[{i}]", "id", probs)  # `id: [x]` was taken as "['x']"
        if nid is None:
            continue
        where = f"node '{nid}'"
        if nid in nodes:
            probs.append(f"{where}: field 'id': duplicate")
            continue
        typ = nd.get("type")
        if typ not in NODE_TYPES:
            probs.append(f"{where}: field 'type': unknown {typ!r} (one of {', '.join(NODE_TYPES)})")
            continue
        for key in sorted(set(nd) - NODE_KEYS[typ], key=str):
            known = ", ".join(sorted(NODE_KEYS[typ]))
            probs.append(f"{where}: field {key!r}: unknown for a {typ} block (known: {known})")
        nxt = _refs(nd.get("next"), where, probs)
        if typ == "task":
            kind = nd.get("kind", "ai")
            if kind not in ("ai", "general"):
                probs.append(f"{where}: field 'kind': expected ai or general, got {kind!r}")
            fp = _num(nd, "footprint", where, probs, integer=True, default=1)
            if fp is not None and fp < 1:
                probs.append(f"{where}: field 'footprint': must be >= 1")
            nodes[nid] = TaskBlock(
                nid,
                kind,
                fp or 1,
                _dist(nd, "work", where, probs),
                _num(nd, "config_bytes", where, probs, integer=True, default=0) or 0,
                _num(nd, "in_bytes", where, probs, integer=True, default=0) or 0,
                _num(nd, "out_bytes", where, probs, integer=True, default=0) or 0,
                list(nxt),
                _ref(nd.get("join"), where, "join", probs),
            )
            continue
        cb = ControlBlock(nid, typ, list(nxt))
        if typ == "branch":
            p = nd.get("probs")
            if not isinstance(p, list) or len(p) != len(nxt) or not nxt:
                probs.append(f"{where}: field 'probs': need one probability per successor")
            elif any(
                isinstance(x, bool)
                or not isinstance(x, (int, float))
                or not math.isfinite(x)
                or x < 0
                for x in p
            ):
                probs.append(f"{where}: field 'probs': must be finite non-negative numbers")
            elif abs(sum(p) - 1.0) > 1e-6:
                probs.append(f"{where}: field 'probs': sum to {sum(p):g}, not 1")
            else:
                cb.probs = [float(x) for x in p]
        elif typ == "fanout":
            cb.count = _dist(nd, "count", where, probs)
            cb.body = _ref(nd.get("body"), where, "body", probs)
            cb.join = _ref(nd.get("join"), where, "join", probs)
            if "max_count" in nd:
                cb.max_count = _num(nd, "max_count", where, probs, integer=True)
            if cb.count is not None:
                _check_expansion(cb.count.mean(), cb.max_count, where, "count", probs)
            for k in ("body", "join"):
                if nd.get(k) is None:
                    probs.append(f"{where}: field '{k}': missing")
        elif typ == "loop":
            cb.body = _ref(nd.get("body"), where, "body", probs)
            cb.exit = _ref(nd.get("exit"), where, "exit", probs)
            for k in ("body", "exit"):
                if nd.get(k) is None:
                    probs.append(f"{where}: field '{k}': missing")
            if "max_trips" not in nd:
                probs.append(f"{where}: field 'max_trips': a loop needs a bound")
            else:
                mt = _num(nd, "max_trips", where, probs, integer=True)
                if mt is not None and mt < 1:
                    probs.append(f"{where}: field 'max_trips': must be >= 1")
                cb.max_trips = mt
            if "trips" in nd and "continue_prob" in nd:
                probs.append(
                    f"{where}: field 'continue_prob': give trips or continue_prob, not both"
                )
            if "trips" in nd:
                cb.trips = _dist(nd, "trips", where, probs)
                if cb.trips is not None:
                    _check_expansion(cb.trips.mean(), cb.max_trips, where, "trips", probs)
            elif "continue_prob" in nd:
                cp = _num(nd, "continue_prob", where, probs)
                if cp is not None and cp > 1:
                    probs.append(f"{where}: field 'continue_prob': must be <= 1")
                    cp = None
                cb.continue_prob = cp
                if cp is not None and cb.max_trips:
                    mean = do_while_mean_trips(cp, cb.max_trips)
                    _check_expansion(mean, None, where, "continue_prob", probs)
            else:
                probs.append(f"{where}: field 'trips': need trips or continue_prob")
        nodes[nid] = cb
    if nodes and not any(isinstance(b, TaskBlock) for b in nodes.values()):
        probs.append("document: field 'nodes': no task block (nothing to run)")
    entry = _ref(doc.get("entry"), "document", "entry", probs)
    _check_refs(nodes, entry, probs)
    if not probs:
        _check_cycles(nodes, probs)
    levels = _levels(doc.get("dynamicity"), probs)
    _check_arrival(doc.get("arrival"), probs)
    if probs:
        raise WorkflowError(probs)
    meta = {k: v for k, v in doc.items() if k not in ("nodes", "dynamicity", "arrival")}
    return Workflow(
        str(doc.get("name", "workflow")), entry, nodes, levels, doc.get("arrival") or {}, meta
    )


def _levels(spec, probs: list[str]) -> dict[str, float]:
    """Dynamicity levels: the defaults updated by the file's map level -> spread, each in
    [0, 1] (a spread scales dispersion toward the mean: 1 is the file as written)."""
    levels = dict(DEFAULT_LEVELS)
    if spec is None:
        return levels
    if not isinstance(spec, dict):
        probs.append("document: field 'dynamicity': expected a mapping level -> spread")
        return levels
    for name, v in spec.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
        if not ok:  # NaN fails the range test too
            probs.append(
                f"document: field 'dynamicity': level {name!r}: expected a spread in [0, 1], "
                f"got {shown(v)}"
            )
            continue
        levels[str(name)] = float(v)
    return levels


ARRIVAL_PROCESSES = ("closed", "poisson", "batch")
ARRIVAL_SIZES = ("instances_per_cluster", "concurrency_per_cluster", "rate_per_cluster_per_ms")
# The sizes each process reads (`owg.arrival`): another one is a typo, or meant for another
# process, and was ignored (`concurency_per_cluster: 8` ran the default window of 2).
ARRIVAL_KEYS = {
    "closed": ("instances_per_cluster", "concurrency_per_cluster"),
    "poisson": ("instances_per_cluster", "rate_per_cluster_per_ms"),
    "batch": ("instances_per_cluster",),
}


def _check_arrival(spec, probs: list[str]) -> None:
    """The arrival process (see `owg.arrival`), checked at load time: a zero rate divided by
    zero at run time, and a negative one made arrival times run backwards."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        probs.append("document: field 'arrival': expected a mapping")
        return
    proc = spec.get("process", "closed")
    if proc not in ARRIVAL_PROCESSES:
        probs.append(
            f"document: field 'arrival': field 'process': unknown {proc!r} "
            f"({' | '.join(ARRIVAL_PROCESSES)})"
        )
    else:
        for key in sorted(set(spec) - {"process", *ARRIVAL_KEYS[proc]}, key=str):
            probs.append(
                f"document: field 'arrival': field {key!r}: unknown for process {proc!r} "
                f"(known: process, {', '.join(ARRIVAL_KEYS[proc])})"
            )
    for key in ARRIVAL_SIZES:
        if key not in spec:
            continue
        v = spec[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v <= 0:
            probs.append(
                f"document: field 'arrival': field {key!r}: expected a positive number, got {shown(v)}"
            )
        elif key == "instances_per_cluster" and v > MAX_INSTANCES:
            probs.append(
                f"document: field 'arrival': field {key!r}: {v:g} is more than {MAX_INSTANCES} "
                "instances per run (MAX_INSTANCES)"
            )


def _check_refs(nodes: dict, entry, probs: list[str]) -> None:
    if entry not in nodes:
        probs.append(f"document: field 'entry': unknown node {entry!r}")
    for nid, b in nodes.items():
        where = f"node '{nid}'"
        for s in b.next:
            if s not in nodes:
                probs.append(f"{where}: field 'next': unknown successor {s!r}")
        for k in ("body", "exit", "join"):
            ref = getattr(b, k, None)
            if ref is not None and ref not in nodes:
                probs.append(f"{where}: field '{k}': unknown node {ref!r}")
        if isinstance(b, TaskBlock) and len(b.next) > 1:
            if b.join is None:
                probs.append(
                    f"{where}: field 'join': a task forking to several successors needs one"
                )
            elif b.join in nodes and nodes[b.join].type != "join":
                probs.append(f"{where}: field 'join': {b.join!r} is not a join block")
        if isinstance(b, ControlBlock):
            if (
                b.type == "fanout"
                and b.join in nodes
                and getattr(nodes[b.join], "type", "") != "join"
            ):
                probs.append(f"{where}: field 'join': {b.join!r} is not a join block")
            if b.type in ("fanout", "loop") and b.next:
                probs.append(f"{where}: field 'next': not used by {b.type}; use body/join/exit")
            if b.type == "join" and len(b.next) > 1:
                probs.append(f"{where}: field 'next': a join continues to at most one node")


def _edges(b) -> list[str]:
    out = list(b.next)
    if isinstance(b, ControlBlock):
        out += [x for x in (b.body, b.exit) if x]
    return out


def _check_cycles(nodes: dict, probs: list[str]) -> None:
    """Every cycle must pass through a loop block by its body edge, which bounds it: the
    body path returns to the loop, which counts the trips. A cycle back into a loop from its
    exit path (or an exit to the loop itself) is unbounded, since unrolling an instance
    would re-enter the loop forever; so the graph without the loop-to-body edges must be
    acyclic. The depth-first search keeps its own stack: a recursive one raised
    RecursionError on a chain of about a thousand tasks."""
    color: dict[str, int] = {}  # 1: on the current path, 2: done

    def field_of(b, s: str) -> str:
        if s in b.next:
            return "next"
        return "exit" if getattr(b, "exit", None) == s else "body"

    def successors(n: str) -> list[str]:
        b = nodes[n]
        return [s for s in _edges(b) if not (b.type == "loop" and s == b.body)]

    for root in nodes:
        if root in color:
            continue
        color[root] = 1
        path = [root]
        todo = [iter(successors(root))]  # per node on the path, its successors left
        while todo:
            n = path[-1]
            s = next(todo[-1], None)
            if s is None:
                color[n] = 2
                path.pop()
                todo.pop()
            elif color.get(s) == 1:
                cyc = path[path.index(s) :] + [s]
                probs.append(
                    f"node '{n}': field '{field_of(nodes[n], s)}': cycle {' -> '.join(cyc)} "
                    "is not governed by a loop block"
                )
                return
            elif s not in color:
                color[s] = 1
                path.append(s)
                todo.append(iter(successors(s)))


TaskBlock.type = "task"  # uniform `.type` for both node kinds


def workflow_file(path_or_name: str | Path) -> Path:
    """The file `load_workflow` reads: a path, or a name from the shipped suite. Also what
    a grid row's fingerprint hashes (`grid.fingerprint`)."""
    p = Path(path_or_name)
    if not p.exists():
        from octopus.workloads import workload_path

        p = workload_path(str(path_or_name))
    return p


def load_workflow(path_or_name: str | Path) -> Workflow:
    """Load a workflow from a path, or by name from the shipped suite (`octopus/workloads`)."""
    p = workflow_file(path_or_name)
    doc = read_document(p, "workflow")
    try:
        return parse_workflow(doc)
    except WorkflowError as e:  # the file named beside each node and field
        raise WorkflowError(e.problems, source=str(p)) from None

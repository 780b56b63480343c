"""Named state tables: invocations, instances and PEAs, one flat list per field.

Columns rather than per-invocation objects: the core touches a few fields of many rows per
event, and list indexing is the cheapest access Python has. Row k of `Invocations` is one
invocation of an OWG node; row p of `PeaState` is PEA p of the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Invocations:
    """One row per invocation of a workflow node (task block or control block)."""

    node: list[int] = field(default_factory=list)  # OWG node; < n_tasks: a task block (TB)
    dur: list[float] = field(default_factory=list)  # compute time on its PEAs
    preds: list[list[int]] = field(default_factory=list)
    succ: list[list[int]] = field(default_factory=list)
    npred: list[int] = field(default_factory=list)  # predecessors not finished yet
    inst: list[int] = field(default_factory=list)  # instance it belongs to
    loc: list[int] = field(default_factory=list)  # PEA holding its output (-1: none yet)
    out_bytes: list[int] = field(default_factory=list)
    t_ready: list[float] = field(default_factory=list)
    t_start: list[float] = field(default_factory=list)  # compute start (after inputs, config)
    t_end: list[float] = field(default_factory=list)
    peas: list[tuple] = field(default_factory=list)  # PEAs it ran on
    n_starts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.node)

    def add_rows(self, m: int, inst: int) -> None:
        """Extend the per-run columns for m new invocations of instance `inst` (the caller
        has appended node, dur, preds, succ, npred and out_bytes)."""
        self.inst.extend([inst] * m)
        self.loc.extend([-1] * m)
        self.t_ready.extend([0.0] * m)
        self.t_start.extend([-1.0] * m)
        self.t_end.extend([-1.0] * m)
        self.peas.extend([()] * m)
        self.n_starts.extend([0] * m)


@dataclass(slots=True)
class Instances:
    """One row per admitted workflow instance."""

    home: list[int] = field(default_factory=list)  # home cluster
    slot: list[int] = field(default_factory=list)  # closed-loop slot it occupies
    left: list[int] = field(default_factory=list)  # invocations not finished yet
    arrive: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)

    def add(self, home: int, slot: int, m: int, t: float) -> None:
        self.home.append(home)
        self.slot.append(slot)
        self.left.append(m)
        self.arrive.append(t)
        self.finish.append(-1.0)


@dataclass(slots=True)
class PeaState:
    """One row per PEA: what it is configured for and when it is next free."""

    config: list[int]  # TB whose configuration it holds (-1: none)
    avail_at: list[float]  # end of its last reservation (run or configuration load)
    idle_since: list[float]  # start of the interval not yet accounted
    running: list[bool]

    @classmethod
    def empty(cls, n: int) -> PeaState:
        return cls([-1] * n, [0.0] * n, [0.0] * n, [False] * n)

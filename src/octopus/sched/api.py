"""The scheduler interface: the events a scheduler receives, and what it may read and do.

A scheduler is any object with

- `attach(api)`: called once before the run with a `SchedulerAPI`;
- `on_ready(k, t)`: task invocation k became ready at time t (all inputs produced);
- `on_free(peas, t)`: these PEAs finished their work (or their output buffer drained);

and, optionally, `on_admit(instance, t)` (a workflow instance was admitted),
`on_done(k, t)` (task invocation k finished computing), `on_decision(k, t)` (control block
k decided; its successors are now known), `on_tick(t)` with `tick_us` (called every
`tick_us`), and `quiescent()`: True when the last `on_tick` changed nothing of the
scheduler's state, so that further ticks with nothing else happening would change nothing
either (the core checks that the tick started, scheduled and configured nothing); the core
then skips the ticks up to the next event (they still count as events). Without it every
tick is called; a subclass that redefines `on_tick` below the class that defines
`quiescent` is called every tick too. Class attributes: `name` (shown in reports),
`control_plane` (True: control blocks are decided by CBUs on the control plane, as in
Octopus; False: on the data plane, as in the baseline), `tick_us` (None: no ticks).

It acts only through the API: `start` an invocation on free PEAs, `preconfigure` an idle
PEA, `configure_at_compile_time` (free, before the run), `call_at` (a delayed action).
Queues are the scheduler's own: moving queued work between clusters is a change of its
own queues, and costs the data transfer only when the moved invocation starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octopus.sim.engine import Simulator

REQUIRED = ("attach", "on_ready", "on_free")
OPTIONAL = ("on_admit", "on_done", "on_decision", "on_tick", "quiescent")


class Scheduler:
    """Base class for schedulers (subclassing it is optional: the hooks are the interface)."""

    name = "base"
    control_plane = False
    tick_us: float | None = None

    def attach(self, api: SchedulerAPI) -> None:
        self.api = api

    def on_ready(self, k: int, t: float) -> None:
        raise NotImplementedError

    def on_free(self, peas: Sequence[int], t: float) -> None:
        raise NotImplementedError

    def on_tick(self, t: float) -> None:
        pass


def missing_hooks(obj) -> list[str]:
    """Names of the interface that `obj` (a scheduler class or instance) lacks."""
    cls = obj if isinstance(obj, type) else type(obj)
    # a subclass of Scheduler that does not define on_ready/on_free inherits stubs that
    # only raise: it lacks them as much as a class without the names
    out = [
        h
        for h in REQUIRED
        if not callable(getattr(obj, h, None))
        or (h != "attach" and getattr(cls, h, None) is getattr(Scheduler, h))
    ]
    if getattr(obj, "tick_us", None) and not callable(getattr(obj, "on_tick", None)):
        out.append("on_tick (it sets tick_us)")
    return out


def check_scheduler(obj) -> None:
    missing = missing_hooks(obj)
    if missing:
        what = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise TypeError(
            f"scheduler {what} lacks {', '.join(missing)} "
            f"(the interface: {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)}; "
            "see octopus.sched.api)"
        )


class ReadOnlyList(Sequence):
    """A live, read-only view of a list (strict mode: a scheduler that writes fails)."""

    __slots__ = ("_x",)

    def __init__(self, x: list):
        self._x = x

    def __getitem__(self, i):
        return self._x[i]

    def __len__(self) -> int:
        return len(self._x)

    def __iter__(self):
        return iter(self._x)


class SchedulerAPI:
    """What a scheduler sees of the simulator. The sequences are live views of the state
    (they change as the run goes on) and are read-only: in strict mode (used by the
    invariant tests) they are wrapped so that writing raises; otherwise they are the lists
    themselves, for speed, and writing them is a bug.

    Per invocation k: `node[k]` (its TB when < n_tasks, else a control block), `inst[k]`,
    `preds[k]`, `succ[k]`, `loc[k]` (the PEA holding its output, -1: none yet). Per TB: `footprint`, `rc_us` (reconfiguration), `mean_dur`
    (expected duration), `ewma` (observed duration), `load` (PEA-us per instance). Per PEA:
    `config` (TB loaded, -1 none), `avail_at`, `running`, `is_blocked` (back-pressure). Per
    cluster: `cluster_running` (its PEAs that run). Per (cluster c, TB tb) at
    c * n_tasks + tb: `blocked_count`. Per instance: `instance_home`.
    `arch`, `workflow` and `profile` are the shared objects themselves, read-only by
    contract even in strict mode (not wrapped).
    """

    def __init__(self, sim: Simulator, strict: bool = False):
        wrap: Callable = ReadOnlyList if strict else (lambda x: x)
        self.arch = sim.arch
        self.workflow = sim.cw
        self.profile = sim.profile
        self.n_tasks = sim.n_tasks
        self.buffer_slots = sim.slots
        self.footprint = wrap(sim.cw.footprint)
        self.rc_us = wrap(sim.physics.rc_us)
        self.mean_dur = wrap(sim.mean_dur)
        self.load = wrap(sim.load)
        self.ewma = wrap(sim.ewma)
        inv = sim.inv
        self.node, self.inst = wrap(inv.node), wrap(inv.inst)
        self.preds, self.succ = wrap(inv.preds), wrap(inv.succ)
        self.loc = wrap(inv.loc)
        self.instance_home = wrap(sim.instances.home)
        self.config = wrap(sim.pea.config)
        self.avail_at = wrap(sim.pea.avail_at)
        self.running = wrap(sim.pea.running)
        self.cluster_running = wrap(sim.cluster_running)
        self.is_blocked = wrap(sim.buffers.is_blocked)
        self.blocked_count = wrap(sim.buffers.blocked_count)
        self._buffers, self._preds, self._sim = sim.buffers, inv.preds, sim
        # actions (strict mode: each call checked first, so a scheduler that misuses them
        # fails at the call, named, instead of corrupting the run's time accounting)
        self.start = self._checked_start if strict else sim.start
        self.preconfigure = self._checked_preconfigure if strict else sim.preconfigure
        self.configure_at_compile_time = sim.configure_at_compile_time
        self.call_at = sim.call_at
        self.data_cluster = sim.data_cluster
        self.input_us = sim.input_us
        self.input_bytes = sim.input_bytes

    def _refuse(self, call: str, why: str) -> None:
        name = getattr(self._sim.sched, "name", type(self._sim.sched).__name__)
        raise RuntimeError(f"scheduler {name!r}: {call}: {why} (octopus.sched.api, strict mode)")

    def _checked_start(self, k: int, peas: Sequence[int], t: float) -> None:
        """`start`, after checking what the engine assumes of it: a task invocation not yet
        started, now, on its footprint's number of distinct free PEAs (of any clusters: the
        baselines' `regions` mapping spans them)."""
        sim, call = self._sim, f"start({k}, {list(peas)}, {t})"
        inv, pea, cl = sim.inv, sim.pea, sim.arch.pea_cluster
        if not 0 <= k < len(inv.node) or inv.node[k] >= sim.n_tasks:
            self._refuse(call, "no task invocation of that number")
        if inv.n_starts[k]:
            self._refuse(call, "the invocation was started before")
        if t < sim.now:
            self._refuse(call, f"a start in the past (now is {sim.now})")
        need = sim.cw.footprint[inv.node[k]]
        if len(set(peas)) != len(peas) or len(peas) != need:
            self._refuse(call, f"its footprint takes {need} distinct PEAs")
        for p in peas:
            if not 0 <= p < len(cl):
                self._refuse(call, f"no PEA {p}")
            if pea.running[p] or sim.buffers.is_blocked[p]:
                self._refuse(call, f"PEA {p} is not free (running or blocked)")
        sim.start(k, peas, t)

    def _checked_preconfigure(self, p: int, tb: int, t: float) -> None:
        """`preconfigure`, after checking that p is a PEA, tb a task block and t not past."""
        sim, call = self._sim, f"preconfigure({p}, {tb}, {t})"
        if not 0 <= p < len(sim.arch.pea_cluster):
            self._refuse(call, f"no PEA {p}")
        if not 0 <= tb < sim.n_tasks:
            self._refuse(call, f"no task block {tb}")
        if t < sim.now:
            self._refuse(call, f"a configuration in the past (now is {sim.now})")
        sim.preconfigure(p, tb, t)

    @property
    def now(self) -> float:
        return self._sim.now

    @property
    def n_queued(self) -> int:
        """Ready task invocations handed to the scheduler and not started yet."""
        return self._sim.time.queued

    def free_peas(self, c: int) -> list[int]:
        """PEAs of cluster c that neither run nor are blocked by back-pressure (one may still
        be loading a pre-configuration: see `avail_at`). O(PEAs of the cluster)."""
        run, blk = self.running, self.is_blocked
        return [p for p in self.arch.cluster_peas[c] if not run[p] and not blk[p]]

    def warm_peas(self, c: int, tb: int) -> list[int]:
        """Free PEAs of cluster c that hold TB tb's configuration."""
        cfg = self.config
        return [p for p in self.free_peas(c) if cfg[p] == tb]

    def blocked_peas(self, c: int) -> list[int]:
        """PEAs of cluster c blocked by back-pressure (their output buffer is full)."""
        blk = self.is_blocked
        return [p for p in self.arch.cluster_peas[c] if blk[p]]

    def home_cluster(self, k: int) -> int:
        """Home cluster of k's instance."""
        return self.instance_home[self.inst[k]]

    def input_held_by(self, k: int) -> int:
        """The PEA whose output buffer holds k's point-to-point input (-1: none)."""
        return self.inputs_held_by((k,))[0]

    def inputs_held_by(self, ks: Sequence[int]) -> list[int]:
        """`input_held_by` of each invocation of ks, in one call (for scans of a queue)."""
        if not self.buffer_slots:
            return [-1] * len(ks)
        return self._buffers.inputs_held_by(self._preds, ks)

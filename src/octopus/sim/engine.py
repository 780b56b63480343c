"""The discrete-event core: admission, readiness, starts and completions, and dispatch.

The core owns the state tables (`state`), the physics (`physics`), the output buffers
(`buffers`) and the time accounting (`accounting`). A scheduler sees none of them directly:
it receives events through the hooks of `octopus.sched.api.Scheduler` and acts and reads
through a `SchedulerAPI` (start an invocation, load a configuration, schedule a callback;
free, warm and blocked PEAs, data location, EWMA durations). The core does all the
accounting, so every scheduler is measured the same way (see `accounting`).
"""

from __future__ import annotations

import gc
from heapq import heappop, heappush

from octopus.arch.config import Arch
from octopus.checks import check_seed
from octopus.owg.arrival import Arrivals, make_arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import TaskBlock, Workflow
from octopus.sim.accounting import PeaTime
from octopus.sim.buffers import OutputBuffers
from octopus.sim.events import (
    ARRIVAL,
    CALLBACK,
    DECISION,
    TASK_DONE,
    TICK,
    UNBLOCK,
    EventHeap,
    tick_at_or_after,
)
from octopus.sim.physics import Physics
from octopus.sim.state import Instances, Invocations, PeaState

# Scheduler ticks in a row with no task or decision finishing, no instance arriving and
# none of them in flight, before the run is declared stalled (ready work that can never be
# placed). A scheduler that declares itself quiescent (`Scheduler.quiescent`) is declared
# stalled at once in that state: nothing can change any more.
STALL_TICKS = 100000


class SimulationStalled(RuntimeError):
    """A run that cannot finish: ready work the scheduler never places (the message names
    the nodes and the scheduler). The command line reports it as an error, not a traceback."""


def footprint_problems(wf: Workflow, arch: Arch) -> list[str]:
    """One message per task block whose footprint exceeds a cluster of `arch`: an invocation
    occupies PEAs of one cluster, so it would never start (layer groups share their
    model's footprint: named once)."""
    return [
        f"node '{n}': field 'footprint': {b.footprint} PEAs do not fit in a cluster of "
        f"{arch.peas_in_cluster} PEAs (arch {arch.name!r})"
        for n, b in wf.nodes.items()
        if isinstance(b, TaskBlock) and b.footprint > arch.peas_in_cluster and b.stage == 0
    ]


def quiescence_hook(sched):
    """The scheduler's `quiescent` method, or None when the core must not rely on it: when
    it lacks one, or when `on_tick` is defined below the class that defines `quiescent` (a
    subclass that changes what a tick does without saying when it does nothing)."""
    q = getattr(sched, "quiescent", None)
    if not callable(q):
        return None
    mro = type(sched).__mro__
    owner_tick = next((c for c in mro if "on_tick" in c.__dict__), None)
    owner_q = next((c for c in mro if "quiescent" in c.__dict__), None)
    if owner_tick is not None and (owner_q is None or not issubclass(owner_q, owner_tick)):
        return None
    return q


class Simulator:
    def __init__(
        self,
        cw: CompiledWorkflow,
        arch: Arch,
        scheduler,
        arrivals: Arrivals | None = None,
        seed: int = 0,
        record: bool = False,
        profile: dict | None = None,
        presampled: list | None = None,
        strict: bool = False,
    ):
        from octopus.sched.api import SchedulerAPI, check_scheduler

        check_scheduler(scheduler)
        check_seed(seed, "simulator")
        too_big = footprint_problems(cw.wf, arch)
        if too_big:  # an invocation occupies PEAs of one cluster: it would never start
            raise ValueError("\n  ".join(too_big))
        self.presampled = presampled
        self.cw, self.arch, self.sched, self.seed, self.record = cw, arch, scheduler, seed, record
        self.arr = arrivals or make_arrivals(cw.wf.arrival, arch.n_clusters, seed)
        self.n_tasks = cw.n_tasks
        tops = arch.throughput_tops
        self.profile = profile or cw.profile()
        calls = self.profile["calls"]
        # expected duration of one invocation per TB, and PEA-us per instance per TB
        self.mean_dur = [
            (w / c / (fp * tops)) if c else 0.0
            for w, c, fp in zip(self.profile["work"], calls, cw.footprint)
        ]
        self.load = [w / tops for w in self.profile["work"]]
        self.ewma = list(self.mean_dur)  # observed duration per TB (EWMA, weight 0.2)
        # an invocation of TB tb computes for its work / _dur_den[tb]
        self._dur_den = [f * tops for f in cw.footprint]
        control_plane = bool(getattr(scheduler, "control_plane", False))
        self.ctrl_us = arch.control_plane_us if control_plane else arch.data_plane_us
        # data-plane decisions (baseline): the PEA group that produced a control block's input
        # evaluates the decision and stays occupied for `data_plane_pea_us` of its latency
        self.dp_hold = 0.0 if control_plane else min(arch.data_plane_pea_us, self.ctrl_us)
        self.dp_pea_us = 0.0  # PEA-us spent holding PEAs for data-plane decisions
        n = arch.n_peas
        self.inv = Invocations()
        self.instances = Instances()
        self.pea = PeaState.empty(n)
        # PEAs running per cluster (the count of pea.running over the cluster's PEAs)
        self.cluster_running = [0] * arch.n_clusters
        self._pea_cluster = arch.pea_cluster
        self.time = PeaTime(n)
        self.physics = Physics(arch, cw.config_bytes, record)
        self.buffers = OutputBuffers(
            arch.buffer_slots, n, arch.n_clusters, self.n_tasks, arch.pea_cluster
        )
        self.slots = arch.buffer_slots
        self._n_readers = self.buffers.n_readers  # point-to-point readers per invocation
        self._holder = self.buffers.holder  # invocation whose slot holds one's data
        self.next_instance = 0
        self.finished = 0
        self.n_running = 0
        self.n_pending = 0  # control decisions and unblocks in flight
        self.events = EventHeap()
        self.n_events = 0  # events handled, the scheduler's ticks included
        self.ticks_skipped = 0  # of which ticks known to change nothing, not called
        self.now = 0.0
        self.makespan = 0.0
        self.started = False
        # hooks, looked up once
        self._on_ready, self._on_free = scheduler.on_ready, scheduler.on_free
        self._on_admit = getattr(scheduler, "on_admit", None)
        self._on_done = getattr(scheduler, "on_done", None)
        self._on_decision = getattr(scheduler, "on_decision", None)
        self.api = SchedulerAPI(self, strict)
        scheduler.attach(self.api)

    # ----------------------------------------------------------------- event loop
    def call_at(self, t: float, fn) -> None:
        """Run `fn(t)` at time t (a delayed scheduler action)."""
        self.events.push(t, CALLBACK, fn)

    def run(self) -> Simulator:
        self.started = True
        arr, ev = self.arr, self.events
        if arr.times is None:
            for k in range(arr.concurrency):
                self._admit(0.0, k)
        else:
            for t in arr.times:
                ev.push(t, ARRIVAL, None)
        tick = getattr(self.sched, "tick_us", None)
        if tick:
            ev.push(tick, TICK, None)
        # the run allocates many small acyclic lists (rows, predecessor and successor lists):
        # the cyclic garbage collector finds nothing in them, and its passes over the
        # growing tables cost time, so it pauses during the event loop (process-wide: the
        # sweep executors run one simulation at a time per process)
        gc_on = gc.isenabled()
        gc.disable()
        try:
            self._loop(tick)
        finally:
            if gc_on:
                gc.enable()
        if self.finished < self.arr.n:  # no event left: what is ready stays unplaced
            raise self._stall_error(self.now)
        self.time.close(self.makespan, self.pea, self.buffers.is_blocked)
        return self

    def _loop(self, tick: float | None) -> None:
        arr, ev = self.arr, self.events
        heap, pop = ev.heap, heappop
        decide, on_tick = self._decide, self.sched.on_tick
        quiescent = quiescence_hook(self.sched)
        buffers, phys = self.buffers, self.physics
        idle_ticks = 0
        n_inst = arr.n
        # open loop: the arrivals still in the heap. A buffer deadlock (blocked PEAs, nothing
        # running, nothing in flight) is spilled when every event left is an arrival: an
        # arrival brings new work, never a reader of the blocked data, so waiting for the
        # last one held the deadlocked instances still until then (the schedulers that do
        # not tick; a tick spills on its own, below)
        arrivals = 0 if arr.times is None else len(arr.times)
        count = 0
        # a task's completion (most events) is handled inline, with the tables it touches
        # bound once per run; the tables are extended in place, never replaced
        inv, acct, T = self.inv, self.time, self.n_tasks
        ipeas, inode, idur, isucc, npred, iinst, t_ready = (
            inv.peas,
            inv.node,
            inv.dur,
            inv.succ,
            inv.npred,
            inv.inst,
            inv.t_ready,
        )
        running, idle_since = self.pea.running, self.pea.idle_since
        crun, pc, ewma, left = (
            self.cluster_running,
            self._pea_cluster,
            self.ewma,
            self.instances.left,
        )
        slots, n_readers, hold = self.slots, self._n_readers, buffers.hold
        on_ready, on_done, on_free, ready = (
            self._on_ready,
            self._on_done,
            self._on_free,
            self._ready,
        )
        while heap:
            t, _, kind, x = pop(heap)
            self.now = t
            count += 1
            if kind == TASK_DONE:
                k = x  # the invocation whose compute ended
                idle_ticks = 0
                peas = ipeas[k]
                for p in peas:
                    running[p] = False
                    idle_since[p] = t
                    crun[pc[p]] -= 1
                if t > self.makespan:
                    self.makespan = t
                tb = inode[k]
                ewma[tb] += 0.2 * (idur[k] - ewma[tb])
                self.n_running -= 1
                if slots and n_readers[k] and hold(k, peas[0], tb):
                    peas = peas[1:]  # the lead PEA is blocked by back-pressure
            elif kind == DECISION:
                k = x  # the control block whose decision landed
                decide(t, k)  # the decision's own effects; its completion follows
                idle_ticks = 0
            else:
                if kind == ARRIVAL:
                    arrivals -= 1
                    self._admit(t, self.next_instance)
                elif kind == UNBLOCK:
                    self._unblock(t, x)
                elif kind == TICK:
                    if self.finished >= n_inst:
                        continue
                    seq, n_rc = ev.seq, phys.n_reconfig
                    on_tick(t)
                    if buffers.n_blocked and not self.n_running and not self.n_pending:
                        self._spill(t)
                    idle_ticks += 1
                    nxt = t + tick
                    if (not heap or heap[0][0] > nxt) and quiescent is not None:
                        # nothing else happens before the next tick: if this tick changed
                        # nothing (it started, scheduled and configured nothing, and the
                        # scheduler's own state is as before), neither would the ticks
                        # up to the next event, so the next tick is the grid point at or
                        # after that event (the skipped ticks still count as events)
                        if ev.seq == seq and phys.n_reconfig == n_rc and quiescent():
                            if not heap:  # nothing in flight: nothing can change any more
                                raise self._stall_error(t)
                            nxt, skipped = self._skip_ticks(nxt, tick)
                            count += skipped
                            idle_ticks += skipped
                            self.ticks_skipped += skipped
                    if idle_ticks > STALL_TICKS:
                        if not self._in_flight():
                            raise self._stall_error(t)
                        idle_ticks = 0  # a task, decision or arrival is still to come
                    ev.push(nxt, TICK, None)
                else:
                    x(t)
                if len(heap) == arrivals and buffers.n_blocked and self.finished < n_inst:
                    self._spill(t)
                continue
            # k completed (a task's compute or a control block's decision): its successors
            # whose inputs are all done become ready (_ready's task case inlined; a control
            # block goes through _ready), and its instance has one invocation less to go
            for s in isucc[k]:
                npred[s] -= 1
                if npred[s] == 0:
                    if inode[s] < T:
                        t_ready[s] = t
                        if acct.queued == 0:
                            acct.mark(t, True)
                        acct.queued += 1
                        on_ready(s, t)
                    else:
                        ready(t, s)
            idx = iinst[k]
            left[idx] -= 1
            if left[idx] == 0:
                self._instance_done(t, idx)
            if kind == TASK_DONE:
                if on_done is not None:
                    on_done(k, t)
                if peas:
                    on_free(peas, t)
            if len(heap) == arrivals and buffers.n_blocked and self.finished < n_inst:
                self._spill(t)
        self.n_events = count

    def _in_flight(self) -> bool:
        """Whether a task, a control decision or an arrival is still to come."""
        return any(e[2] in (TASK_DONE, DECISION, ARRIVAL) for e in self.events.heap)

    def _stall_error(self, t: float) -> SimulationStalled:
        """The error for a stall: ready work that is never started while nothing runs and
        no task, decision or arrival is to come, so that nothing can change any more."""
        inv, T = self.inv, self.n_tasks
        ready = [
            k
            for k, (nd, n, s) in enumerate(zip(inv.node, inv.npred, inv.n_starts))
            if nd < T and not n and not s
        ]
        nodes = sorted({self.cw.names[inv.node[k]] for k in ready})
        names = ", ".join(repr(x) for x in nodes)
        n = len(ready)
        what = (
            f"{n} ready task invocation{'s' * (n > 1)} (node{'s' * (len(nodes) > 1)} "
            f"{names}) {'are' if n > 1 else 'is'} never started"
            if ready
            else "no task is ready"
        )
        name = getattr(self.sched, "name", type(self.sched).__name__)
        return SimulationStalled(
            f"simulation stalled at t={t:g} us: {what}, nothing runs, and no task, decision "
            f"or arrival is to come; {self.arr.n - self.finished} instances never finish "
            f"(scheduler {name!r} places nothing more)"
        )

    def _skip_ticks(self, nxt: float, tick: float) -> tuple[float, int]:
        """The tick-grid point at or after the next event, from the next tick `nxt`, and
        the ticks before it. Raises a ValueError naming what that event ends when the
        ticks stop advancing the clock before it (t + tick rounds back to t)."""
        end = self.events.heap[0][0]
        try:
            return tick_at_or_after(nxt, tick, end)
        except OverflowError:
            pass
        end, _, kind, k = self.events.heap[0]
        name = getattr(self.sched, "name", type(self.sched).__name__)
        stop = (
            f"where scheduler ticks of {tick:g} us ({name!r}, 'tick_us') no longer advance "
            "the clock in double precision"
        )
        if kind == TASK_DONE:
            inv = self.inv
            wait, run = inv.t_start[k] - inv.t_ready[k], inv.t_end[k] - inv.t_start[k]
            why = (
                f"field 'work': it computes for {run:g} us"
                if run >= wait
                else f"it waits {wait:g} us for its configuration ('config_bytes') and inputs "
                "(the 'out_bytes' of its producers)"
            )
            raise ValueError(
                f"node '{self.cw.names[inv.node[k]]}': {why}, ending at t={end:g} us, {stop}"
            )
        if kind == DECISION:
            raise ValueError(
                f"node '{self.cw.names[self.inv.node[k]]}': its control decision lands at "
                f"t={end:g} us, {stop}: arch '{self.arch.name}': fields 'control.*'"
            )
        if kind == ARRIVAL:
            raise ValueError(
                f"workflow field 'arrival': the next instance arrives at t={end:g} us, {stop}"
            )
        raise ValueError(
            f"scheduler {name!r}: an action scheduled (call_at) for t={end:g} us, {stop}"
        )

    # ----------------------------------------------------------------- instances
    def _admit(self, t: float, slot: int) -> None:
        idx = self.next_instance
        self.next_instance += 1
        cw = self.cw
        if self.presampled is not None:
            inst = self.presampled[idx]
        else:
            inst = cw.sample(cw.instance_rng(self.seed, idx), idx, self.seed)
        inv = self.inv
        base = len(inv.node)
        T = self.n_tasks
        inode = inst.node
        m = len(inode)
        inv.node.extend(inode)
        den = self._dur_den
        inv.dur.extend([w / den[nd] if nd < T else 0.0 for nd, w in zip(inode, inst.work)])
        # the instance's predecessor lists are local to it: shift them to global rows, and
        # list each row's successors, in one pass (most rows have one predecessor: that case
        # without an inner loop). Rows come in a topological order, so a row's successor
        # list exists before any later row appends to it.
        preds, succ = inv.preds, inv.succ
        roots = []  # rows without predecessors: ready at admission, in row order
        k = base
        for ps in inst.preds:
            succ.append([])
            if len(ps) == 1:
                j = base + ps[0]
                preds.append([j])
                succ[j].append(k)
            elif ps:
                gp = [base + j for j in ps]
                preds.append(gp)
                for j in gp:
                    succ[j].append(k)
            else:
                preds.append([])
                roots.append(k)
            k += 1
        gpreds = preds[base:]
        inv.npred.extend(map(len, gpreds))
        inv.out_bytes.extend(map(cw.out_bytes.__getitem__, inode))
        inv.add_rows(m, idx)
        if self.slots:
            self.buffers.add_rows(m, base, gpreds)
        self.instances.add(slot % self.arch.n_clusters, slot, m, t)
        if self._on_admit is not None:
            self._on_admit(idx, t)
        for k in roots:
            self._ready(t, k)

    def _instance_done(self, t: float, idx: int) -> None:
        self.instances.finish[idx] = t
        self.finished += 1
        if self.arr.times is None and self.next_instance < self.arr.n:
            self._admit(t, self.instances.slot[idx])

    # ----------------------------------------------------------------- invocations
    def _ready(self, t: float, k: int) -> None:
        inv = self.inv
        inv.t_ready[k] = t
        if inv.node[k] < self.n_tasks:
            acct = self.time  # count it queued (runs once per task: inlined)
            if acct.queued == 0:
                acct.mark(t, True)
            acct.queued += 1
            self._on_ready(k, t)
        else:
            lat = self.ctrl_us
            if self.dp_hold:
                ps = inv.preds[k]
                if len(ps) == 1 and inv.node[ps[0]] < self.n_tasks:  # its producer paid it
                    lat -= self.dp_hold
            self.n_pending += 1
            self.events.push(t + lat, DECISION, k)

    def _decide(self, t: float, k: int) -> None:
        """Control block k's decision lands at t: it forwards its data and the scheduler
        hears of it (the event loop then completes k, as it completes a task)."""
        inv = self.inv
        # a control block forwards the data of its largest input
        best, bb = -1, -1
        outb = inv.out_bytes
        for j in inv.preds[k]:
            if outb[j] > bb:
                best, bb = j, outb[j]
        if best >= 0:
            inv.loc[k], outb[k] = inv.loc[best], bb
        self.n_pending -= 1
        if self.slots:
            ps = inv.preds[k]
            if len(ps) == 1:  # point-to-point: the decision forwards the data to its readers
                self._unblock_later(t, self.buffers.forward(k, ps[0]))
        inv.t_start[k] = inv.t_ready[k]
        inv.t_end[k] = t
        inv.n_starts[k] += 1
        if t > self.makespan:
            self.makespan = t
        if self._on_decision is not None:
            self._on_decision(k, t)

    # ----------------------------------------------------------------- scheduler actions
    def data_cluster(self, k: int) -> int:
        """Cluster holding the (first) input of invocation k; its home cluster if none."""
        loc, pc = self.inv.loc, self.arch.pea_cluster
        for j in self.inv.preds[k]:
            q = loc[j]
            if q >= 0:
                return pc[q]
        return self.instances.home[self.inv.inst[k]]

    def input_us(self, k: int, p: int, extra: float = 0.0) -> float:
        """Time to bring k's inputs to PEA p on an idle mesh (max over its predecessors),
        each as if `extra` bytes went ahead of it on the route."""
        route_us, loc, outb, best = self.physics.route_us, self.inv.loc, self.inv.out_bytes, 0.0
        for j in self.inv.preds[k]:
            q = loc[j]
            if q >= 0 and q != p:
                x = route_us(q, p, outb[j] + extra)
                if x > best:
                    best = x
        return best

    def input_bytes(self, k: int) -> float:
        """Bytes of k's inputs that sit on some PEA (what moving k will transfer)."""
        loc, outb, size = self.inv.loc, self.inv.out_bytes, 0.0
        for j in self.inv.preds[k]:
            if loc[j] >= 0:
                size += outb[j]
        return size

    def start(self, k: int, peas, t: float) -> None:
        """Begin invocation k on `peas` (all free) at time t: its inputs travel to the lead
        PEA, each PEA not warm for k's TB loads the configuration, and compute starts when
        the last of them is ready."""
        inv, pea, acct, phys = self.inv, self.pea, self.time, self.physics
        tb = inv.node[k]
        p0 = peas[0]
        xf = 0.0
        preds = inv.preds[k]
        if preds:
            loc, outb, transfer = inv.loc, inv.out_bytes, phys.send
            for j in preds:
                q = loc[j]
                if q >= 0 and q != p0:
                    x = transfer(q, p0, outb[j], t)
                    if x > xf:
                        xf = x
        # reading a point-to-point input frees its slot (no call when no slot holds it)
        if self.slots and len(preds) == 1 and self._holder[preds[0]] >= 0:
            q = self.buffers.read(preds[0])
            if q >= 0:
                self._unblock_later(t, q)
        exec_start = t + xf
        cfg, avail, idle_since = pea.config, pea.avail_at, pea.idle_since
        d = inv.dur[k]
        if self.dp_hold and self._decides_on_data_plane(k):
            d += self.dp_hold
            self.dp_pea_us += self.dp_hold * len(peas)
        if len(peas) == 1:  # the common case, without the per-PEA lists
            a = idle_since[p0]
            if t > a:  # acct.idle(p0, a, t), its common case inlined
                if a >= acct.last_mark:
                    if acct.last_on:
                        acct.starved[p0] += t - a
                    else:
                        acct.waiting[p0] += t - a
                else:
                    acct.idle(p0, a, t)
            av = avail[p0]
            r = av if av > t else t
            if cfg[p0] != tb:
                r = phys.reconfigure(p0, tb, r, acct.reconf)
                cfg[p0] = tb
            if r > exec_start:
                exec_start = r
            end = exec_start + d
            acct.xfer[p0] += exec_start - r
            acct.busy[p0] += d
            pea.running[p0] = True
            self.cluster_running[self._pea_cluster[p0]] += 1
            idle_since[p0] = avail[p0] = end
        else:
            readies = []
            for p in peas:
                a = idle_since[p]
                if t > a:
                    acct.idle(p, a, t)
                av = avail[p]
                r = av if av > t else t
                if cfg[p] != tb:
                    r = phys.reconfigure(p, tb, r, acct.reconf)
                    cfg[p] = tb
                readies.append(r)
                if r > exec_start:
                    exec_start = r
            end = exec_start + d
            xfer, busy, running = acct.xfer, acct.busy, pea.running
            crun, pc = self.cluster_running, self._pea_cluster
            for p, r in zip(peas, readies):
                xfer[p] += exec_start - r
                busy[p] += d
                running[p] = True
                crun[pc[p]] += 1
                idle_since[p] = avail[p] = end
        inv.peas[k] = peas
        inv.loc[k] = p0
        inv.t_start[k] = exec_start
        inv.t_end[k] = end
        inv.n_starts[k] += 1
        self.n_running += 1
        acct.queued -= 1  # no longer queued
        if acct.queued == 0:
            acct.mark(t, False)
        ev = self.events
        ev.seq += 1
        heappush(ev.heap, (end, ev.seq, TASK_DONE, k))

    def preconfigure(self, p: int, tb: int, t: float) -> None:
        """Load TB `tb`'s configuration into idle PEA p ahead of demand."""
        pea = self.pea
        if pea.config[p] == tb or pea.running[p]:
            return
        a = pea.idle_since[p]
        if t > a:
            self.time.idle(p, a, t)
        r = max(t, pea.avail_at[p])
        pea.config[p] = tb
        pea.avail_at[p] = pea.idle_since[p] = self.physics.reconfigure(p, tb, r, self.time.reconf)

    def configure_at_compile_time(self, p: int, tb: int) -> None:
        """Load `tb` into PEA p before the run (the compile-time mapping: free)."""
        if self.started:
            raise RuntimeError("configurations are free only before the run starts")
        self.pea.config[p] = tb

    # ----------------------------------------------------------------- back-pressure
    def _decides_on_data_plane(self, k: int) -> bool:
        """Whether task k feeds a control block directly (its only input): on the data plane
        k's PEAs evaluate that decision before they are released."""
        node, preds, T = self.inv.node, self.inv.preds, self.n_tasks
        return any(node[s] >= T and len(preds[s]) == 1 for s in self.inv.succ[k])

    def _unblock_later(self, t: float, q: int) -> None:
        if q >= 0:  # deferred: the scheduler may be mid-decision
            self.n_pending += 1
            self.events.push(t, UNBLOCK, q)

    def _unblock(self, t: float, p: int) -> None:
        self.n_pending -= 1
        self.time.blocked[p] += t - self.pea.idle_since[p]
        self.pea.idle_since[p] = t
        self._on_free((p,), t)

    def _spill(self, t: float) -> None:
        """Deadlock recovery: nothing runs, nothing is in flight (arrivals to come aside),
        and blocked PEAs hold data whose readers cannot be placed. The blocked buffers spill
        to memory and the PEAs are released."""
        for p in self.buffers.spill():
            self._unblock_later(t, p)


def simulate(cw: CompiledWorkflow, arch: Arch, scheduler, **kw) -> Simulator:
    return Simulator(cw, arch, scheduler, **kw).run()

"""The discrete-event core.

A heap of plain tuples (time, seq, kind, payload) drives everything; `seq` breaks ties in
FIFO order so runs are deterministic. Per-invocation and per-PEA state live in flat lists
(no per-event objects). Schedulers decide *where* and *when* work starts by calling
`start()` and `preconfigure()`; the core does the accounting, so every scheduler is measured
the same way:

  PEA time = busy + reconfiguring + transferring + blocked + starved + waiting_input (exactly)

- transferring: the PEA is reserved and waits for input data (or for partner PEAs);
- blocked: back-pressure: the PEA finished a task but every slot of its bounded output
  buffer holds a result that a consumer has not read yet, so it cannot take new work;
- starved: idle while some ready invocation is queued somewhere (work withheld from it);
- waiting_input: idle while nothing is ready anywhere (dependencies/arrivals limit).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right

from octopus.arch.config import Arch
from octopus.owg.arrival import Arrivals, make_arrivals
from octopus.owg.sample import CompiledWorkflow

DONE, CTRL, ARRIVE, TICK, CALL, UNBLOCK = 0, 1, 2, 3, 4, 5


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
    ):
        self.presampled = presampled
        self.cw, self.arch, self.sched, self.seed, self.record = cw, arch, scheduler, seed, record
        self.arr = arrivals or make_arrivals(cw.wf.arrival, arch.n_clusters, seed)
        self.T = cw.n_tasks
        tops = arch.throughput_tops
        self.profile = profile or cw.profile()
        calls = self.profile["calls"]
        self.mean_dur = [
            (w / c / (fp * tops)) if c else 0.0
            for w, c, fp in zip(self.profile["work"], calls, cw.footprint)
        ]
        self.load = [w / tops for w in self.profile["work"]]  # PEA-us per instance per TB
        self.ewma = list(self.mean_dur)
        self.rc_us = [arch.reconfig_us(b) for b in cw.config_bytes]
        self.ctrl_us = arch.control_plane_us if scheduler.control_plane else arch.data_plane_us
        # data-plane decisions (baseline): the PEA group that produced a control block's input
        # evaluates the decision and stays occupied for `data_plane_pea_us` of its latency
        self.dp_hold = 0.0 if scheduler.control_plane else min(arch.data_plane_pea_us, self.ctrl_us)
        self.dp_pea_us = 0.0  # PEA-us spent holding PEAs for data-plane decisions
        # invocations
        self.node: list[int] = []
        self.dur: list[float] = []
        self.npred: list[int] = []
        self.preds: list[list[int]] = []
        self.succ: list[list[int]] = []
        self.inst: list[int] = []
        self.loc: list[int] = []
        self.outb: list[int] = []
        self.t_ready: list[float] = []
        self.t_start: list[float] = []
        self.t_end: list[float] = []
        self.peas_of: list[tuple] = []
        self.n_starts: list[int] = []
        # instances
        self.inst_home: list[int] = []
        self.inst_left: list[int] = []
        self.inst_arrive: list[float] = []
        self.inst_finish: list[float] = []
        self.inst_slot: list[int] = []
        self.next_instance = 0
        self.finished = 0
        # PEAs
        n = arch.n_peas
        self.cfg = [-1] * n
        self.avail_at = [0.0] * n
        self.idle_since = [0.0] * n
        self.busy = [0.0] * n
        self.reconf = [0.0] * n
        self.xfer = [0.0] * n
        self.starved = [0.0] * n
        self.waiting = [0.0] * n
        self.running = [False] * n
        # bounded output buffers (back-pressure); slots == 0: unbounded, nothing tracked
        self.slots = arch.buffer_slots
        self.blocked = [0.0] * n  # time spent blocked by back-pressure
        self.is_blocked = [False] * n
        self.used = [0] * n  # occupied output slots
        self.refc: list[int] = []  # per invocation: readers that have not read its data yet
        self.holder: list[int] = []  # invocation whose buffer slot holds this one's data
        self.hold_pea: list[int] = []  # PEA whose slot holds this invocation's output
        self.n_blocked = 0
        # blocked PEAs per (cluster, TB they ran): schedulers read it to see which TBs are
        # choked by back-pressure (running more of them only blocks more PEAs)
        self.blk_ct = [0] * (arch.n_clusters * self.T)
        self.blk_at = [-1] * n  # index into blk_ct of a blocked PEA
        self.n_running = 0
        self.n_pending = 0  # control decisions and unblocks in flight
        self.spills = 0
        self.blocked_events = 0
        # link contention: time until which each directed mesh link is reserved
        self.contention = arch.link_contention
        self.link_free = [0.0] * (arch.grid_w * arch.grid_h * 4) if self.contention else []
        self.pea_cluster = arch.pea_cluster
        self.reconf_spans: list[tuple] = []
        self.n_reconfig = 0
        self.noc_bytes = 0.0
        self.noc_byte_hops = 0.0
        self.events = 0
        # "some ready work is queued" timeline, for the starved/waiting split
        self.qcount = 0
        self._bp_t = [0.0]
        self._bp_c = [0.0]
        self._bp_on = [False]
        self.heap: list[tuple] = []
        self.seq = 0
        self.now = 0.0
        self.makespan = 0.0
        scheduler.attach(self)

    # ----------------------------------------------------------------- event plumbing
    def push(self, t: float, kind: int, x) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, x))

    def call_at(self, t: float, fn) -> None:
        """Run `fn(t)` at time t (used for delayed scheduler decisions)."""
        self.push(t, CALL, fn)

    def run(self) -> Simulator:
        arr = self.arr
        if arr.times is None:
            for k in range(arr.concurrency):
                self._admit(0.0, k)
        else:
            for _k, t in enumerate(arr.times):
                self.push(t, ARRIVE, None)
        tick = getattr(self.sched, "tick_us", None)
        if tick:
            self.push(tick, TICK, None)
        heap, pop = self.heap, heapq.heappop
        done, ctrl = self._done, self._ctrl
        idle_ticks = 0
        n_inst = arr.n
        ev = 0
        while heap:
            t, _, kind, x = pop(heap)
            self.now = t
            ev += 1
            if kind == DONE:
                done(t, x)
                idle_ticks = 0
            elif kind == CTRL:
                ctrl(t, x)
                idle_ticks = 0
            elif kind == ARRIVE:
                self._admit(t, self.next_instance)
            elif kind == UNBLOCK:
                self._unblock(t, x)
            elif kind == TICK:
                if self.finished >= n_inst:
                    continue
                self.sched.tick(t)
                if (
                    self.n_blocked
                    and not self.n_running
                    and not self.n_pending
                    and self.finished < n_inst
                ):
                    self._spill(t)
                idle_ticks += 1
                if idle_ticks > 100000:
                    raise RuntimeError("simulation stalled: ready work can never be placed")
                self.push(t + tick, TICK, None)
            else:
                x(t)
            if not heap and self.n_blocked and self.finished < n_inst:
                self._spill(t)
        self.events = ev
        if self.finished < n_inst:
            raise RuntimeError(
                f"simulation stalled: {n_inst - self.finished} instances never finished "
                "(a task's footprint may exceed what the scheduler can give it)"
            )
        self._finalize()
        return self

    # ----------------------------------------------------------------- instances
    def _admit(self, t: float, slot: int) -> None:
        idx = self.next_instance
        self.next_instance += 1
        cw = self.cw
        if self.presampled is not None:
            inst = self.presampled[idx]
        else:
            inst = cw.sample(cw.instance_rng(self.seed, idx), idx, self.seed)
        base = len(self.node)
        T, fp, tops, outb = self.T, cw.footprint, self.arch.throughput_tops, cw.out_bytes
        node, succ = self.node, self.succ
        inode = inst.node
        m = len(inode)
        gpreds = [[base + j for j in ps] if ps else [] for ps in inst.preds]
        node.extend(inode)
        self.dur.extend([w / (fp[nd] * tops) if nd < T else 0.0 for nd, w in zip(inode, inst.work)])
        self.preds.extend(gpreds)
        self.npred.extend([len(g) for g in gpreds])
        succ.extend([[] for _ in range(m)])
        for k, gp in enumerate(gpreds, base):
            for j in gp:
                succ[j].append(k)
        self.outb.extend([outb[nd] for nd in inode])
        npred = self.npred
        m = len(node) - base
        self.inst.extend([idx] * m)
        self.loc.extend([-1] * m)
        self.t_ready.extend([0.0] * m)
        self.t_start.extend([-1.0] * m)
        self.t_end.extend([-1.0] * m)
        self.peas_of.extend([()] * m)
        self.n_starts.extend([0] * m)
        if self.slots:
            self.refc.extend([0] * m)
            self.holder.extend([-1] * m)
            self.hold_pea.extend([-1] * m)
        self.inst_home.append(slot % self.arch.n_clusters)
        self.inst_slot.append(slot)
        self.inst_left.append(m)
        self.inst_arrive.append(t)
        self.inst_finish.append(-1.0)
        for k in range(base, base + m):
            if npred[k] == 0:
                self._ready(t, k)

    def _instance_done(self, t: float, idx: int) -> None:
        self.inst_finish[idx] = t
        self.finished += 1
        if self.arr.times is None and self.next_instance < self.arr.n:
            self._admit(t, self.inst_slot[idx])

    # ----------------------------------------------------------------- invocations
    def _ready(self, t: float, k: int) -> None:
        self.t_ready[k] = t
        if self.node[k] < self.T:
            if self.qcount == 0:
                self._mark(t, True)
            self.qcount += 1
            self.sched.submit(k, t)
        else:
            lat = self.ctrl_us
            if self.dp_hold:
                ps = self.preds[k]
                if len(ps) == 1 and self.node[ps[0]] < self.T:  # its producer paid the hold
                    lat -= self.dp_hold
            self.n_pending += 1
            self.push(t + lat, CTRL, k)

    def _complete(self, t: float, k: int) -> None:
        npred = self.npred
        for s in self.succ[k]:
            npred[s] -= 1
            if npred[s] == 0:
                self._ready(t, s)
        idx = self.inst[k]
        self.inst_left[idx] -= 1
        if self.inst_left[idx] == 0:
            self._instance_done(t, idx)

    def _done(self, t: float, k: int) -> None:
        peas = self.peas_of[k]
        running, idle_since = self.running, self.idle_since
        for p in peas:
            running[p] = False
            idle_since[p] = t
        if t > self.makespan:
            self.makespan = t
        tb = self.node[k]
        self.ewma[tb] += 0.2 * (self.dur[k] - self.ewma[tb])
        self.n_running -= 1
        if self.slots:
            r = self._readers(k)
            if r:  # the result waits in a slot of the lead PEA's output buffer
                p0 = peas[0]
                self.refc[k] = r
                self.holder[k] = k
                self.hold_pea[k] = p0
                self.used[p0] += 1
                if self.used[p0] >= self.slots:  # buffer full: back-pressure blocks it
                    self.is_blocked[p0] = True
                    self.n_blocked += 1
                    i = self.pea_cluster[p0] * self.T + tb
                    self.blk_at[p0] = i
                    self.blk_ct[i] += 1
                    self.blocked_events += 1
                    peas = peas[1:]
        self._complete(t, k)
        if peas:
            self.sched.on_free(peas, t)

    def _ctrl(self, t: float, k: int) -> None:
        # a control block forwards the data of its largest input
        best, bb = -1, -1
        for j in self.preds[k]:
            if self.outb[j] > bb:
                best, bb = j, self.outb[j]
        if best >= 0:
            self.loc[k], self.outb[k] = self.loc[best], bb
        self.n_pending -= 1
        if self.slots:
            ps = self.preds[k]
            if len(ps) == 1:  # point-to-point: the decision forwards the data to its readers
                h = self.holder[ps[0]]
                if h >= 0:
                    self.holder[k] = h
                    self.refc[h] += self._readers(k) - 1
                    if self.refc[h] == 0:
                        self._free_slot(t, h)
        self.t_start[k] = self.t_ready[k]
        self.t_end[k] = t
        self.n_starts[k] += 1
        if t > self.makespan:
            self.makespan = t
        self.sched.on_decision(k, t)
        self._complete(t, k)

    # ----------------------------------------------------------------- scheduler API
    def data_cluster(self, k: int) -> int:
        """Cluster holding the (first) input of invocation k; its home cluster if none."""
        loc = self.loc
        for j in self.preds[k]:
            q = loc[j]
            if q >= 0:
                return self.pea_cluster[q]
        return self.inst_home[self.inst[k]]

    def input_us(self, k: int, p: int) -> float:
        """Time to bring k's inputs to PEA p (max over its predecessors)."""
        arch, loc, outb, best = self.arch, self.loc, self.outb, 0.0
        for j in self.preds[k]:
            q = loc[j]
            if q >= 0 and q != p:
                x = arch.transfer_us(q, p, outb[j])
                if x > best:
                    best = x
        return best

    def start(self, k: int, peas, t: float) -> None:
        """Begin invocation k on `peas` (all free) at time t."""
        tb = self.node[k]
        p0 = peas[0]
        xf = 0.0
        preds = self.preds[k]
        if preds:
            arch, loc, outb = self.arch, self.loc, self.outb
            px, py, dx, dy = arch.pea_x, arch.pea_y, arch.pea_dx, arch.pea_dy
            x0, y0, dx0, dy0 = px[p0], py[p0], dx[p0], dy[p0]
            multi_die = arch.n_dies > 1
            for j in preds:
                q = loc[j]
                if q >= 0 and q != p0:
                    b = outb[j]
                    hops = abs(px[q] - x0) + abs(py[q] - y0)
                    dies = abs(dx[q] - dx0) + abs(dy[q] - dy0) if multi_die else 0
                    if self.contention:
                        x = self._route(q, p0, b, t, hops, dies)
                    elif dies:  # same formula as Arch.transfer_us, inlined (hot path)
                        x = (
                            (hops - dies) * arch.hop_latency_us
                            + dies * arch.die_hop_latency_us
                            + b / arch.die_bytes_per_us
                        )
                    else:
                        x = hops * arch.hop_latency_us + b / arch.bytes_per_us
                    if x > xf:
                        xf = x
                    self.noc_bytes += b
                    self.noc_byte_hops += b * hops
        if self.slots and len(preds) == 1:  # reading a point-to-point input frees its slot
            h = self.holder[preds[0]]
            if h >= 0:
                self.refc[h] -= 1
                if self.refc[h] == 0:
                    self._free_slot(t, h)
        exec_start = t + xf
        cfg, avail, idle_since = self.cfg, self.avail_at, self.idle_since
        d = self.dur[k]
        if self.dp_hold and self._decides_on_data_plane(k):
            d += self.dp_hold
            self.dp_pea_us += self.dp_hold * len(peas)
        if len(peas) == 1:  # fast path: one PEA
            a = idle_since[p0]
            if t > a:
                self._idle(p0, a, t)
            av = avail[p0]
            r = av if av > t else t
            if cfg[p0] != tb:
                rc = self.rc_us[tb]
                if self.record:
                    self.reconf_spans.append((p0, r, r + rc, tb))
                r += rc
                self.reconf[p0] += rc
                cfg[p0] = tb
                self.n_reconfig += 1
            if r > exec_start:
                exec_start = r
            end = exec_start + d
            self.xfer[p0] += exec_start - r
            self.busy[p0] += d
            self.running[p0] = True
            idle_since[p0] = avail[p0] = end
        else:
            rc = self.rc_us[tb]
            readies = []
            for p in peas:
                a = idle_since[p]
                if t > a:
                    self._idle(p, a, t)
                av = avail[p]
                r = av if av > t else t
                if cfg[p] != tb:
                    if self.record:
                        self.reconf_spans.append((p, r, r + rc, tb))
                    r += rc
                    self.reconf[p] += rc
                    cfg[p] = tb
                    self.n_reconfig += 1
                readies.append(r)
                if r > exec_start:
                    exec_start = r
            end = exec_start + d
            xfer, busy, running = self.xfer, self.busy, self.running
            for p, r in zip(peas, readies):
                xfer[p] += exec_start - r
                busy[p] += d
                running[p] = True
                idle_since[p] = avail[p] = end
        self.peas_of[k] = peas
        self.loc[k] = p0
        self.t_start[k] = exec_start
        self.t_end[k] = end
        self.n_starts[k] += 1
        self.n_running += 1
        self.qcount -= 1
        if self.qcount == 0:
            self._mark(t, False)
        self.seq += 1
        heapq.heappush(self.heap, (end, self.seq, DONE, k))

    def preconfigure(self, p: int, tb: int, t: float) -> None:
        """Load TB `tb`'s configuration into idle PEA p ahead of demand."""
        if self.cfg[p] == tb or self.running[p]:
            return
        a = self.idle_since[p]
        if t > a:
            self._idle(p, a, t)
        r = max(t, self.avail_at[p])
        rc = self.rc_us[tb]
        if self.record:
            self.reconf_spans.append((p, r, r + rc, tb))
        self.reconf[p] += rc
        self.cfg[p] = tb
        self.n_reconfig += 1
        self.avail_at[p] = self.idle_since[p] = r + rc

    # ----------------------------------------------------------------- physical model
    def _route(self, q: int, p: int, b: float, t: float, hops: int, dies: int) -> float:
        """Transfer q -> p of b bytes issued at t, with link contention: the transfer waits
        until every directed link of its XY route is free, then holds all of them for its
        serialisation time (bottleneck bandwidth); it arrives one route latency later.
        Returns the time from t to arrival."""
        arch = self.arch
        px, py, W = arch.pea_x, arch.pea_y, arch.grid_w
        x0, y0, x1, y1 = px[q], py[q], px[p], py[p]
        if x1 > x0:
            links = [(y0 * W + x) * 4 for x in range(x0, x1)]
        else:
            links = [(y0 * W + x) * 4 + 1 for x in range(x1 + 1, x0 + 1)]
        if y1 > y0:
            links += [(y * W + x1) * 4 + 2 for y in range(y0, y1)]
        else:
            links += [(y * W + x1) * 4 + 3 for y in range(y1 + 1, y0 + 1)]
        lf = self.link_free
        s = t
        for li in links:
            if lf[li] > s:
                s = lf[li]
        if dies:
            ser = b / arch.die_bytes_per_us
            lat = (hops - dies) * arch.hop_latency_us + dies * arch.die_hop_latency_us
        else:
            ser = b / arch.bytes_per_us
            lat = hops * arch.hop_latency_us
        e = s + ser
        for li in links:
            lf[li] = e
        return e + lat - t

    def _decides_on_data_plane(self, k: int) -> bool:
        """Whether task k feeds a control block directly (its only input): on the data plane
        k's PEAs evaluate that decision before they are released."""
        node, preds, T = self.node, self.preds, self.T
        return any(node[s] >= T and len(preds[s]) == 1 for s in self.succ[k])

    def _readers(self, k: int) -> int:
        """Successors that read k's data point to point (a successor with several inputs is
        a join: it gathers its inputs as they are produced, so they hold no slot)."""
        preds = self.preds
        return sum(1 for s in self.succ[k] if len(preds[s]) == 1)

    def _free_slot(self, t: float, h: int) -> None:
        q = self.hold_pea[h]
        if q < 0:
            return
        self.hold_pea[h] = -1
        self.used[q] -= 1
        if self.is_blocked[q] and self.used[q] < self.slots:
            self.is_blocked[q] = False
            self.n_blocked -= 1
            self.blk_ct[self.blk_at[q]] -= 1
            self.n_pending += 1
            self.push(t, UNBLOCK, q)  # deferred: the scheduler may be mid-decision

    def _unblock(self, t: float, p: int) -> None:
        self.n_pending -= 1
        self.blocked[p] += t - self.idle_since[p]
        self.idle_since[p] = t
        self.sched.on_free((p,), t)

    def _spill(self, t: float) -> None:
        """Deadlock recovery: nothing runs, nothing is in flight, and blocked PEAs hold data
        whose readers cannot be placed. The blocked buffers spill to memory (readers still
        pay the transfer from the producing PEA) and the PEAs are released."""
        blk = [p for p, b in enumerate(self.is_blocked) if b]
        bs = set(blk)
        hp = self.hold_pea
        for h, q in enumerate(hp):
            if q in bs:
                hp[h] = -1
        for p in blk:
            self.used[p] = 0
            self.is_blocked[p] = False
            self.n_blocked -= 1
            self.blk_ct[self.blk_at[p]] -= 1
            self.spills += 1
            self.n_pending += 1
            self.push(t, UNBLOCK, p)

    # ----------------------------------------------------------------- accounting
    def _mark(self, t: float, on: bool) -> None:
        c = self._bp_c[-1] + ((t - self._bp_t[-1]) if self._bp_on[-1] else 0.0)
        self._bp_t.append(t)
        self._bp_c.append(c)
        self._bp_on.append(on)

    def _cum(self, x: float) -> float:
        i = bisect_right(self._bp_t, x) - 1
        return self._bp_c[i] + ((x - self._bp_t[i]) if self._bp_on[i] else 0.0)

    def _idle(self, p: int, a: float, b: float) -> None:
        bt = self._bp_t[-1]
        if a >= bt:  # no change of the queue state inside [a, b): common case
            if self._bp_on[-1]:
                self.starved[p] += b - a
            else:
                self.waiting[p] += b - a
            return
        s = self._cum(b) - self._cum(a)
        self.starved[p] += s
        self.waiting[p] += (b - a) - s

    def _finalize(self) -> None:
        T = self.makespan
        for p in range(self.arch.n_peas):
            if self.is_blocked[p]:  # cannot happen once every reader ran; kept exact anyway
                self.blocked[p] += max(0.0, T - self.idle_since[p])
                self.idle_since[p] = T
            if self.avail_at[p] > T:  # a pre-configuration still running at the end
                over = self.avail_at[p] - T
                self.reconf[p] -= over
                self.idle_since[p] = T
            a = self.idle_since[p]
            if T > a:
                self._idle(p, a, T)


def simulate(cw: CompiledWorkflow, arch: Arch, scheduler, **kw) -> Simulator:
    return Simulator(cw, arch, scheduler, **kw).run()

"""Octopus: the three strategies of the paper, each switchable for the ablation.

- Discriminate dual-scheduling (`dds`): TBs are classified stable / time-dynamic /
  frequency-dynamic from their CVs. Each gets a warm base share for its steady demand
  (all of its mean share if stable, `dynamic_base` of it otherwise); the rest of the cluster
  is an elastic spare pool. Dispatch prefers warm PEAs and reconfigures a spare one only when
  the expected queueing delay exceeds the reconfiguration time. The spare pool is elastic:
  a spare PEA warm for one TB is reconfigured for another when its TB has no queue, is
  choked by back-pressure, or waits less than the other by more than a reconfiguration.
- Adaptive TBU scheduling (`adaptive`): each period a TBU re-sizes its base share from the
  demand it observed (EWMA), and between periods it borrows idle PEAs of TBs whose queues
  are empty, before idleness can spread; borrowed PEAs return when the owner has work.
  When nothing runs in a cluster, its free PEAs go to any TB that can start (`liveness`):
  loans that ended blocked can otherwise leave a cluster in a local buffer deadlock.
- Proactive cluster scheduling (`proactive`): the CBU learns how many downstream invocations
  each TB's decisions spawn; when a TB starts, spare PEAs near its data are pre-configured
  for the predicted demand, and when a decision lands the exact demand tops them up. Work is
  placed in the cluster holding its input, and balanced between clusters by diffusion
  (`balancer="diffusion"`, alpha, period) or by a centralised balancer (`"central"`).
Control blocks are decided on the control plane (CBU) in every Octopus variant.
"""

from __future__ import annotations

from collections import deque
from itertools import compress, islice

from octopus.sched.api import Scheduler, SchedulerAPI
from octopus.sched.balance import central_step, diffusion_step
from octopus.sched.base import lay_out, partition

INF = float("inf")


class OctopusScheduler(Scheduler):
    name = "octopus"
    control_plane = True

    def __init__(
        self,
        dds: bool = True,
        adaptive: bool = True,
        proactive: bool = True,
        balancer: str = "diffusion",
        alpha: float = 0.2,
        period_us: float = 100.0,
        dynamic_base: float = 0.5,
        cv_threshold: float = 0.3,
        reconfig_margin: float = 1.0,
        bp_aware: bool = True,
        bp_scan: int = 64,
        elastic: bool = True,
        oldest_first: bool = True,
        cost_aware: bool = True,
        liveness: bool = True,
    ):
        self.liveness = liveness  # adaptive: a stuck cluster's free PEAs go to any TB
        self.cost_aware = cost_aware  # the balancer moves work only when the transfer pays
        self.oldest_first = oldest_first
        self.elastic = elastic
        self.reconfig_margin = reconfig_margin
        self.bp_aware, self.bp_scan = bp_aware, bp_scan
        self.dds, self.adaptive, self.proactive = dds, adaptive, proactive
        self.balancer = balancer if proactive else "none"
        self.alpha, self.tick_us = alpha, period_us
        self.dynamic_base, self.cv_threshold = dynamic_base, cv_threshold
        self.migrated = 0
        self.preconfigs = 0

    # ------------------------------------------------------------------ setup
    def attach(self, api: SchedulerAPI) -> None:
        super().attach(api)
        arch, T = api.arch, api.n_tasks
        self.T, self.fp, nc = T, api.footprint, arch.n_clusters
        self._tbs, self._tbs_none = range(T), range(T + 1)  # TBs; TBs and "none" (spare)
        self._blk = api.blocked_count
        self._pea_cluster, self._succ_tasks = arch.pea_cluster, api.workflow.succ_tasks
        self.classes = self._classify(api)
        if sum(self.fp) > arch.peas_in_cluster:  # too small to split: everything is spare
            share = [0] * T
        else:
            share = partition(arch.peas_in_cluster, api.load, self.fp)
        if not any(share):
            base = share
        elif self.dds:
            base = [
                max(self.fp[tb], int(share[tb] * (1.0 if cls == "stable" else self.dynamic_base)))
                for tb, cls in enumerate(self.classes)
            ]
        else:
            base = share
        self.base0 = base
        # _adapt's arithmetic, compiled: its state (the demand EWMA per cluster and TB) and
        # constants (imported here: numpy and numba load only when Octopus runs)
        from octopus.sched.shares import ShareResizer

        frac = [1.0 if cls == "stable" else self.dynamic_base for cls in self.classes]
        self._resizer = ShareResizer(
            [[float(api.load[tb]) for tb in range(T)] for _ in range(nc)],
            self.fp,
            frac,
            arch.peas_in_cluster,
            resize=sum(self.fp) <= arch.peas_in_cluster,  # else everything stays spare
            dds=self.dds,
        )
        self.own = [-1] * arch.n_peas
        self.q = [[deque() for _ in range(T)] for _ in range(nc)]
        self.fown = [[[] for _ in range(T)] for _ in range(nc)]  # free, owned by TB
        self.fsp = [[[] for _ in range(T + 1)] for _ in range(nc)]  # free spare, by cfg (T=none)
        # free PEAs per cluster (all of fown[c] and fsp[c]): a placement that needs more
        # cannot succeed, whatever the donors, so it is refused without looking at them
        self.nfree = [0] * nc
        self.n_own = [[0] * T for _ in range(nc)]
        self.nwarm = [[0] * (T + 1) for _ in range(nc)]
        self.seen = [[0.0] * T for _ in range(nc)]  # demand arrived since the last tick
        self._seen_before = self.seen  # what the last tick folded into the demand
        self._migrated_before, self._reshared = 0, False  # (quiescent)
        self.spawn = [[0.0] * T for _ in range(T)]  # learned: TB -> expected downstream counts
        spare = lay_out(api, arch.cluster_peas, base, self.own, self.fown, self.n_own)
        for c, rest in enumerate(spare):
            self.nwarm[c][:T] = base
            self.fsp[c][T].extend(rest)
            self.nwarm[c][T] = len(rest)
            self.nfree[c] = sum(map(len, self.fown[c])) + len(rest)

    def _classify(self, api: SchedulerAPI) -> list[str]:
        cw, out = api.workflow, []
        for tb in range(self.T):
            tcv = cw.work_dist[tb].cv(n=500)
            fcv = api.profile.get("calls_cv", [0.0] * self.T)[tb]
            if fcv > self.cv_threshold:
                out.append("frequency-dynamic")
            elif tcv > self.cv_threshold:
                out.append("time-dynamic")
            else:
                out.append("stable")
        return out

    # ------------------------------------------------------------------ placement
    def _use(self, c: int, p: int, tb: int) -> None:
        cur = self.api.config[p]
        if cur != tb:
            self.nwarm[c][cur if cur >= 0 else self.T] -= 1
            self.nwarm[c][tb] += 1

    def _blocked_outweigh(self, c: int, tb: int, k: int, wait: float, cost: float) -> bool:
        """Whether enough producer PEAs wait on k's TB that reconfiguring now pays, although
        k alone would wait less than the reconfiguration (`_place`'s test, back-pressure
        aware): every producer PEA blocked on a full output buffer holding the input of k or
        of a queued invocation of its TB waits as long as k (it cannot take new work until
        the input is read: contagious idleness)."""
        api = self.api
        if not self.bp_aware or not api.buffer_slots or wait <= 0.0:
            return False  # wait 0 (a TB of zero work): w x (1 + B) never exceeds the cost
        need = cost / wait - 1.0  # blocked producers that make waiting the dearer choice
        blk, seen, n_scan = api.is_blocked, set(), self.bp_scan if self.bp_scan > 0 else 0
        for p in api.inputs_held_by((k, *islice(self.q[c][tb], n_scan))):
            if p >= 0 and blk[p] and p not in seen:
                seen.add(p)
                if len(seen) > need:
                    return True
        return False

    def _place(self, c: int, k: int, t: float, warm_only: bool = False) -> bool:
        api, T = self.api, self.T
        tb = api.node[k]
        fp = self.fp[tb]
        own_l, sp = self.fown[c], self.fsp[c]
        mine, spw = own_l[tb], sp[tb]
        # warm PEAs suffice (for a footprint of one, most TBs, a truth test: no len calls)
        if (mine or spw) if fp == 1 else len(mine) + len(spw) >= fp:
            if fp == 1:
                peas = [mine.pop() if mine else spw.pop()]
            else:
                peas = [mine.pop() if mine else spw.pop() for _ in range(fp)]
        else:
            if warm_only or self.nfree[c] < fp:
                return False
            # reconfigure a spare PEA for k rather than wait for a warm one when the cost of
            # waiting exceeds the reconfiguration: the expected queueing delay of k itself,
            # or of the producers blocked on its TB (_blocked_outweigh). Waiting is a choice
            # only while the PEAs warm for tb can hold k (warm >= fp): with fewer, no
            # finishing invocation of tb ever frees enough, and k would wait forever
            warm = self.nwarm[c][tb]
            if warm >= fp:
                wait = api.ewma[tb] * (len(self.q[c][tb]) + 1) / warm
                cost = self.reconfig_margin * api.rc_us[tb]
                if not (wait > cost or self._blocked_outweigh(c, tb, k, wait, cost)):
                    return False
            qs = self.q[c]
            # count before touching anything: failed attempts must be cheap. PEAs are taken
            # from the donors in this order, so the scan stops once they hold fp
            donors = []
            n = len(mine) + len(spw) if fp > 1 else 0  # (one: both are empty)
            # blocked PEAs per TB of cluster c (back-pressure: their outputs are unread) are
            # blk[lend + u]; lend < 0: not counted
            blk = api.blocked_count
            lend = c * T if self.bp_aware and api.buffer_slots else -1
            if lend >= 0 and blk[lend + tb]:
                lend = -1  # a choked TB borrows nothing
            # the non-empty spare lists, in ascending order (compress tests them in C: with
            # few free PEAs, most of the T + 1 lists are empty). Without dds the base shares
            # are the whole partition and the spare pool is empty, except in a cluster too
            # small to partition, where every PEA is spare: it lends them as with dds (it
            # lent none, and nothing ever started there)
            for u in compress(self._tbs_none, sp):
                # _spare_lends(c, u, tb, lend), its common cases inlined: an unconfigured
                # PEA, or one warm for a TB without a queue or choked
                if u != tb and (
                    u == T
                    or not qs[u]
                    or (lend >= 0 and blk[lend + u])
                    or self._spare_lends(c, u, tb, lend)
                ):
                    donors.append(sp[u])
                    n += len(sp[u])
                    if n >= fp:
                        break
            if self.adaptive and n < fp:
                for u in compress(self._tbs, own_l):
                    if u != tb and (not qs[u] or (lend >= 0 and blk[lend + u])):
                        donors.append(own_l[u])
                        n += len(own_l[u])
                        if n >= fp:
                            break
            if n < fp and self.adaptive and self.liveness and not api.cluster_running[c]:
                # nothing runs in this cluster (_stuck, inlined), so nothing will free a
                # PEA here: waive the owners' claims (a buffer deadlock local to the cluster)
                donors = [fl for fl in (*sp, *own_l) if fl and fl is not mine and fl is not spw]
                n = len(mine) + len(spw) + sum(len(fl) for fl in donors)
            if n < fp:
                return False
            if fp == 1:  # no warm PEA (else the branch above): the first donor's
                peas = [donors[0].pop()]
            else:
                peas, need = [], fp
                for fl in (mine, spw, *donors):
                    while fl and need:
                        peas.append(fl.pop())
                        need -= 1
                    if not need:
                        break
        cfg, nwarm = api.config, self.nwarm[c]
        for p in peas:  # count them warm for tb (as _use)
            cur = cfg[p]
            if cur != tb:
                nwarm[cur if cur >= 0 else T] -= 1
                nwarm[tb] += 1
        self.nfree[c] -= fp
        api.start(k, peas, t)
        if self.proactive:
            # pre-configure for the demand predicted downstream of tb, only when the
            # reconfiguration can be hidden behind the upstream task starting now
            row, lead, rc = self.spawn[tb], api.ewma[tb], api.rc_us
            for u in self._succ_tasks[tb]:
                # the rounded prediction int(row[u] + 0.5) is not 0 (rows are >= 0): tested
                # without the int() call first
                if rc[u] <= lead and (y := row[u] + 0.5) >= 1.0:
                    self._preconfigure(c, u, int(y) * self.fp[u], t)
        return True

    def _spare_lends(self, c: int, u: int, tb: int, lend: int) -> bool:
        """Whether free spare PEAs warm for `u` may be reconfigured for `tb`. The spare pool
        is elastic: its PEAs follow the fluctuation, so they leave `u` when `u` has no queue,
        when `u` is choked by back-pressure (its next result would only block), or when
        `tb`'s expected queueing delay exceeds `u`'s by more than the reconfiguration.
        `lend`: where cluster c's counts start in `blocked_count` (-1: not counted)."""
        if u == self.T or not self.q[c][u]:
            return True
        if lend >= 0 and self.api.blocked_count[lend + u]:
            return True
        if not self.elastic:
            return False
        api = self.api
        wu = api.ewma[u] * len(self.q[c][u]) / max(1, self.nwarm[c][u])
        wt = api.ewma[tb] * (len(self.q[c][tb]) + 1) / max(1, self.nwarm[c][tb])
        return wt - wu > api.rc_us[tb]

    def _stuck(self, c: int) -> bool:
        """Whether no PEA of cluster c runs (each is free or blocked by back-pressure).

        Adaptive TBUs lend the free PEAs of a TB with an empty queue, and a loan can end
        blocked: the borrower's result waits in the lent PEA's buffer until its reader runs.
        When upstream stages borrow the PEAs of the stages downstream of them, those PEAs
        fill with results that only the downstream stages read, and the downstream stages
        are left with no PEA to read them on. A TB with a queue that cannot start on its free
        PEAs (fewer than its footprint) then keeps them: the cluster's work is all queued,
        every PEA is blocked or held, and nothing will free one. The core spills blocked
        buffers only when nothing runs anywhere, which on a fabric where other clusters keep
        working comes only when they run out of work (recommendation, chip, seed 1: one
        cluster held 63 blocked PEAs and one stranded PEA of `retrieve`, footprint 2, from
        about 7 ms to the spill at 33 ms; its last 10 instances then ran alone to 55.5 ms).
        When nothing runs in the cluster, its free PEAs go to whichever TB can start
        (`liveness`; it costs nothing while anything runs). A cluster whose PEAs are all
        blocked, none free, is still left to the core's spill."""
        return not self.api.cluster_running[c]

    def _put(self, c: int, p: int) -> None:
        o = self.own[p]
        if o >= 0:
            self.fown[c][o].append(p)
        else:
            cur = self.api.config[p]
            self.fsp[c][cur if cur >= 0 else self.T].append(p)

    def enqueue(self, c: int, k: int, t: float) -> None:
        q = self.q[c][self.api.node[k]]
        # a cluster with no free PEA places nothing (every free list is empty): no call
        if q or not self.nfree[c] or not self._place(c, k, t):
            q.append(k)

    def on_ready(self, k: int, t: float) -> None:
        api = self.api
        if self.proactive:  # api.data_cluster(k), inlined: it runs once per task
            loc, pc = api.loc, self._pea_cluster
            for j in api.preds[k]:
                q = loc[j]
                if q >= 0:
                    c = pc[q]
                    break
            else:
                c = api.instance_home[api.inst[k]]
        else:
            c = api.home_cluster(k)
        tb = api.node[k]
        self.seen[c][tb] += api.ewma[tb] * self.fp[tb]
        q = self.q[c][tb]  # enqueue(c, k, t), inlined: it runs once per task
        if q or not self.nfree[c] or not self._place(c, k, t):
            q.append(k)

    def on_free(self, peas, t: float) -> None:
        if not peas:
            return
        cl, nfree, own, cfg, T = self._pea_cluster, self.nfree, self.own, self.api.config, self.T
        fown, fsp = self.fown, self.fsp
        c0 = cl[peas[0]]
        one = True  # an invocation's PEAs are of one cluster: one drain, without a set
        for p in peas:
            c = cl[p]
            o = own[p]  # _put(c, p), inlined: it runs once per freed PEA
            if o >= 0:
                fown[c][o].append(p)
            else:
                cur = cfg[p]
                fsp[c][cur if cur >= 0 else T].append(p)
            nfree[c] += 1
            one = one and c == c0
        if one:
            qs = self.q[c0]
            if nfree[c0] == 1:
                # p, just freed, is the cluster's one free PEA: _drain would place the head of
                # the one TB it is warm for (a footprint of one, a queue, not choked: the
                # first group's warm pass) and then find nothing free; that, without the call
                w = o if o >= 0 else cfg[p]
                if (
                    w >= 0
                    and self.fp[w] == 1
                    and qs[w]
                    and not (self.bp_aware and self.api.buffer_slots and self._blk[c0 * T + w])
                ):
                    self._place(c0, qs[w][0], t, True)
                    qs[w].popleft()
                    return
            if any(qs):  # _drain's own first test, without the call
                self._drain(c0, t)
        else:
            for c in {cl[p] for p in peas}:
                self._drain(c, t)

    def _drain(self, c: int, t: float) -> None:
        nfree = self.nfree
        if not nfree[c]:
            return
        qs = self.q[c]
        tbs = list(compress(self._tbs, qs))  # the TBs with a queue
        if not tbs:
            return
        groups = (tbs,)
        if self.bp_aware and self.api.buffer_slots:
            # back-pressure aware: serve TBs that are not choked (none of their PEAs is
            # blocked on a full output buffer) first, with a warm PEA or else a spare or
            # borrowed one; they consume what blocked producers hold. Choked TBs come last:
            # running more of them now would only block more PEAs.
            base = c * self.T
            blk = self.api.blocked_count[base : base + self.T]
            if any(blk):  # some TB of the cluster is choked (tested in C first)
                choked = [tb for tb in tbs if blk[tb]]
                if choked:
                    groups = ([tb for tb in tbs if not blk[tb]], choked)
        own_l, sp, fp = self.fown[c], self.fsp[c], self.fp
        for grp in groups:
            # warm pass: a TB places from its own warm PEAs only, so a TB with too few of
            # them is skipped without a call, and the pass without a sort when no TB can
            # place (nothing changes until something is placed)
            # (the truth tests first: most TBs have no free warm PEA, and most footprints are
            # one, so the lengths are rarely needed)
            for tb in grp:
                if (own_l[tb] or sp[tb]) and len(own_l[tb]) + len(sp[tb]) >= fp[tb] and qs[tb]:
                    break
            else:
                tb = -1
            if tb >= 0 and nfree[c] == 1:
                # one free PEA: it is warm for tb alone (it lies in one list), tb places once,
                # and then nothing is free (its pre-configurations find no spare PEA): the
                # order of the pass cannot matter
                self._place(c, qs[tb][0], t, True)
                qs[tb].popleft()
            elif tb >= 0:
                for tb in grp if len(grp) == 1 else self._order(qs, grp):
                    q, mine, spw, need = qs[tb], own_l[tb], sp[tb], fp[tb]
                    while q and (mine or spw) and (need == 1 or len(mine) + len(spw) >= need):
                        self._place(c, q[0], t, True)
                        q.popleft()
            # reconfiguring pass: a TB whose footprint exceeds the cluster's free PEAs
            # cannot place (see _place; the pass only takes PEAs), nor can a TB without a
            # queue, so only the others are ordered and tried (the order of a subset is
            # the subset of the order)
            n = nfree[c]
            if not n:
                continue
            cand = [tb for tb in grp if fp[tb] <= n and qs[tb]]
            if not cand:
                continue
            if len(cand) == 1:
                order = cand
            elif n == 1 and self.oldest_first:
                # one free PEA: one placement at most, and the first TB in the order places in
                # most such drains: try that TB (the least key of _order) before sorting
                inst, T = self.api.inst, self.T
                first = min([inst[qs[tb][0]] * T + tb for tb in cand]) % T
                if self._place(c, qs[first][0], t, False):
                    qs[first].popleft()
                    continue  # nothing is free now
                order = [tb for tb in self._order(qs, cand) if tb != first]
            else:
                order = self._order(qs, cand)
            for tb in order:
                q = qs[tb]
                while q and fp[tb] <= nfree[c] and self._place(c, q[0], t, False):
                    q.popleft()
                if not nfree[c]:  # nothing is free: no later TB can place
                    break

    def _order(self, qs, grp) -> list[int]:
        """The order in which a cluster's TBUs with queued work are served. Oldest first:
        the TB whose head invocation belongs to the earliest admitted instance, so instances
        complete sooner and a closed loop admits the next ones sooner (measured: 0.5% shorter
        makespans over the suite, 3 seeds). Otherwise the largest backlog (queue x EWMA).
        Ties keep the order of `grp` (ascending TBs): the sorts are of (key, tb) pairs, or,
        oldest first, of the ints instance * T + tb, which sort in the same order (tb < T)
        and compare faster than pairs."""
        if self.oldest_first:
            inst, T = self.api.inst, self.T
            keys = [inst[qs[tb][0]] * T + tb for tb in grp if qs[tb]]
            keys.sort()
            return [x % T for x in keys]
        ewma = self.api.ewma
        keyed = [(-len(qs[tb]) * ewma[tb], tb) for tb in grp if qs[tb]]
        if len(keyed) == 1:
            return [keyed[0][1]]
        keyed.sort()
        return [tb for _, tb in keyed]

    # ------------------------------------------------------------------ proactive
    def on_decision(self, k: int, t: float) -> None:
        if not self.proactive:
            return
        api, T = self.api, self.T
        counts = [0] * T
        for s in api.succ[k]:
            if api.node[s] < T:
                counts[api.node[s]] += 1
        src = -1
        for j in api.preds[k]:
            if api.node[j] < T:
                src = api.node[j]
        if src >= 0:
            row = self.spawn[src]
            for u in api.workflow.succ_tasks[src]:
                row[u] += 0.2 * (counts[u] - row[u])
        c = api.data_cluster(k)
        for u in range(T):
            if counts[u]:
                self._preconfigure(c, u, counts[u] * self.fp[u], t)

    def _preconfigure(self, c: int, u: int, need: int, t: float) -> None:
        """Make `need` free PEAs of cluster c warm for TB u, from the spare pool."""
        have = len(self.fown[c][u]) + len(self.fsp[c][u]) - len(self.q[c][u]) * self.fp[u]
        need -= have
        if need <= 0:
            return
        api, sp, T = self.api, self.fsp[c], self.T
        nwarm, n_own = self.nwarm[c], self.n_own[c]
        for v in [T] + list(range(T)):
            # take unconfigured PEAs, or PEAs of an idle TB that is warm beyond its base share
            if v == u or (v < T and (self.q[c][v] or nwarm[v] <= n_own[v])):
                continue
            fl = sp[v]
            keep = []
            while fl and need > 0:
                p = fl.pop()
                if api.avail_at[p] > t:
                    keep.append(p)
                    continue
                self._use(c, p, u)
                api.preconfigure(p, u, t)
                sp[u].append(p)
                self.preconfigs += 1
                need -= 1
            fl.extend(keep)
            if need <= 0:
                return

    # ------------------------------------------------------------------ periodic
    def on_tick(self, t: float) -> None:
        self._migrated_before, self._reshared = self.migrated, False
        if self.adaptive:
            self._adapt(t)
        if self.balancer == "diffusion":
            diffusion_step(self, t, self.alpha)
        elif self.balancer == "central":
            central_step(self, t)

    def quiescent(self) -> bool:
        """Whether the last tick changed nothing of this scheduler's state, so that a tick
        with nothing else happening changes nothing either (the core checks itself that the
        tick started, scheduled and configured nothing): no work migrated, no PEA moved
        between the shares, and, adaptive, no demand seen since the tick before and the
        demand's decay at its fixed point (it decays by 0.7 a tick down to the smallest
        float it can reach)."""
        if self.migrated != self._migrated_before or self._reshared:
            return False
        if not self.adaptive:
            return True
        return not any(map(any, self._seen_before)) and self._resizer.unchanged()

    def _adapt(self, t: float) -> None:
        """Re-size base shares from observed demand (EWMA of arrivals x duration) plus the
        current queue. The arithmetic of every cluster is one compiled call
        (`shares.ShareResizer`); moving PEAs between the shares follows here."""
        T, own, nfree, nc = self.T, self.own, self.nfree, len(self.q)
        active, targets = self._resizer.step(self.q, self.seen, self.api.ewma)
        self._seen_before, self.seen = self.seen, [[0.0] * T for _ in range(nc)]
        for c in range(nc):
            if not active[c]:
                continue
            qs, n_own, fown, sp = self.q[c], self.n_own[c], self.fown[c], self.fsp[c]
            target = targets[c]
            if n_own == target:  # every base share already at its target
                if nfree[c] and any(qs):  # _drain's first tests, without the call
                    self._drain(c, t)
                continue
            for tb in range(T):
                extra = n_own[tb] - target[tb]
                if extra <= 0:
                    continue
                fl = fown[tb]
                while extra > 0 and fl:  # release free base PEAs to the spare pool
                    p = fl.pop()
                    own[p] = -1
                    n_own[tb] -= 1
                    self._put(c, p)
                    extra -= 1
                    self._reshared = True
            for tb in range(T):
                lack = target[tb] - n_own[tb]
                if lack <= 0:
                    continue
                mine = fown[tb]
                for v in (tb, T, *range(T)):  # warm for tb first, then unconfigured
                    fl = sp[v]
                    while lack > 0 and fl:
                        p = fl.pop()
                        own[p] = tb
                        n_own[tb] += 1
                        mine.append(p)
                        lack -= 1
                        self._reshared = True
                    if lack <= 0:
                        break
            if nfree[c] and any(qs):
                self._drain(c, t)

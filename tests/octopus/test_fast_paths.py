"""Fast paths of the simulator and schedulers against their slow, obvious twins."""

import random

import pytest

from octopus.arch import load_arch
from octopus.owg.arrival import make_arrivals
from octopus.runner import prepare, run_one
from octopus.sched import VARIANTS, balance
from octopus.sched.base import partition
from octopus.sched.octopus import OctopusScheduler
from octopus.sim import Simulator
from octopus.sim.physics import Physics


def partition_reference(n: int, loads: list[float], mins: list[int]) -> list[int]:
    """The plain largest-remainder loop: arg-max by a full scan, ties to the first index."""
    tot = sum(loads) or 1.0
    ideal = [n * x / tot for x in loads]
    alloc = [max(m, int(i)) for m, i in zip(mins, ideal)]
    while sum(alloc) > n:
        j = max(
            (i for i in range(len(alloc)) if alloc[i] > mins[i]), key=lambda i: alloc[i] - ideal[i]
        )
        alloc[j] -= 1
    while sum(alloc) < n:
        j = max(range(len(alloc)), key=lambda i: ideal[i] - alloc[i])
        alloc[j] += 1
    return alloc


@pytest.mark.parametrize("seed", range(4))
def test_partition_matches_the_plain_loop_including_ties(seed):
    rng = random.Random(seed)
    for _ in range(500):
        T = rng.randint(1, 14)
        mins = [rng.choice((1, 1, 1, 2, 4)) for _ in range(T)]
        n = sum(mins) + rng.randint(0, 80)
        kind = rng.random()
        if kind < 0.3:  # equal or integer loads: many exact ties
            loads = [float(rng.randint(0, 3)) for _ in range(T)]
        elif kind < 0.4:
            loads = [0.0] * T
        else:
            loads = [rng.expovariate(1.0) * 10 ** rng.randint(-3, 3) for _ in range(T)]
        assert partition(n, loads, mins) == partition_reference(n, loads, mins), (n, loads, mins)


class _CheckedOctopus(OctopusScheduler):
    """Octopus that checks its free-PEA counts against its free lists, and the core's
    running PEAs per cluster against the PEAs' flags, after every hook."""

    def _check(self) -> None:
        api = self.api
        for c, n in enumerate(self.nfree):
            assert n == sum(map(len, self.fown[c])) + sum(map(len, self.fsp[c])), c
            run = sum(api.running[p] for p in api.arch.cluster_peas[c])
            assert api.cluster_running[c] == run, c
        self.checks += 1

    def attach(self, api) -> None:
        super().attach(api)
        self.checks = 0
        self._check()

    def on_ready(self, k, t):
        super().on_ready(k, t)
        self._check()

    def on_free(self, peas, t):
        super().on_free(peas, t)
        self._check()

    def on_tick(self, t):
        super().on_tick(t)
        self._check()


@pytest.mark.parametrize(
    "wf,arch,variant",
    [
        ("video_recognition", "chiplet", "octopus"),
        ("recommendation", "chip", "octopus-dds-adaptive"),
        ("speech_assistant", "chiplet", "octopus-central"),
    ],
)
def test_octopus_free_counts_match_its_free_lists(wf, arch, variant):
    cw, a = prepare(wf, arch)
    s = _CheckedOctopus(**VARIANTS[variant])
    ref = run_one(cw, a, variant, 0, 16)
    sim = Simulator(cw, a, s, make_arrivals(cw.wf.arrival, a.n_clusters, 0, 16), seed=0).run()
    assert s.checks > 100
    assert (sim.makespan, sim.n_events) == (ref.makespan, ref.n_events)


def transfer_reference(ph: Physics, q: int, p: int, b: float, t: float) -> float:
    """Link contention with the route's links listed one by one."""
    arch = ph.arch
    hops, lat, ser = arch.route(q, p, b)
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
    s = t
    for li in links:
        s = max(s, ph.link_free[li])
    for li in links:
        ph.link_free[li] = s + ser
    return s + ser + lat - t


@pytest.mark.parametrize("arch", ["chiplet", "wafer"])
def test_contended_transfer_matches_the_link_by_link_reference(arch):
    a = load_arch(arch)
    fast, ref = Physics(a, [1000], False), Physics(a, [1000], False)
    assert fast.contention
    rng = random.Random(1)
    t, nb, nbh = 0.0, 0.0, 0.0
    for i in range(3000):
        q, p = rng.sample(range(a.n_peas), 2)
        if rng.random() < 0.5:  # mostly short routes, as in a run, so that they contend
            cq = a.pea_cluster[q]
            p = rng.choice(a.cluster_peas[rng.choice([cq, *a.neighbors[cq]])])
            if p == q:
                continue
        b = rng.choice([64.0, 4096.0, rng.uniform(0, 1e6)])
        # the method, and the bound entry point the core calls (links.bind), on one state
        send = fast.send if i % 2 else fast.transfer
        assert send(q, p, b, t) == transfer_reference(ref, q, p, b, t)
        nb += b
        nbh += b * a.route(q, p, b)[0]
        t += rng.expovariate(2.0)
    assert fast.link_free.tolist() == ref.link_free.tolist()
    assert (fast.noc_bytes, fast.noc_byte_hops) == (nb, nbh)
    assert max(fast.link_free) > t  # routes did wait for one another


@pytest.mark.parametrize("arch", ["chip", "chiplet", "wafer"])
def test_uncontended_transfer_is_arch_route(arch):
    a = load_arch(arch)
    ph = Physics(a, [1000], False)
    ph.contention = False  # the inline route alone
    rng = random.Random(2)
    hop_bytes = 0.0
    for _ in range(2000):
        q, p = rng.sample(range(a.n_peas), 2)
        b = rng.choice([64.0, rng.uniform(0, 1e6)])
        hops, lat, ser = a.route(q, p, b)
        assert ph.transfer(q, p, b, 5.0) == lat + ser
        hop_bytes += b * hops
    assert ph.noc_byte_hops == hop_bytes


@pytest.mark.parametrize("arch", ["chip", "chiplet", "wafer"])
def test_route_us_is_arch_transfer_us(arch):
    """The balancer's idle-mesh transfer time (compiled on fabrics with link contention)."""
    a = load_arch(arch)
    ph = Physics(a, [1000], False)
    rng = random.Random(3)
    for _ in range(2000):
        q, p = rng.sample(range(a.n_peas), 2)
        b = rng.choice([64.0, 4096.0, rng.uniform(0, 1e6)])
        assert ph.route_us(q, p, b) == a.transfer_us(q, p, b)
    assert (ph.noc_bytes, ph.noc_byte_hops) == (0.0, 0.0)  # nothing counted


def test_bind_serves_plain_functions_too():
    """Under NUMBA_DISABLE_JIT=1 (numba's debugging switch) the compiled transfer is a plain
    function: a fabric with contention must still build, its send bound the plain way."""
    from octopus.sim.links import bind, contended_transfer, link_tables, route_us

    a = load_arch("chip")
    plain, fast = link_tables(a)[:2], link_tables(a)[:2]
    send_plain = bind(contended_transfer.py_func, *plain)
    send_fast = bind(contended_transfer, *fast)
    rng = random.Random(5)
    t = 0.0
    for _ in range(200):
        q, p = rng.sample(range(a.n_peas), 2)
        b = rng.choice([64.0, rng.uniform(0, 1e5)])
        assert send_plain(q, p, b, t) == send_fast(q, p, b, t)
        assert bind(route_us.py_func, *plain)(q, p, b) == a.transfer_us(q, p, b)
        t += rng.expovariate(2.0)
    assert (plain[0] == fast[0]).all()


def test_point_to_point_reader_counts_match_their_definition():
    cw, a = prepare("driving_perception", "chip")
    sim = run_one(cw, a, "octopus", 0, 12)
    inv, nr = sim.inv, sim.buffers.n_readers
    assert len(nr) == len(inv.node)
    assert nr == [sum(1 for s in inv.succ[k] if len(inv.preds[s]) == 1) for k in range(len(nr))]
    assert 0 < sum(nr) < sum(map(len, inv.succ))  # both kinds of successor occur


class _HeldByProbe(OctopusScheduler):
    """Checks, as each task becomes ready, where the API says its input is held."""

    def attach(self, api) -> None:
        super().attach(api)
        self.held = 0

    def on_ready(self, k, t):
        api = self.api
        ps = api.preds[k]
        one = [api.input_held_by(k)]
        assert api.inputs_held_by([k, k]) == one * 2
        if len(ps) == 1 and api.node[ps[0]] < api.n_tasks:
            # a task's result waits in the slot of its lead PEA until its readers start
            assert one == [api._sim.inv.loc[ps[0]]]
            self.held += 1
        elif len(ps) != 1:
            assert one == [-1]  # a join gathers its inputs: no slot holds them
        super().on_ready(k, t)


def test_input_held_by_is_the_producers_lead_pea_until_read():
    cw, a = prepare("driving_perception", "chip")
    s = _HeldByProbe()
    Simulator(cw, a, s, make_arrivals(cw.wf.arrival, a.n_clusters, 0, 10), seed=0).run()
    assert s.held > 50


def move_work_reference(s, src, dst, amount, t, gain=float("inf")) -> None:
    """`balance.move_work` as first written: every step re-scans src's queues for the TB
    with the most queued work among those not tried (ties: the lowest TB)."""
    api = s.api
    ewma, fp, qs = api.ewma, s.fp, s.q[src]
    p_dst = api.arch.cluster_peas[dst][0]
    tried, sent = set(), 0.0
    while amount > 0:
        cand = [(len(q) * ewma[x] * fp[x], -x) for x, q in enumerate(qs) if q and x not in tried]
        if not cand:
            return
        tb = -max(cand)[1]
        k = qs[tb][-1]
        size = api.input_bytes(k)
        if s.cost_aware and api.input_us(k, p_dst, sent) >= gain:
            tried.add(tb)
            continue
        qs[tb].pop()
        sent += size
        amount -= ewma[tb] * fp[tb]
        s.enqueue(dst, k, t)
        s.migrated += 1


@pytest.mark.parametrize(
    "wf,arch,kw",
    [
        ("video_recognition", "wafer", {}),
        ("driving_perception", "chiplet", {"cost_aware": False}),
        ("recommendation", "chiplet", {"balancer": "central"}),
        ("driving_perception", "wafer", {}),
    ],
)
def test_move_work_matches_the_rescanning_reference(monkeypatch, wf, arch, kw):
    def run():
        cw, a = prepare(wf, arch, "high")
        s = run_one(cw, a, "octopus", 0, 40, **kw)
        inv = s.inv
        return s.sched.migrated, s.makespan, inv.t_start, inv.t_end, [tuple(p) for p in inv.peas]

    fast = run()
    monkeypatch.setattr(balance, "move_work", move_work_reference)
    slow = run()
    assert fast[0] > 0  # the balancer moved work, so the comparison means something
    assert fast == slow

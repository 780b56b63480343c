"""Data-plane control decisions occupy the baseline's PEAs (Part 2: the CBU decides "without
occupying PEAs"), and Octopus's dispatch counts the producers a waiting reader keeps
blocked."""

import pytest
from octo_helpers import TUTORIAL_SPEC, arch, simulate, task, workflow

from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.report.metrics import summarize
from octopus.runner import prepare, run_one
from octopus.sched import make_scheduler
from octopus.sim import Simulator


def _branchy():
    # a (10 us) -> branch (always b) -> b (10 us)
    return workflow(
        [
            task("a", 10.0, ["br"], out_bytes=0),
            {"id": "br", "type": "branch", "next": ["b"], "probs": [1.0]},
            task("b", 10.0, out_bytes=0),
        ]
    )


def _dp_arch(dp_pea):
    return arch(peas=(1, 1), ctrl=0.5, data_plane=20.0, dp_pea=dp_pea)


def test_data_plane_decision_occupies_the_producing_pea_in_the_baseline():
    sched = "greedy"
    # One PEA, two instances. The baseline's decision runs on a's PEA for its 20 us latency:
    # a1 [0, 30) (10 compute + 20 decision), a2 [30, 60), b1 [60, 70), b2 [70, 80).
    sim = simulate(_branchy(), _dp_arch(20.0), sched, n=2)
    assert sim.makespan == pytest.approx(80.0)
    assert sim.time.busy[0] == pytest.approx(80.0)
    assert sim.dp_pea_us == pytest.approx(40.0)
    assert summarize(sim)["data_plane_decisions"] == pytest.approx(0.5)
    # latency only (the first-pass model): a2 runs while a1's decision is in flight
    # a1 [0, 10), a2 [10, 20), b1 [30, 40), b2 [40, 50)
    lat = simulate(_branchy(), _dp_arch(0.0), sched, n=2)
    assert lat.makespan == pytest.approx(50.0)
    assert lat.time.busy[0] == pytest.approx(40.0)
    assert lat.dp_pea_us == 0.0


@pytest.mark.parametrize("sched", ["static", "reactive"])
def test_partitioned_baselines_hold_their_producer_for_the_decision(sched):
    # Two PEAs, one per TB (equal loads). a's PEA evaluates each decision:
    # a1 [0, 30), a2 [30, 60); b1 [30, 40), b2 [60, 70)
    a = arch(peas=(2, 1), ctrl=0.5, data_plane=20.0, dp_pea=20.0)
    sim = simulate(_branchy(), a, sched, n=2)
    pa = next(p for p in range(2) if sim.sched.own[p] == 0)
    assert sim.makespan == pytest.approx(70.0)
    assert sim.time.busy[pa] == pytest.approx(60.0)
    assert sim.time.busy[1 - pa] == pytest.approx(20.0)
    # latency only: a1 [0, 10), a2 [10, 20); b1 [30, 40), b2 [40, 50)
    lat = simulate(_branchy(), arch(peas=(2, 1), ctrl=0.5, data_plane=20.0), sched, n=2)
    assert lat.makespan == pytest.approx(50.0)


def test_control_plane_decision_does_not_occupy_a_pea_in_octopus():
    # Octopus's CBU decides in 0.5 us on the control plane, whatever data_plane_pea_us says:
    # a1 [0, 10), a2 [10, 20), b1 [20, 30) (ready at 10.5), b2 [30, 40)
    sim = simulate(_branchy(), _dp_arch(20.0), "octopus", n=2)
    assert sim.makespan == pytest.approx(40.0)
    assert sim.time.busy[0] == pytest.approx(40.0)
    assert sim.dp_pea_us == 0.0


def test_a_join_is_not_held_on_a_producer():
    # a forks b and c which meet at a join: a join is a synchronisation of the data flow,
    # not a decision, so no producer holds for it
    wf = workflow(
        [
            task("a", 1.0, ["b", "c"], join="j", out_bytes=0),
            task("b", 2.0, ["j"], out_bytes=0),
            task("c", 3.0, ["j"], out_bytes=0),
            {"id": "j", "type": "join", "next": ["d"]},
            task("d", 1.0, out_bytes=0),
        ]
    )
    sim = simulate(wf, arch(peas=(2, 1), ctrl=0.5, data_plane=20.0, dp_pea=20.0), "greedy")
    assert sim.dp_pea_us == 0.0
    assert sim.makespan == pytest.approx(1.0 + 3.0 + 1.0)


def _pipeline_dyn():
    return workflow(
        [
            task("a", {"dist": "lognormal", "mean": 1.0, "cv": 0.5}, ["b"], out_bytes=0),
            task("b", {"dist": "lognormal", "mean": 4.0, "cv": 0.5}, out_bytes=0),
        ]
    )


def test_backpressure_aware_dispatch_reconfigures_instead_of_leaving_a_producer_blocked():
    # a (1 us) feeds b (4 us); 4 PEAs, one output slot each, reconfiguration 5 us. With DDS
    # both TBs are time-dynamic: one warm base PEA each and two unconfigured spares. The
    # queueing delay for b looks shorter than a reconfiguration, so the plain rule waits
    # for b's warm PEA while a's PEA sits blocked on its full buffer; the back-pressure
    # aware rule counts that blocked producer and reconfigures a spare for b.
    a = arch(peas=(4, 1), slots=1, rc_base=5.0)
    plain = simulate(_pipeline_dyn(), a, "octopus-dds", n=12, concurrency=12, bp_aware=False)
    aware = simulate(_pipeline_dyn(), a, "octopus-dds", n=12, concurrency=12, bp_aware=True)
    assert sum(aware.time.blocked) < 0.5 * sum(plain.time.blocked)
    assert aware.makespan < plain.makespan
    for sim in (plain, aware):
        T = sim.makespan
        for p in range(4):
            parts = sim.time.split(p)
            assert sum(parts) == pytest.approx(T)
    # without bounded buffers there is nothing to count: both rules agree
    free = arch(peas=(4, 1), slots=0, rc_base=5.0)
    x = simulate(_pipeline_dyn(), free, "octopus-dds", n=12, concurrency=12, bp_aware=False)
    y = simulate(_pipeline_dyn(), free, "octopus-dds", n=12, concurrency=12, bp_aware=True)
    assert x.makespan == y.makespan


def test_choked_stages_lend_their_free_peas_to_the_consumers_downstream():
    # A fan-out of 24 items through a three-stage chain r1 -> r2 -> r3 on 8 PEAs with one
    # output slot each. Serving the longest queue first floods r1, whose PEAs then block
    # on unread results while r2 and r3 have too few PEAs (a near-deadlock that only the
    # spill recovers). Back-pressure aware, the TBUs of stages with no blocked PEA are
    # served first and borrow free PEAs of choked stages, so the chain drains.
    wf = workflow(
        [
            task("src", 1.0, ["fan"], out_bytes=0),
            {"id": "fan", "type": "fanout", "count": 24, "body": "r1", "join": "j"},
            task("r1", 2.0, ["r2"], out_bytes=0),
            task("r2", 2.0, ["r3"], out_bytes=0),
            task("r3", 2.0, ["j"], out_bytes=0),
            {"id": "j", "type": "join"},
        ]
    )
    a = arch(peas=(4, 2), slots=1, rc_base=1.0)
    plain = simulate(wf, a, "octopus-dds-adaptive", n=2, concurrency=2, bp_aware=False)
    aware = simulate(wf, a, "octopus-dds-adaptive", n=2, concurrency=2, bp_aware=True)
    assert aware.buffers.spills < plain.buffers.spills
    assert sum(aware.time.blocked) < 0.5 * sum(plain.time.blocked)
    assert aware.makespan < 0.5 * plain.makespan


def _dyn_chain():
    # a fan-out of 24 items through three time-dynamic stages: DDS gives each a warm base
    # share of half its proportional share, and the rest of the cluster is spare
    d = {"dist": "lognormal", "mean": 2.0, "cv": 0.5}
    return workflow(
        [
            task("src", 1.0, ["fan"], out_bytes=0),
            {"id": "fan", "type": "fanout", "count": 24, "body": "r1", "join": "j"},
            task("r1", d, ["r2"], out_bytes=0),
            task("r2", d, ["r3"], out_bytes=0),
            task("r3", d, ["j"], out_bytes=0),
            {"id": "j", "type": "join"},
        ]
    )


def test_dds_alone_lends_spare_peas_of_a_choked_stage_downstream():
    # Without adaptive borrowing, DDS's only elastic resource is its spare pool. Spare PEAs
    # warm for the first stage used to stay with it while it had a queue, so it kept
    # producing into full buffers while the stages downstream starved. Back-pressure aware,
    # spare PEAs of a choked TB go to the un-choked consumers.
    a = arch(peas=(4, 2), slots=1, rc_base=1.0)
    plain = simulate(_dyn_chain(), a, "octopus-dds", n=2, concurrency=2, bp_aware=False)
    aware = simulate(_dyn_chain(), a, "octopus-dds", n=2, concurrency=2, bp_aware=True)
    assert plain.sched.classes[1:] == ["time-dynamic"] * 3
    assert sum(aware.time.blocked) < 0.5 * sum(plain.time.blocked)
    assert aware.makespan < 0.7 * plain.makespan


def test_elastic_spare_pool_follows_the_longer_expected_wait():
    # Spare PEAs warm for `u` go to `tb` when tb's expected queueing delay exceeds u's by more
    # than tb's reconfiguration; they stay while the difference is smaller.
    a = arch(peas=(4, 2), slots=0, rc_base=1.0)
    sim = simulate(_dyn_chain(), a, "octopus-dds", n=1)
    s = sim.sched
    r1, r2 = 1, 2
    sim.ewma[r1] = sim.ewma[r2] = 2.0
    s.nwarm[0][r1] = s.nwarm[0][r2] = 1
    rc = sim.physics.rc_us[r2]
    s.q[0][r1].extend([0])  # u = r1 waits 2 x 1 / 1 = 2 us
    s.q[0][r2].clear()  # tb = r2 waits 2 x (0 + 1) / 1 = 2 us: no gain
    assert not s._spare_lends(0, r1, r2, -1)  # -1: blocked PEAs not counted
    n = int((rc + 2.0) / 2.0) + 1  # r2's wait 2 x (n + 1) exceeds r1's 2 us by more than rc
    s.q[0][r2].extend([0] * n)
    assert s._spare_lends(0, r1, r2, -1)
    s.elastic = False
    assert not s._spare_lends(0, r1, r2, -1)
    blk = sim.buffers.blocked_count  # cluster 0's counts start at 0
    assert not s._spare_lends(0, r1, r2, 0)  # counted, none blocked
    blk[r1] += 1
    assert s._spare_lends(0, r1, r2, 0)  # a choked r1 lends anyway
    blk[r1] -= 1
    s.q[0][r1].clear()
    assert s._spare_lends(0, r1, r2, -1)  # no queue: nothing to keep them for


def test_a_stuck_cluster_gives_its_free_peas_to_any_tb_that_can_start():
    # Adaptive TBUs lend a TB's free PEAs only when its queue is empty (or it is choked). A
    # TB of footprint 2 with a queue and one free PEA cannot start and keeps the PEA; if every
    # other PEA of the cluster is blocked, nothing will ever free one there (a buffer deadlock
    # local to the cluster). When nothing runs in the cluster, the PEA goes to a TB that can
    # start; while something runs, the owner keeps it (a PEA will come free).
    wf = workflow(
        [
            task("x", 4.0, ["y"], footprint=2, out_bytes=0),
            task("y", 1.0, ["z"], out_bytes=0),
            task("z", 1.0, out_bytes=0),
        ]
    )
    a = arch(peas=(4, 1), slots=1)
    sim = simulate(wf, a, "octopus-dds-adaptive", n=2, concurrency=2, period_us=1e9)
    s = sim.sched
    x, y = 0, 1
    ky = next(k for k, nd in enumerate(sim.inv.node) if nd == y)
    kx = next(k for k, nd in enumerate(sim.inv.node) if nd == x)
    started = []
    s.api.start = lambda k, peas, t: started.append((k, list(peas)))
    p0 = s.fown[0][x][0]
    for fl in (*s.fown[0], *s.fsp[0]):  # the other PEAs are out (blocked, in this scene)
        fl.clear()
    s.fown[0][x].append(p0)
    s.nfree[0] = 1  # the scheduler's count of the cluster's free PEAs, as in the scene
    s.q[0][x].append(kx)  # x has a queue: it does not lend its PEA
    s.nwarm[0][y] = 0
    sim.pea.running[p0 ^ 1] = True  # something still runs in the cluster: y waits
    sim.cluster_running[0] = 1  # (the core counts running PEAs per cluster)
    assert not s._place(0, ky, 10.0)
    sim.pea.running[p0 ^ 1] = False  # nothing runs: y takes x's stranded PEA
    sim.cluster_running[0] = 0
    assert s._place(0, ky, 10.0)
    assert started == [(ky, [p0])]
    s.fown[0][x].append(p0)
    s.nfree[0] = 1
    s.liveness = False  # the rule before: x keeps a PEA it cannot use
    assert not s._place(0, ky, 10.0)


def test_adaptive_recommendation_has_no_cluster_local_buffer_deadlock():
    # Regression (recommendation, chip, seed 1, DDS + adaptive): the rank stages borrowed the
    # PEAs of the stages downstream of them, which ended blocked holding rank results; one
    # cluster was left with 63 blocked PEAs and one PEA of `retrieve` (footprint 2) that its
    # owner could not use, and it stalled until the other clusters ran out of work and the
    # core spilled its buffers (63 spills; on 120 instances 55.5 ms, 32.2 ms fixed; on the
    # 60 here 35.9 ms, 31.0 ms fixed).
    cw, a = prepare("recommendation", "chip", "high")
    sim = run_one(cw, a, "octopus-dds-adaptive", 1, 60)
    assert sim.buffers.spills == 0
    assert sim.makespan < 32_000.0
    old = run_one(cw, a, "octopus-dds-adaptive", 1, 60, liveness=False)
    assert old.buffers.spills > 0 and old.makespan > 1.1 * sim.makespan


@pytest.mark.parametrize("sched", ["octopus-dds", "octopus", "octopus-central"])
def test_zero_duration_task_with_bounded_buffers(sched):
    """A TB of zero work has an EWMA duration of 0, so its expected wait is 0, and the
    back-pressure test divided the reconfiguration cost by it (ZeroDivisionError)."""
    doc = workflow(
        [
            task("a", 1, ["x", "y"], join="j"),
            task("x", 0, ["j"]),
            task("y", 3, ["j"]),
            {"id": "j", "type": "join"},
        ]
    )
    a = arch(clusters=(2, 1), peas=(2, 2), slots=1, contention=True, hop=0.01, rc_base=1.0)
    sim = simulate(doc, a, sched, n=6, concurrency=3, strict=True)
    assert sim.finished == 6 and sim.makespan > 0


@pytest.mark.parametrize(
    "sched,peas",
    [("static", (2, 1)), ("greedy", (1, 1)), (TUTORIAL_SPEC, (1, 1))],
    ids=["static", "greedy", "tutorial"],
)
def test_a_buffer_deadlock_is_recovered_before_a_later_arrival(sched, peas):
    """A loop whose body reads its previous trip's result, held in the one slot of the only
    PEA the body may run on (its partition, or the cluster): the PEA is blocked by its own
    reader, nothing runs, and the core spills the buffer. In
    an open loop the spill waited until no event at all was left, a later arrival included,
    so the first instance stood still until the second arrived (1 s later) with the
    schedulers that do not tick. An arrival brings new work, never the blocked data's
    readers: the deadlock is recovered when it happens."""
    doc = workflow(
        [
            {
                "id": "lp",
                "type": "loop",
                "body": "y",
                "exit": "z",
                "trips": {"dist": "fixed", "value": 2},
                "max_trips": 2,
            },
            task("y", 10.0, ["lp"], out_bytes=1000),
            task("z", 10.0),
        ]
    )
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    a = arch(clusters=(1, 1), peas=peas, slots=1)
    alone, both = (
        Simulator(cw, a, make_scheduler(sched), Arrivals(len(ts), ts, len(ts)), strict=True).run()
        for ts in ([0.0], [0.0, 1e6])
    )
    assert alone.buffers.spills > 0
    assert both.instances.finish[0] == alone.instances.finish[0] < 100.0
    assert both.instances.finish[1] == 1e6 + alone.instances.finish[0]

"""Scheduler behaviour: degenerate cases and the strategies' mechanisms."""

import math

import pytest
from octo_helpers import arch, fan_branch_loop, simulate, task, workflow

from octopus.report.metrics import summarize
from octopus.runner import prepare, run_one
from octopus.sched.base import partition


def test_partition_is_proportional_with_minimums():
    assert partition(10, [1.0, 1.0], [1, 1]) == [5, 5]
    assert partition(10, [9.0, 1.0], [1, 4]) == [6, 4]
    assert sum(partition(64, [3.3, 1.1, 7.7, 0.0], [4, 1, 1, 1])) == 64


def test_reactive_with_infinite_threshold_is_static():
    cw, a = prepare("driving_perception", "chip")
    prof = cw.profile(n=50)
    st = run_one(cw, a, "static", 1, 16, profile=prof)
    re = run_one(cw, a, "reactive", 1, 16, profile=prof, threshold=math.inf)
    assert re.makespan == st.makespan
    assert re.sched.moves == 0


def test_octopus_classifies_dynamicity():
    doc = workflow(
        [
            task("stable", 100.0, ["fan"]),
            {
                "id": "fan",
                "type": "fanout",
                "count": {"dist": "lognormal", "mean": 6, "cv": 1.0},
                "body": "freq",
                "join": "j",
            },
            task("freq", 10.0, ["j"]),
            {"id": "j", "type": "join", "next": ["timed"]},
            task("timed", {"dist": "lognormal", "mean": 50, "cv": 1.0}),
        ]
    )
    sim = simulate(doc, arch(peas=(4, 4)), "octopus", n=2)
    assert sim.sched.classes == ["stable", "frequency-dynamic", "time-dynamic"]


def test_octopus_removes_starvation_of_static_partition():
    """Static leaves PEAs idle while work waits elsewhere; Octopus lends them out."""
    cw, a = prepare("speech_assistant", "chip")
    prof = cw.profile(n=100)
    st = summarize(run_one(cw, a, "static", 0, 60, profile=prof))
    oc = summarize(run_one(cw, a, "octopus", 0, 60, profile=prof))
    assert oc["idle_breakdown"]["starved"] < 0.5 * st["idle_breakdown"]["starved"]
    assert oc["makespan_us"] < st["makespan_us"]


def test_central_balancer_acts_late_diffusion_moves_work():
    cw, a = prepare("video_recognition", "chiplet")
    prof = cw.profile(n=50)
    d = run_one(cw, a, "octopus", 0, 64, profile=prof)
    c = run_one(cw, a, "octopus-central", 0, 64, profile=prof)
    assert d.sched.migrated > 0 and c.sched.migrated > 0
    assert c.sched.balancer == "central" and d.sched.balancer == "diffusion"


def test_unlimited_reference_uses_the_arch_throughput():
    from octopus.arch.config import load_arch
    from octopus.experiments import free_pool_reference as unlimited_reference

    cw, a1 = prepare("recommendation", "chip")
    a10 = load_arch("chip")
    a10.throughput_tops = 10.0
    r1 = unlimited_reference(cw, a1, 0, 12)
    r10 = unlimited_reference(cw, a10, 0, 12)
    assert r10 < r1 / 5


def test_free_pool_reference_sits_between_the_window_bound_and_a_scheduler():
    # the unlimited pool replays the window bound exactly; the architecture's own PEA count
    # in one free pool is slower (queueing), and no slower than greedy on the real chip
    from octopus.experiments import free_pool_reference

    cw, a = prepare("recommendation", "chip")
    prof = cw.profile(n=50)
    g = run_one(cw, a, "greedy", 0, 24, profile=prof)
    sg = summarize(g)
    unl = free_pool_reference(cw, a, 0, 24)
    pool = free_pool_reference(cw, a, 0, 24, a.n_peas)
    assert sg["window_bound_us"] == pytest.approx(max(unl, sg["work_over_capacity_us"]))
    assert unl <= pool + 1e-6
    assert pool <= g.makespan


def test_balancers_move_work_only_when_the_transfer_pays():
    # src (1 us) fans out 16 items of 10 us that each read its 640 KB output. Two clusters of
    # 2 PEAs on two dies: a die crossing serialises 640 KB in 40 us at 16 GB/s, and the items
    # moved by one step queue behind each other on that link. Cost aware, a balancer moves
    # an item only while the transfer (with those ahead of it) is shorter than the queueing
    # delay it saves; blind, it ships most of the fan-out over the die link.
    wf = workflow(
        [
            task("src", 1.0, ["fan"], out_bytes=640_000),
            {"id": "fan", "type": "fanout", "count": 16, "body": "w", "join": "j"},
            task("w", 10.0, ["j"], out_bytes=0),
            {"id": "j", "type": "join"},
        ]
    )
    a = arch(clusters=(2, 1), peas=(2, 1), per_die=(1, 1), hop=0.01, bw=64.0, contention=True)
    for bal in ("diffusion", "central"):
        aware = simulate(wf, a, "octopus", period_us=5.0, balancer=bal, cost_aware=True)
        blind = simulate(wf, a, "octopus", period_us=5.0, balancer=bal, cost_aware=False)
        assert aware.sched.migrated < 0.5 * blind.sched.migrated
        assert sum(aware.time.xfer) < sum(blind.time.xfer)
        assert aware.makespan < 0.9 * blind.makespan
    # with no data to move, the check lets the same work move
    free = workflow(
        [
            task("src", 1.0, ["fan"], out_bytes=0),
            {"id": "fan", "type": "fanout", "count": 16, "body": "w", "join": "j"},
            task("w", 10.0, ["j"], out_bytes=0),
            {"id": "j", "type": "join"},
        ]
    )
    x = simulate(free, a, "octopus", period_us=5.0, cost_aware=True)
    y = simulate(free, a, "octopus", period_us=5.0, cost_aware=False)
    assert x.makespan == y.makespan and x.sched.migrated == y.sched.migrated > 0


@pytest.mark.parametrize(
    "name", ["octopus", "octopus-central", "octopus-dds", "octopus-dds-adaptive"]
)
def test_a_wide_task_with_too_few_warm_peas_does_not_wait_for_them(name):
    """A TB of footprint 2 left with one warm PEA (the other reconfigured by a later TB) in
    an all-spare cluster: waiting for warm PEAs cannot place it, so it reconfigures a spare
    one. (Found by hypothesis: the second instance's entry task waited forever.)"""
    doc = workflow(
        [
            task("t0", 1.0, ["t1"], footprint=2, out_bytes=0, config_bytes=0),
            task("t1", 1.0, ["fan"], out_bytes=0, config_bytes=0),
            *fan_branch_loop(0, 1.0, 1.0, 1.0, 1.0),
        ]
    )
    a = arch(clusters=(1, 1), peas=(2, 2), slots=0, rc_base=30.0, hop=0.05)
    sim = simulate(doc, a, name, n=2, concurrency=1, strict=True)
    assert len(sim.instances.finish) == 2 and all(math.isfinite(f) for f in sim.instances.finish)


@pytest.mark.parametrize(
    "name", ["octopus", "octopus-central", "octopus-dds", "octopus-dds-adaptive"]
)
def test_without_dds_a_cluster_too_small_to_partition_still_lends_its_spare_peas(name):
    """Two TBs on a cluster of one PEA: too small for a partition, every PEA is spare. The
    spare pool lent its PEAs only with `dds`, so without it nothing ever started (the
    adaptive TBUs' liveness rule, when on, placed work only once the cluster was idle).
    With every PEA spare there are no base shares to discriminate: the run is the one
    with `dds`."""
    doc = workflow(
        [task("a", 10.0, ["b"], out_bytes=0, config_bytes=0), task("b", 20.0, out_bytes=0)]
    )
    a = arch(clusters=(1, 1), peas=(1, 1), rc_base=30.0)
    runs = [
        simulate(doc, a, name, n=3, concurrency=2, strict=True, dds=dds, liveness=False)
        for dds in (True, False)
    ]
    assert all(s.finished == 3 for s in runs)
    assert runs[0].makespan == runs[1].makespan
    assert list(runs[0].inv.t_start) == list(runs[1].inv.t_start)

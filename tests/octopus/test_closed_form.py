"""Closed-form cases: the simulator must reproduce hand-computed makespans."""

import math

import pytest
from octo_helpers import arch, simulate, task, workflow

from octopus.sched import NAMES


@pytest.mark.parametrize("scheduler", ["greedy", "octopus"])
def test_chain_on_one_pea_takes_sum_of_block_times(scheduler):
    works = [120.0, 35.5, 300.25, 7.0]
    ids = [f"t{i}" for i in range(len(works))]
    nodes = [
        task(i, w, [ids[j + 1]] if j + 1 < len(ids) else [], out_bytes=0)
        for j, (i, w) in enumerate(zip(ids, works))
    ]
    sim = simulate(workflow(nodes), arch(peas=(1, 1)), scheduler)
    assert sim.makespan == pytest.approx(sum(works))


def test_static_rejects_a_cluster_too_small_for_its_partition():
    nodes = [task("a", 1.0, ["b"]), task("b", 1.0)]
    with pytest.raises(ValueError, match="cannot hold one group per task block"):
        simulate(workflow(nodes), arch(peas=(1, 1)), "static")


def _fanout(n, d, src=10.0, out=0):
    return workflow(
        [
            task("src", src, ["fan"], out_bytes=out),
            {"id": "fan", "type": "fanout", "count": n, "body": "w", "join": "j"},
            task("w", d, ["j"]),
            {"id": "j", "type": "join"},
        ]
    )


@pytest.mark.parametrize("n,p", [(1, 4), (4, 4), (5, 4), (13, 4), (16, 8), (17, 3)])
def test_fanout_takes_ceil_n_over_p_rounds(n, p):
    d, src, ctrl = 50.0, 10.0, 0.5
    sim = simulate(_fanout(n, d, src), arch(peas=(p, 1), ctrl=ctrl), "greedy")
    assert sim.makespan == pytest.approx(src + ctrl + math.ceil(n / p) * d)


def test_transfer_follows_hops_latency_and_bandwidth():
    a = arch(clusters=(2, 2), peas=(4, 4), per_die=(1, 2), hop=0.05, bw=32.0)
    nbytes = 64000
    # (0,0) -> (3,2), same die: 5 hops
    dst = a.cluster_peas[0][2 * 4 + 3]
    assert a.transfer_us(0, dst, nbytes) == pytest.approx(5 * 0.05 + nbytes / 32000.0)
    # crossing one die boundary: slower link, die-hop latency for the crossing
    far = a.cluster_peas[1][0]  # cluster 1 is the die to the right
    hops = abs(a.pea_x[far]) + abs(a.pea_y[far])
    assert a.transfer_us(0, far, nbytes) == pytest.approx(
        (hops - 1) * 0.05 + 0.3 + nbytes / 16000.0
    )
    assert a.transfer_us(7, 7, nbytes) == 0.0


def test_transfer_is_paid_in_the_simulation():
    hop, bw, nbytes = 0.25, 8.0, 40000
    a = arch(peas=(2, 1), hop=hop, bw=bw, ctrl=0.5)
    sim = simulate(_fanout(2, 30.0, 10.0, out=nbytes), a, "greedy")
    # one copy runs where the data is; the other is one hop away
    assert sim.makespan == pytest.approx(10.0 + 0.5 + hop + nbytes / (bw * 1000) + 30.0)
    assert sim.physics.noc_bytes == nbytes


def test_reconfiguration_cost_grows_with_config_bytes():
    nodes = [task("a", 10.0, ["b"], config_bytes=0), task("b", 10.0, config_bytes=80000)]
    sim = simulate(workflow(nodes), arch(peas=(1, 1), rc_base=1.0), "greedy")
    # greedy starts unconfigured: a pays base, b pays base + 80000 B / 8 GB/s
    assert sim.makespan == pytest.approx(20.0 + 1.0 + 1.0 + 10.0)
    assert sim.physics.n_reconfig == 2


def test_every_scheduler_name_builds_and_runs():
    for name in NAMES:
        sim = simulate(_fanout(6, 5.0), arch(clusters=(2, 1), peas=(2, 2)), name, n=4)
        assert sim.finished == 4


def test_window_bound_replays_the_closed_loop_with_critical_paths():
    from octopus.report.metrics import window_bound

    assert window_bound([3.0, 3.0, 3.0, 3.0], 2) == pytest.approx(6.0)
    # instance 2 is admitted when instance 1 ends (1), instance 3 when 2 ends (2)
    assert window_bound([5.0, 1.0, 1.0, 1.0], 2) == pytest.approx(5.0)
    # a long instance admitted late sets the makespan: (1, 1) -> 2, 2 -> 2 + 10
    assert window_bound([1.0, 1.0, 1.0, 1.0, 10.0], 2) == pytest.approx(12.0)
    assert window_bound([4.0, 2.0], 8) == pytest.approx(4.0)


def test_greedy_with_free_resources_reaches_the_window_bound():
    # with more PEAs than work can use and free reconfiguration and data movement, every
    # instance takes exactly its critical path, so the closed loop meets the window bound
    from octopus.report.metrics import lower_bound

    dyn = {"dist": "lognormal", "mean": 20.0, "cv": 0.8}
    wf = workflow(
        [
            task("src", dyn, ["fan"], out_bytes=0),
            {
                "id": "fan",
                "type": "fanout",
                "count": {"dist": "uniform", "low": 0, "high": 6},
                "body": "w",
                "join": "j",
            },
            task("w", dyn, ["j"], out_bytes=0),
            {"id": "j", "type": "join", "next": ["z"]},
            task("z", dyn, out_bytes=0),
        ]
    )
    sim = simulate(wf, arch(peas=(64, 1), ctrl=0.5), "greedy", n=12, concurrency=3, seed=4)
    b = lower_bound(sim)
    assert b["window_bound_us"] >= b["bound_us"]
    assert sim.makespan == pytest.approx(b["window_bound_us"])


@pytest.mark.parametrize("scheduler", ["greedy", "static", "octopus"])
def test_lower_bound_holds_when_the_data_plane_decides_faster(scheduler):
    # a (10 us) -> branch -> b (10 us): on the data plane (1 us) the baselines take 21 us,
    # Octopus on the control plane (5 us) 25 us; the bound is 21 us, valid for all of them
    # (it charged the control-plane latency alone: 25 us, above the baselines' 21)
    from octopus.report.metrics import lower_bound

    doc = workflow(
        [
            task("a", 10.0, ["br"]),
            {"id": "br", "type": "branch", "next": ["b"], "probs": [1.0]},
            task("b", 10.0),
        ]
    )
    sim = simulate(doc, arch(peas=(2, 1), ctrl=5.0, data_plane=1.0), scheduler)
    assert sim.makespan == pytest.approx(25.0 if scheduler == "octopus" else 21.0)
    b = lower_bound(sim)
    assert b["bound_us"] == pytest.approx(21.0)
    assert sim.makespan >= b["window_bound_us"] - 1e-9

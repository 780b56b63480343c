"""The core agrees with an independent SimPy model, and a seed fixes the whole trace."""

import json

import pytest
from octo_helpers import fan_branch_loop, task, workflow

from octopus.bench import cross_check, simple_arch
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.report.trace import trace_events
from octopus.runner import prepare, run_one


def _dynamic_workflow():
    return workflow(
        [
            task("a", {"dist": "lognormal", "mean": 40, "cv": 0.5}, ["fan"]),
            {
                "id": "fan",
                "type": "fanout",
                "count": {"dist": "uniform", "low": 0, "high": 20},
                "body": "b",
                "join": "j",
            },
            task("b", {"dist": "uniform", "low": 5, "high": 90}, ["j"]),
            {"id": "j", "type": "join", "next": ["br"]},
            {"id": "br", "type": "branch", "next": ["c", "lp"], "probs": [0.3, 0.7]},
            task("c", {"dist": "normal", "mean": 30, "std": 10}),
            {
                "id": "lp",
                "type": "loop",
                "body": "d",
                "exit": "e",
                "continue_prob": 0.5,
                "max_trips": 5,
            },
            task("d", {"dist": "lognormal", "mean": 25, "cv": 1.0}, ["lp"]),
            task("e", 3.0),
        ]
    )


@pytest.mark.parametrize("peas,conc", [(4, 3), (16, 12), (64, 40)])
def test_simpy_model_gives_the_same_makespan(peas, conc):
    cw = CompiledWorkflow(parse_workflow(_dynamic_workflow()), "high")
    r = cross_check(cw, n_peas=peas, n_inst=60, conc=conc, seed=3)
    assert r["simpy_makespan_us"] == pytest.approx(r["core_makespan_us"], rel=1e-9)
    assert r["tasks"] > 60


def test_shipped_workflow_crosscheck():
    cw, _ = prepare("recommendation", "chip")
    for b in cw.wf.nodes.values():
        if b.type == "task":
            b.footprint = 1
    cw = CompiledWorkflow(cw.wf, "medium")
    r = cross_check(cw, n_peas=32, n_inst=40, conc=10, seed=1)
    assert r["simpy_makespan_us"] == pytest.approx(r["core_makespan_us"], rel=1e-9)


def test_simple_configuration_is_free_with_data_and_configurations():
    """The simple configuration moves data and loads configurations in exactly no time.
    It used bandwidths of 1e12 GB/s: about 1e-9 us per transfer or reconfiguration, which
    broke the ties of fixed work times in another order than the SimPy model (which has
    no such costs), and this workflow's makespans differed (918.0 against 928.0 us)."""
    a = simple_arch(4, 0.5)
    assert a.transfer_us(0, 3, 10**9) == 0.0
    assert a.reconfig_us(10**9) == 0.0
    doc = workflow(
        [
            task("t0", 40.0, ["fan"], out_bytes=801087, config_bytes=411919),
            *fan_branch_loop(2, 10.0, 10.0, 20.0, 10.0, w_kw={"out_bytes": 996427}),
        ]
    )
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    r = cross_check(cw, n_peas=2, n_inst=20, conc=4, seed=31, ctrl_us=3.0)
    assert r["core_makespan_us"] == r["simpy_makespan_us"]


@pytest.mark.parametrize("sched", ["octopus", "reactive", "octopus-central"])
def test_same_seed_same_trace(sched):
    cw, a = prepare("video_recognition", "chip", "high")
    prof = cw.profile(n=50)
    runs = [
        run_one(cw, a, sched, seed=5, instances=12, record=True, profile=prof) for _ in range(2)
    ]
    t1, t2 = (json.dumps(trace_events(s)) for s in runs)
    assert t1 == t2
    other = run_one(cw, a, sched, seed=6, instances=12, record=True, profile=prof)
    assert json.dumps(trace_events(other)) != t1


def test_instance_sampling_is_seeded_and_independent():
    cw, _ = prepare("agent_loop", "chip")
    x = cw.sample(cw.instance_rng(1, 7))
    y = cw.sample(cw.instance_rng(1, 7))
    z = cw.sample(cw.instance_rng(1, 8))
    assert (x.node, x.work, x.preds) == (y.node, y.work, y.preds)
    assert (x.node, x.work) != (z.node, z.work)


def test_the_free_pool_references_are_free_too():
    """free_pool_reference built its pools with 1e12 GB/s bandwidths, the same near-zero
    costs as the cross-check's machine had; both now take `free_arch`'s exact zeros."""
    from octopus.arch.config import free_arch

    a = free_arch("pool", (128, 64), 0.5, throughput_tops=2.0)
    assert a.n_peas == 128 * 64 and a.throughput_tops == 2.0
    assert a.transfer_us(0, a.n_peas - 1, 10**9) == 0.0 and a.reconfig_us(10**9) == 0.0
    assert a.control_plane_us == a.data_plane_us == 0.5


def test_the_trace_ends_at_the_makespan():
    """A pre-configuration still running when the last instance finishes is cut at the
    makespan by the time accounting (accounting.close); the trace drew it past the end, and
    drew one started after the end at all."""
    from types import SimpleNamespace

    inv = SimpleNamespace(node=[], peas=[], t_start=[], t_end=[], inst=[])
    sim = SimpleNamespace(
        cw=SimpleNamespace(names=["a", "b"]),
        arch=SimpleNamespace(pea_cluster=[0, 0], n_clusters=1),
        n_tasks=2,
        inv=inv,
        makespan=100.0,
        physics=SimpleNamespace(reconf_spans=[(0, 10.0, 20.0, 0), (1, 90.0, 130.0, 1)]),
    )
    spans = [e for e in trace_events(sim) if e["ph"] == "X"]
    assert [(e["tid"], e["ts"], e["dur"]) for e in spans] == [(0, 10.0, 10.0), (1, 90.0, 10.0)]
    sim.physics.reconf_spans.append((1, 100.0, 110.0, 0))
    assert len([e for e in trace_events(sim) if e["ph"] == "X"]) == 2

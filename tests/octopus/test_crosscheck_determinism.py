"""The core agrees with an independent SimPy model, and a seed fixes the whole trace."""

import json

import pytest
from octo_helpers import task, workflow

from octopus.bench import cross_check
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

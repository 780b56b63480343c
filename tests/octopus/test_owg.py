"""Distributions, dynamicity levels, sampling structure and arrival processes."""

import math
import random

import pytest
from octo_helpers import task, workflow

from octopus.owg.arrival import make_arrivals
from octopus.owg.dist import parse_dist
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow

SPECS = [
    5.0,
    {"dist": "uniform", "low": 2, "high": 10},
    {"dist": "normal", "mean": 50, "std": 10},
    {"dist": "lognormal", "mean": 40, "cv": 1.2},
    {"dist": "empirical", "values": [1, 10, 100], "weights": [5, 3, 2]},
    {
        "dist": "mixture",
        "components": [
            {"weight": 0.7, "dist": "fixed", "value": 4},
            {"weight": 0.3, "dist": "lognormal", "mean": 30, "cv": 0.5},
        ],
    },
]


@pytest.mark.parametrize("spec", SPECS)
def test_sample_mean_matches_and_spread_shrinks_cv(spec):
    d = parse_dist(spec, "node 'x': field 'work'")
    rng = random.Random(1)
    f = d.sampler()
    xs = [f(rng) for _ in range(20000)]
    assert all(x >= 0 for x in xs)
    assert sum(xs) / len(xs) == pytest.approx(d.mean(), rel=0.05)
    low = d.scaled(0.25)
    assert low.mean() == pytest.approx(d.mean())
    if d.kind != "fixed":
        assert low.cv() < d.cv()
    else:
        assert d.cv() == 0.0


def test_fanout_and_loop_unroll_as_specified():
    doc = workflow(
        [
            task("a", 1.0, ["fan"]),
            {"id": "fan", "type": "fanout", "count": 7, "body": "b", "join": "j"},
            task("b", 2.0, ["j"]),
            {"id": "j", "type": "join", "next": ["lp"]},
            {"id": "lp", "type": "loop", "body": "c", "exit": "d", "trips": 3, "max_trips": 9},
            task("c", 3.0, ["lp"]),
            task("d", 4.0),
        ]
    )
    cw = CompiledWorkflow(parse_workflow(doc))
    inst = cw.sample(random.Random(0))
    names = [cw.names[n] for n in inst.node]
    assert names.count("b") == 7 and names.count("c") == 3 and names.count("d") == 1
    assert names.count("lp") == 4  # a decision before each trip and the exit decision
    # the first loop decision waits for all 7 fanout branches (the join)
    first_lp = names.index("lp")
    assert len(inst.preds[first_lp]) == 7
    # topological order: predecessors come first
    assert all(j < k for k, ps in enumerate(inst.preds) for j in ps)


def test_continue_prob_loop_respects_bound():
    doc = workflow(
        [
            {
                "id": "lp",
                "type": "loop",
                "body": "c",
                "exit": "d",
                "continue_prob": 0.99,
                "max_trips": 4,
            },
            task("c", 1.0, ["lp"]),
            task("d", 1.0),
        ]
    )
    cw = CompiledWorkflow(parse_workflow(doc))
    for i in range(50):
        names = [cw.names[n] for n in cw.sample(random.Random(i)).node]
        assert 1 <= names.count("c") <= 4


def test_arrival_processes():
    p = make_arrivals(
        {"process": "poisson", "rate_per_cluster_per_ms": 2.0, "instances_per_cluster": 500},
        4,
        seed=3,
    )
    gaps = [b - a for a, b in zip(p.times, p.times[1:])]
    assert p.n == 2000 and math.isclose(sum(gaps) / len(gaps), 1000 / 8.0, rel_tol=0.1)
    b = make_arrivals({"process": "batch", "instances_per_cluster": 3}, 2, seed=0)
    assert b.times == [0.0] * 6
    c = make_arrivals(
        {"process": "closed", "concurrency_per_cluster": 2, "instances_per_cluster": 5}, 3, seed=0
    )
    assert c.times is None and c.concurrency == 6 and c.n == 15
    with pytest.raises(ValueError, match="process"):
        make_arrivals({"process": "bursty"}, 1, 0)


def test_continue_prob_loop_dispersion_follows_the_level():
    # a do-while loop's trip count is geometric; a level pulls it toward its mean (same
    # draws), so frequency dynamicity shrinks with the level as the other counts do
    doc = workflow(
        [
            {
                "id": "lp",
                "type": "loop",
                "body": "c",
                "exit": "d",
                "continue_prob": 0.7,
                "max_trips": 10,
            },
            task("c", 1.0, ["lp"]),
            task("d", 1.0),
        ],
        "lp",
    )
    wf = parse_workflow(doc)
    stats = {}
    for level in ("low", "medium", "high"):
        cw = CompiledWorkflow(wf, level)
        n = [
            [cw.names[x] for x in cw.sample(cw.instance_rng(3, i)).node].count("c")
            for i in range(4000)
        ]
        m = sum(n) / len(n)
        sd = (sum((x - m) ** 2 for x in n) / len(n)) ** 0.5
        stats[level] = (m, sd)
        assert all(1 <= x <= 10 for x in n)
    mean = sum(0.7**t for t in range(10))  # truncated geometric: 3.239...
    assert stats["high"][0] == pytest.approx(mean, rel=0.05)
    for level in ("low", "medium"):
        assert stats[level][0] == pytest.approx(mean, rel=0.12)  # rounding moves it a little
    assert stats["low"][1] < stats["medium"][1] < stats["high"][1]
    assert stats["low"][1] < 0.4 * stats["high"][1]


def test_branch_noise_follows_the_level_and_the_mix_is_kept():
    # Below the high level a branch decision takes a stratified (golden-ratio) point with
    # probability 1 - s: the mix over a window keeps its proportions, its noise shrinks
    doc = workflow(
        [
            {"id": "br", "type": "branch", "next": ["a", "b"], "probs": [0.3, 0.7]},
            task("a", 1.0),
            task("b", 1.0),
        ],
        "br",
    )
    wf = parse_workflow(doc)

    def window_counts(level, seed=0, w=20, n=100):
        cw = CompiledWorkflow(wf, level)
        picks = [
            cw.names[cw.sample(cw.instance_rng(seed, i), i, seed).node[1]] == "a"
            for i in range(w * n)
        ]
        return [sum(picks[k * w : (k + 1) * w]) for k in range(n)]

    sd = {}
    for level in ("low", "medium", "high"):
        c = window_counts(level)
        m = sum(c) / len(c)
        assert m == pytest.approx(0.3 * 20, rel=0.1)  # the mix is kept
        sd[level] = (sum((x - m) ** 2 for x in c) / len(c)) ** 0.5
    assert sd["low"] < sd["medium"] < sd["high"]
    assert sd["low"] < 0.7 * sd["high"]
    # the high level is the file as written: identical to plain i.i.d. sampling
    cw = CompiledWorkflow(wf, "high")
    assert cw.sample(cw.instance_rng(2, 5), 5, 2).node == cw.sample(cw.instance_rng(2, 5)).node


@pytest.mark.parametrize("spread", [-1.0, 2.0, float("nan")], ids=str)
def test_a_numeric_level_outside_0_1_is_refused(spread):
    """`CompiledWorkflow(wf, level)` takes a level's name or its spread; a spread of 2 (or
    -1) scaled dispersion past the file's, and NaN ran video_recognition to a makespan of
    0.0 without an error. A file's levels must be in [0, 1]; so must this one."""
    from octopus.owg import load_workflow

    with pytest.raises(ValueError, match=r"spread must be in \[0, 1\]"):
        CompiledWorkflow(load_workflow("video_recognition"), spread)
    assert CompiledWorkflow(load_workflow("video_recognition"), 0.25).spread == 0.25

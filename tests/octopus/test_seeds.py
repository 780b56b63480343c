"""Seeds: a negative seed is refused wherever one enters, and instance streams never alias.

`random.Random` seeds with the absolute value of an integer, so `--seed -1` ran and gave
the arrivals and instances of `--seed 1` (instance 0 of seed -1 drew from
Random(-1000003), which is Random(1000003), instance 0 of seed 1).
"""

import random

import pytest

from octopus.cli import main
from octopus.grid import parse_grid
from octopus.owg.arrival import make_arrivals
from octopus.owg.schema import MAX_INSTANCES
from octopus.runner import prepare, run_one

NEG = "a seed must be >= 0, got -1"


def test_random_ignores_the_sign_of_a_seed():
    """Why negative seeds are refused rather than passed on."""
    assert random.Random(-7).random() == random.Random(7).random()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "-w", "recommendation", "--instances", "2"],
        ["compare", "--suite", "recommendation", "--instances", "2", "--quiet"],
        ["load", "-w", "recommendation", "--rate", "1", "--instances", "2"],
        ["sweep", "--workflows", "recommendation", "--instances", "2", "--seeds", "1"],
        ["bench", "--instances", "2", "--simpy-instances", "1"],
    ],
)
def test_every_seed_option_refuses_a_negative_seed(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sweep's default --out folder would be made here
    with pytest.raises(SystemExit) as e:
        main([*argv, "--seed", "-1"])
    assert e.value.code == 2
    assert f"argument --seed: {NEG}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written
    with pytest.raises(SystemExit):
        main([*argv, "--seed", "1.5"])
    assert "expected an integer >= 0, got '1.5'" in capsys.readouterr().err


def test_a_grid_refuses_a_negative_seed():
    g = {"workflows": ["recommendation"], "architectures": ["chip"], "schedulers": ["greedy"]}
    with pytest.raises(ValueError, match=f"sweep grid: field 'seeds': {NEG}"):
        parse_grid({**g, "seeds": [0, -1]})
    with pytest.raises(ValueError, match="field 'seeds': a seed must be an integer"):
        parse_grid({**g, "seeds": [True]})


def test_the_python_entry_points_refuse_a_negative_seed(tmp_path):
    from octopus.experiments import compare_suite, sweep
    from octopus.openloop import arrival_times, load_sweep, run_at_rate
    from octopus.sched import make_scheduler
    from octopus.sim import Simulator

    cw, arch = prepare("recommendation", "chip")
    calls = [
        lambda: run_one(cw, arch, "greedy", -1, 2),
        lambda: run_at_rate(cw, arch, "greedy", 1.0, instances=2, seed=-1),
        lambda: load_sweep(cw, arch, "greedy", (0.5,), instances=2, seed=-1),
        lambda: arrival_times(1.0, 2, -1),
        lambda: make_arrivals({"process": "poisson"}, 4, -1),
        lambda: Simulator(cw, arch, make_scheduler("greedy"), seed=-1),
        lambda: cw.instance_rng(-1, 0),
        lambda: compare_suite("recommendation", seed=-1, instances=2, progress=False),
        lambda: sweep(str(tmp_path / "out"), ["recommendation"], seed=-1, seeds=1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=NEG):
            call()
    with pytest.raises(ValueError, match="a seed must be an integer >= 0, got 0.5"):
        run_one(cw, arch, "greedy", 0.5, 2)
    assert not (tmp_path / "out").exists()  # the sweep refused it before making its folder


def test_instance_streams_of_neighbouring_seeds_never_meet():
    """Instance i of seed s draws from Random(s * SEED_STRIDE + i): one-to-one while every
    index stays below SEED_STRIDE, which MAX_INSTANCES ensures and instance_rng checks."""
    from octopus.owg.sample import SEED_STRIDE

    cw, _ = prepare("recommendation", "chip")
    assert MAX_INSTANCES <= SEED_STRIDE
    last = MAX_INSTANCES - 1
    assert cw.instance_rng(0, last).random() != cw.instance_rng(1, 0).random()
    with pytest.raises(ValueError, match="instance index must be in"):
        cw.instance_rng(0, SEED_STRIDE)  # would be instance 0 of seed 1

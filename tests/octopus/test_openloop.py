"""Open-loop load: arrival processes, closed forms on one cluster, the capacity bound."""

import json
import math

import pytest
from octo_helpers import arch, task, workflow

from octopus.cli import main
from octopus.openloop import (
    arrival_times,
    capacity_bound_per_us,
    load_sweep,
    run_at_rate,
)
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.runner import prepare


def _mmc(c=4, mean=10.0):
    doc = workflow([task("a", {"dist": "exponential", "mean": mean}, out_bytes=0)])
    return CompiledWorkflow(parse_workflow(doc), "high"), arch(peas=(c, 1))


def erlang_c_sojourn(lam: float, mu: float, c: int) -> float:
    """Mean time in an M/M/c FCFS system: Erlang-C wait plus the service time."""
    a = lam / mu
    top = a**c / math.factorial(c) * c / (c - a)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam) + 1.0 / mu


def test_arrivals_keep_the_mean_rate():
    for proc in ("poisson", "bursty"):
        ts = arrival_times(0.5, 20000, 3, proc, burst=8.0)
        assert ts == sorted(ts) and len(ts) == 20000
        assert ts[-1] / len(ts) == pytest.approx(2.0, rel=0.1)
    bursty = arrival_times(0.5, 2000, 3, "bursty", burst=8.0)
    assert len(set(bursty)) < 0.3 * len(bursty)  # instances arrive together
    with pytest.raises(ValueError, match="rate must be positive"):
        arrival_times(0.0, 10, 0)
    with pytest.raises(ValueError, match="unknown arrival process"):
        arrival_times(1.0, 10, 0, "uniform")


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_single_tb_on_one_cluster_matches_erlang_c(rho):
    # one TB, exponential work, 4 PEAs, free transfer and configuration, FCFS on any free
    # PEA (greedy): an M/M/4 queue. The mean sojourn matches Erlang C within 3 standard
    # errors (batch means) at a fixed seed; a 3-server system (the wrong model) does not.
    # The service rate is the one the run drew (its mean work, here 2% below the nominal
    # 10 us): the test is about the queue, not about the sampler.
    cw, a = _mmc()
    lam = rho * 0.4  # per us
    p = run_at_rate(cw, a, "greedy", lam * 1000.0, instances=20000, seed=0)
    mu = 1.0 / p.critical_path_mean_us  # one task: the critical path is its work
    assert mu == pytest.approx(0.1, rel=0.03)
    want = erlang_c_sojourn(lam, mu, 4)
    assert abs(p.latency_mean_us - want) <= 3.0 * p.latency_se_us
    assert p.latency_se_us < 0.05 * want
    assert abs(p.latency_mean_us - erlang_c_sojourn(lam, mu, 3)) > 3.0 * p.latency_se_us
    assert p.utilization == pytest.approx(rho, rel=0.05)


def test_throughput_never_exceeds_the_capacity_bound():
    cw, a = prepare("video_recognition", "chip")
    prof = cw.profile()
    bound = capacity_bound_per_us(prof, a) * 1000.0
    over = run_at_rate(cw, a, "greedy", 2.0 * bound, instances=200, profile=prof)
    assert over.throughput_per_ms <= 1.05 * bound  # 5%: sampled work vs profiled mean
    res = load_sweep(
        cw, a, "greedy", fractions=(0.3, 0.8, 1.5), slo_us=1e12, refine=1, instances=60
    )
    assert res["capacity_at_slo_per_ms"] <= res["capacity_bound_per_ms"]
    assert res["capacity_vs_bound"] >= 0.8  # 1.5x the bound never counts: bisected to it


def test_capacity_at_slo_is_where_p99_crosses_it():
    cw, a = _mmc()
    res = load_sweep(cw, a, "greedy", fractions=(0.2, 0.5, 0.9), slo_mult=6.0, instances=3000)
    pts = res["points"]
    cap = res["capacity_at_slo_per_ms"]
    assert 0 < cap < res["capacity_bound_per_ms"]
    for p in pts:  # every measured rate at or below the capacity meets the SLO ...
        if p["rate_per_ms"] <= cap:
            assert p["latency_p99_us"] <= res["slo_us"]
    assert any(p["latency_p99_us"] > res["slo_us"] for p in pts)  # ... and one above misses


def test_cli_load_writes_json_and_plot(tmp_path):
    out = tmp_path / "load.json"
    plot = tmp_path / "load.png"
    args = ["load", "-w", "recommendation", "--instances", "40", "--fractions", "0.3", "0.9"]
    args += ["-s", "greedy", "-s", "static", "--json", str(out), "--plot", str(plot)]
    assert main(args) == 0
    import json

    res = json.loads(out.read_text())
    assert set(res["schedulers"]) == {"greedy", "static"}
    assert plot.stat().st_size > 0
    assert main(["load", "-w", "recommendation", "--fractions", "-1"]) == 2


def test_an_slo_below_the_critical_paths_tail_is_infeasible():
    # exponential work: the p99 of one task's critical path is about 4.6x its mean, so a
    # p99 SLO of 2x the mean is met at no load; 2x the p99 basis is met at low load
    cw, a = _mmc()
    tight = load_sweep(cw, a, "greedy", fractions=(0.1,), slo_mult=2.0, instances=2000, refine=0)
    assert tight["slo_infeasible"] and tight["capacity_at_slo_per_ms"] == 0.0
    assert tight["slo_floor_us"] > tight["slo_us"]
    ok = load_sweep(
        cw, a, "greedy", fractions=(0.1,), slo_mult=2.0, slo_basis="p99", instances=2000
    )
    assert not ok["slo_infeasible"] and ok["capacity_at_slo_per_ms"] > 0
    with pytest.raises(ValueError, match="slo_basis"):
        load_sweep(cw, a, "greedy", fractions=(0.1,), slo_basis="median", instances=20)


def _strict(text: str):
    """Parse as standard JSON: NaN and Infinity are not JSON (jq, JSON.parse reject them)."""

    def refuse(c):
        raise ValueError(f"not JSON: {c}")

    return json.loads(text, parse_constant=refuse)


def test_cli_load_json_is_standard_json_with_few_instances(tmp_path):
    """With fewer than 40 measured instances the batch-means standard error is undefined:
    it was written as the bare token NaN, which is not JSON; it is null now."""
    out = tmp_path / "l.json"
    args = ["load", "-w", "video_recognition", "--rate", "1", "--instances", "20"]
    assert main([*args, "-s", "greedy", "--json", str(out)]) == 0
    res = _strict(out.read_text())
    assert res["schedulers"]["greedy"]["latency_se_us"] is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["--rate", "inf"], ["--fractions", "0.5", "inf"]], ids=" ".join)
def test_an_infinite_rate_is_refused(capsys, args):
    """`load --rate inf` ran: every arrival at t = 0 (a batch), reported as a rate of
    "inf/ms (inf of bound)", exit 0; `--fractions inf` and a grid's `rates: [.inf]` did
    the same. NaN was already refused; infinity is refused alike."""
    from octopus.cli import main
    from octopus.grid import parse_grid

    assert main(["load", "-w", "recommendation", "--instances", "4", *args]) == 2
    assert "positive and finite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive and finite"):
        arrival_times(math.inf, 10, 0)
    grid = {"workflows": ["rag_qa"], "architectures": ["chip"], "schedulers": ["greedy"]}
    with pytest.raises(ValueError, match="field 'rates': 'closed' or a positive finite rate"):
        parse_grid({**grid, "rates": [math.inf]})


@pytest.mark.parametrize(
    "extra",
    [["--refine", "0"], ["--slo-us", "100"], ["--fractions", "0.5"], ["--slo-basis", "p99"]],
    ids=" ".join,
)
def test_one_rate_refuses_the_options_of_a_sweep(capsys, extra):
    """With --rate, load runs one rate and prints no SLO or capacity: --refine, --slo-*,
    --fractions were ignored without a word (only --sweep and --plot were refused)."""
    from octopus.cli import main

    argv = ["load", "-w", "recommendation", "--instances", "4", "--rate", "1", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--rate runs one rate" in err and extra[0] in err

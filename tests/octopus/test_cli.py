"""Command-line smoke tests: each command runs end to end on small inputs."""

import json

import pytest

from octopus.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "video_recognition" in out and "wafer" in out and "octopus" in out


def test_run_with_trace(tmp_path, capsys):
    trace = tmp_path / "t.json"
    rc = main(
        [
            "run",
            "--workflow",
            "driving_perception",
            "--arch",
            "chip",
            "--scheduler",
            "octopus",
            "--seed",
            "2",
            "--instances",
            "6",
            "--trace",
            str(trace),
            "--plots",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "makespan" in out and "lower bound" in out
    assert (tmp_path / "heatmap.png").exists() and (tmp_path / "utilization.png").exists()
    ev = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("ph") == "X" and e.get("cat") == "busy" for e in ev)


def test_run_reactive_sweeps_threshold(capsys):
    rc = main(["run", "-w", "recommendation", "-s", "reactive", "--instances", "8"])
    assert rc == 0
    assert "best threshold" in capsys.readouterr().out


def test_run_bad_workflow_reports_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema: octopus-owg/1\nentry: a\nnodes:\n  - {id: a, type: task, work: 1, next: [zz]}\n"
    )
    assert main(["run", "-w", str(bad)]) == 2
    assert "unknown successor 'zz'" in capsys.readouterr().err


def test_compare_json(tmp_path):
    out = tmp_path / "c.json"
    rc = main(
        [
            "compare",
            "--suite",
            "recommendation,speech_assistant",
            "--instances",
            "12",
            "--json",
            str(out),
            "--quiet",
            "--plots",
            str(tmp_path),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("mean_speedup", "max_speedup", "octopus_vs_bound", "speedups", "ceiling_speedups"):
        assert key in res
    assert set(res["speedups"]) == {"recommendation", "speech_assistant"}
    assert res["max_speedup"] >= res["mean_speedup"] > 0
    assert res["octopus_vs_bound"] >= 1.0  # nothing beats the lower bound
    for w in res["workflows"].values():
        # the ceiling is reactive / bound: no scheduler may beat it
        assert w["speedup"]["octopus"] <= w["ceiling_speedup"] + 1e-9
    assert (tmp_path / "ablation.png").exists()
    # the window bound is valid and at least as tight as the bound; the free pool sits
    # between it and full Octopus only up to scheduling anomalies, so just check presence
    assert res["octopus_vs_window_bound"] >= 1.0
    assert res["octopus_vs_window_bound"] <= res["octopus_vs_bound"] + 1e-9
    assert set(res["octopus_vs_free_pool"]) == {"recommendation", "speech_assistant"}


def test_compare_over_seeds(tmp_path, capsys):
    out = tmp_path / "c.json"
    args = ["compare", "--suite", "recommendation", "--instances", "8", "--quiet"]
    assert main([*args, "--seeds", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    ov = res["over_seeds"]
    assert ov["seeds"] == [0, 1]
    assert ov["mean_speedup"]["n"] == 2
    assert ov["speedups"]["recommendation"]["min"] <= res["speedups"]["recommendation"]
    assert res["speedups"]["recommendation"] <= ov["speedups"]["recommendation"]["max"]
    assert "over seeds [0, 1]" in capsys.readouterr().out


def test_bench_small(capsys):
    assert main(["bench", "--arch", "chip", "--instances", "20", "--simpy-instances", "30"]) == 0
    out = capsys.readouterr().out
    assert "events/s" in out and "faster than SimPy" in out and "makespans agree: True" in out


def test_sweep_writes_plots(tmp_path, capsys):
    out = tmp_path / "sw"
    assert (
        main(
            ["sweep", "--out", str(out), "--workflows", "recommendation", "--instances", "6"]
            + ["--seeds", "2"]
        )
        == 0
    )
    res = json.loads((out / "sweep.json").read_text())
    assert res["summary"]["seeds"] == [0, 1]
    assert len(res["dynamicity"]["recommendation"]["high"]) == 2
    sp = res["summary"]["spread_vs_scale_diffusion"]["wafer"]
    assert sp["n"] == 2 and sp["min"] <= sp["mean"] <= sp["max"]
    assert set(res["summary"]["speedup_vs_dynamicity"]) == {"low", "medium", "high"}
    assert set(res["summary"]["speedup_vs_scale_diffusion"]) == {"chip", "chiplet", "wafer"}
    assert (out / "speedup_vs_dynamicity.png").exists() and (out / "speedup_vs_scale.png").exists()


def test_compare_baselines_plugin_and_capacity(tmp_path, capsys):
    from octo_helpers import TUTORIAL_SPEC

    out = tmp_path / "c.json"
    args = ["compare", "--suite", "recommendation,video_recognition", "--instances", "8"]
    args += ["--quiet", "-s", TUTORIAL_SPEC, "--capacity", "30", "--json", str(out)]
    args += ["--plots", str(tmp_path)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    names = ("recommendation", "video_recognition")
    # one reactive setting for the whole suite: a setting every workflow ran, and never
    # better than each workflow's own best
    mp, th = res["fixed_reactive_setting"].split("/")
    assert mp in ("regions", "replicated") and float(th) > 0
    for n in names:
        w = res["workflows"][n]
        fixed = w["reactive_grid_makespan_us"][res["fixed_reactive_setting"]]
        assert fixed >= w["makespan_us"]["reactive"]
    assert res["mean_speedup_vs_fixed_reactive"] >= res["mean_speedup"] - 1e-9
    vs_static = [
        res["workflows"][n]["makespan_us"]["static"] / res["workflows"][n]["makespan_us"]["octopus"]
        for n in names
    ]
    assert res["max_speedup_vs_static"] == pytest.approx(max(vs_static))
    assert set(res["extra_speedups"][TUTORIAL_SPEC]) == set(names)
    for b in ("reactive", "fixed_reactive", "static"):
        r = res[f"capacity_ratio_vs_{b}"]
        assert r is not None and r["max"] >= r["mean"] > 0 and r["n"] >= 1
    for n in names:
        assert all(0 <= c <= 1.0 for c in res["capacity_vs_bound"][n].values())
    text = capsys.readouterr().out
    assert "vs fixed reactive" in text and "open-loop capacity" in text and "ShortestWait" in text
    assert (tmp_path / "capacity.png").stat().st_size > 0


def test_bench_profile_lists_where_the_time_goes(capsys):
    assert main(["bench", "--arch", "chip", "--instances", "8", "--profile", "40"]) == 0
    out = capsys.readouterr().out
    assert "cProfile of full Octopus on chip, 8 instances" in out
    assert "tottime" in out and "(start)" in out and "SimPy" not in out
    assert main(["bench", "--profile", "0"]) == 2
    assert "--profile must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, text, opt",
    [
        ("w.yaml", "schema: octopus-owg/1\nnodes: [ {id: a\n", "-w"),
        ("w.json", '{"schema": "octopus-owg/1", ', "-w"),
        ("a.yaml", "schema: [\n", "-a"),
    ],
)
def test_unparsable_file_is_a_clear_error(tmp_path, capsys, name, text, opt):
    """A YAML syntax error escaped as a yaml.ScannerError traceback (exit 1); a JSON one
    printed the decoder's message without saying which file."""
    bad = tmp_path / name
    bad.write_text(text)
    args = ["run", "-w", "video_recognition", "--instances", "2", "-s", "greedy"]
    args += [opt, str(bad)]
    assert main(args) == 2
    assert name in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, word",
    [
        (["run", "-w", "video_recognition", "-s", "greedy", "--instances", "0"], "instances"),
        (["run", "-w", "video_recognition", "-s", "greedy", "--instances", "-3"], "instances"),
        (["run", "-w", "video_recognition", "-s", "reactive", "--threshold", "nan"], "threshold"),
        (["run", "-w", "video_recognition", "-s", "reactive", "--threshold", "-1"], "threshold"),
        (["load", "-w", "video_recognition", "--rate", "nan", "--instances", "4"], "rate"),
        (["load", "-w", "video_recognition", "--fractions", "nan", "--instances", "4"], "fraction"),
        (["load", "-w", "video_recognition", "--slo-us", "nan", "--instances", "4"], "SLO"),
        (
            [
                "load",
                "-w",
                "video_recognition",
                "--process",
                "bursty",
                "--burst",
                "nan",
                "--rate",
                "1",
                "--instances",
                "4",
            ],
            "burst",
        ),
        (["compare", "--suite", "video_recognition", "--seeds", "0", "--quiet"], "seeds"),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_bad_numeric_options_exit_2(capsys, args, word):
    """--instances 0 silently ran the default count and -3 ran nothing (exit 0, all zero);
    NaN rates, fractions, SLOs, bursts and thresholds passed the '<= 0' checks and ran to
    nan results; --seeds 0 was ignored."""
    assert main(args) == 2
    assert word in capsys.readouterr().err


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_sweep_needs_a_seed(tmp_path, capsys, seeds):
    """--seeds 0 ran no point and crashed with ZeroDivisionError in the summary."""
    args = ["sweep", "--out", str(tmp_path), "--seeds", seeds, "--workers", "1"]
    assert main(args) == 2
    assert "--seeds" in capsys.readouterr().err


def test_bench_needs_simpy_instances(capsys):
    """--simpy-instances 0 compared two empty runs and printed 'makespans agree: False'."""
    assert main(["bench", "--arch", "chip", "--instances", "2", "--simpy-instances", "0"]) == 2
    assert "--simpy-instances" in capsys.readouterr().err


def test_compare_capacity_must_not_be_negative(capsys):
    """--capacity -5 is truthy: it ran the whole comparison, then open-loop runs of -5
    instances, which failed (division by zero) only at the end."""
    args = ["compare", "--suite", "video_recognition", "--instances", "4", "--quiet"]
    assert main([*args, "--capacity", "-5"]) == 2
    assert "--capacity" in capsys.readouterr().err


def test_reactive_threshold_sweep_trace_has_its_reconfigurations(tmp_path, capsys):
    """`run -s reactive` without --threshold (the threshold sweep) ran unrecorded, so the
    trace had no reconfiguration spans although the summary counted some."""
    trace = tmp_path / "t.json"
    args = ["run", "-w", "video_recognition", "-s", "reactive", "--instances", "6"]
    assert main([*args, "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    n = int(out.split("reconfigurations")[1].split()[0])
    ev = json.loads(trace.read_text())["traceEvents"]
    assert n > 0 and sum(e.get("cat") == "reconfig" for e in ev) >= n


@pytest.mark.parametrize("opt", ["--json", "--plots"])
def test_unwritable_output_is_a_clear_error(tmp_path, capsys, opt):
    """An output path that cannot be written (--json naming a folder, --plots naming a
    file) escaped as an IsADirectoryError/FileExistsError traceback, exit 1."""
    a_file = tmp_path / "f"
    a_file.write_text("")
    target = tmp_path if opt == "--json" else a_file
    args = ["run", "-w", "video_recognition", "-s", "greedy", "--instances", "2"]
    assert main([*args, opt, str(target)]) == 2
    assert str(target) in capsys.readouterr().err


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, word",
    [
        (["compare", "--suite", "recommendation,recommendation"], "--suite: repeated"),
        (["compare", "--suite", "recommendation,,rag_qa"], "empty workflow name"),
        (["compare", "--suite", "recommendation", "-s", "x:Y", "-s", "x:Y"], "repeated 'x:Y'"),
        (["compare", "--suite", "recommendation", "-s", "greedy"], "'greedy': a built-in"),
        (["load", "-w", "recommendation", "-s", "greedy", "-s", "greedy"], "repeated 'greedy'"),
        (["load", "-w", "recommendation", "--fractions", "0.5", "0.5"], "repeated 0.5"),
        (["sweep", "--workflows", "rag_qa", "rag_qa", "--workers", "1"], "repeated 'rag_qa'"),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_a_repeated_name_in_a_list_option_is_refused_before_running(tmp_path, capsys, args, word):
    """`compare --suite a,a` ran a twice and counted it twice in every suite mean; so did a
    repeated -s (and -s of a built-in, which compare runs anyway), a repeated load -s (its
    second run overwrote the first), --fractions and sweep --workflows. Refused, as a
    repeated value in a grid list is, before anything runs."""
    extra = ["--out", str(tmp_path)] if args[0] == "sweep" else ["--quiet"] * (args[0] == "compare")
    assert main([*args, *extra]) == 2
    assert word in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["compare", "--suite", "recommendation,ghost", "-s", "nope", "--level", "hi"],
            ["--suite: 'ghost'", "--scheduler: 'nope'", "--level: 'hi'"],
        ),
        (["load", "-w", "recommendation", "-s", "greedy", "-s", "nope"], ["--scheduler: 'nope'"]),
        (["sweep", "--workflows", "rag_qa", "ghost", "--workers", "1"], ["--workflows: 'ghost'"]),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_unknown_names_in_list_options_are_all_refused_before_running(
    tmp_path, capsys, args, words
):
    """compare --suite recommendation,ghost ran recommendation in full (minutes), then failed
    on ghost; load -s greedy -s nope swept greedy first; sweep failed in a worker mid-way.
    Every name is now resolved first, and all bad ones are named at once."""
    extra = ["--out", str(tmp_path)] if args[0] == "sweep" else ["--quiet"] * (args[0] == "compare")
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert "nothing was run" in err and all(w in err for w in words), err
    assert not list(tmp_path.iterdir())


NEVER_STARTS = """
from octopus.sched.api import Scheduler


class NeverStarts(Scheduler):
    name = "never-starts"

    def on_ready(self, k, t):
        pass

    def on_free(self, peas, t):
        pass
"""


def test_a_stalled_run_is_an_error_line_not_a_traceback(tmp_path, capsys):
    """A scheduler that places nothing: the command says the run stalled, naming the nodes
    and the scheduler, and exits 1 (the inputs were valid; the run cannot finish)."""
    plugin = tmp_path / "never.py"
    plugin.write_text(NEVER_STARTS)
    spec = f"{plugin}:NeverStarts"
    rc = main(["run", "-w", "video_recognition", "--instances", "2", "-s", spec])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("octopus: error: simulation stalled"), err
    assert "never-starts" in err and "Traceback" not in err


@pytest.mark.parametrize("package", ["octopus", "xyserve"])
def test_python_dash_m_runs_the_command(package):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", package] + (["list"] if package == "octopus" else ["--version"])
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, word",
    [
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--workers", "-4"], "--workers must be >= 1, got -4"),
        (["--workers", "1", "--instances", "0"], "--instances must be in [1,"),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_paper_sweep_refuses_bad_sizes_before_running(tmp_path, capsys, args, word):
    """`sweep --workers 0` (or -4) ran every point in this process, one at a time, as if
    the option were absent; `--instances 0` was refused only by the first point, from the
    executor, after the output folder was made."""
    out = tmp_path / "out"
    argv = ["sweep", "--workflows", "rag_qa", "--seeds", "1", "--parts", "dyn", "--out", str(out)]
    assert main([*argv, *args]) == 2
    assert word in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, opt",
    [
        (["compare", "--suite", "video_recognition", "--instances", "4", "--quiet"], "--json"),
        (["run", "-w", "video_recognition", "--instances", "2"], "--trace"),
        (["load", "-w", "video_recognition", "--instances", "4", "--fractions", "1"], "--plot"),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, list) else x,
)
def test_an_output_in_a_missing_folder_is_refused_before_running(tmp_path, capsys, args, opt):
    """An output file in a folder that does not exist failed only when the result was
    written, after the whole run: minutes of `compare` (6 with --capacity), then the result
    lost. It is now refused first, and nothing runs."""
    target = tmp_path / "missing" / "x.out"
    assert main([*args, opt, str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and opt in err and "does not exist" in err


@pytest.mark.timeout(60)
def test_sweep_refuses_an_empty_workflows_list(tmp_path, capsys):
    """`sweep --workflows` with no values gave [] (nargs "*"), which ran the whole suite:
    an empty list is a mistake, refused by the parser and by the Python API."""
    from octopus.experiments import sweep

    out = tmp_path / "out"
    argv = ["sweep", "--seeds", "1", "--parts", "dyn", "--instances", "2", "--workers", "1"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(out), "--workflows"])
    assert e.value.code == 2
    assert "--workflows: expected at least one argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--workflows is empty"):
        sweep(str(out), [], seeds=1, parts=("dyn",), instances=2, workers=1)
    assert not out.exists()


ZERO_WORK = """\
schema: octopus-owg/1
name: zero
entry: a
arrival: {process: closed, concurrency_per_cluster: 1, instances_per_cluster: 1}
nodes:
  - {id: a, type: task, kind: ai, work: 0, config_bytes: 0, in_bytes: 0, out_bytes: 0}
"""


def test_a_workflow_with_no_work_has_no_ratio_to_its_bound(tmp_path, capsys):
    """All-zero work gives a lower bound of 0: `run` printed `ratio nanx`; `load` and
    `compare` died with a ZeroDivisionError traceback. Now `run` prints `-` with a note
    (null in the JSON, which stays standard JSON), `load --rate` reports the rate as 0 of
    an infinite bound, and a load sweep or `compare` refuses the workflow with a message."""

    def refuse(c):
        raise ValueError(f"not JSON: {c}")

    wf = tmp_path / "zero.yaml"
    wf.write_text(ZERO_WORK)
    js = tmp_path / "s.json"
    assert main(["run", "-w", str(wf), "-s", "greedy", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "ratio -   (window bound 0.000 ms, ratio -)" in out
    assert "(ratio -: undefined, the bound is 0" in out
    s = json.loads(js.read_text(), parse_constant=refuse)
    assert s["bound_us"] == 0 and s["vs_bound"] is None and s["vs_window_bound"] is None
    assert main(["load", "-w", str(wf), "--rate", "1", "--instances", "4", "--json", str(js)]) == 0
    assert "(0.00 of bound)" in capsys.readouterr().out
    json.loads(js.read_text(), parse_constant=refuse)
    assert main(["load", "-w", str(wf), "--instances", "4"]) == 2
    assert "has no work (0 PEA-us per instance)" in capsys.readouterr().err
    assert main(["compare", "--suite", str(wf), "--instances", "2", "--quiet"]) == 2
    assert "the lower bound is 0" in capsys.readouterr().err

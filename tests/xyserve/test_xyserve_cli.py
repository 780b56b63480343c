"""The ``xyserve`` command's dispatch: usage, help and unknown commands."""

from __future__ import annotations

import json
import sys

import pytest

from xyserve.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["bench", "--help"], ["bench", "-h"]])
def test_help_of_the_command_and_of_a_group_exits_0(argv, capsys):
    """``xyserve bench --help`` printed the usage and exited 2, as for a mistake."""
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "bench offline" in err and "bench spec" in err


@pytest.mark.parametrize("argv", [[], ["bench"], ["nope"], ["bench", "nope"]])
def test_no_or_an_unknown_command_is_a_usage_error(argv, capsys):
    assert main(argv) == 2
    assert "usage: xyserve" in capsys.readouterr().err


# bench kernels' smallest runs, where a refusal regresses
_ATT = ["--no-gpu", "--only", "attention", "--cases", "1", "--budget", "32", "--no-reference"]
_GEMM = ["--no-gpu", "--only", "gemm", "--gemm-models", "small", "--gemm-repeat", "1"]


@pytest.mark.parametrize(
    "module,argv,named",
    [
        ("xyserve.bench.spec", ["--model", "/no/such/model"], "/no/such/model"),
        ("xyserve.bench.spec", ["--methods", "bogus"], "bogus"),
        ("xyserve.bench.spec", ["--dtype", "fp8"], "fp8"),
        ("xyserve.bench.grammar", ["--model", "/no/such/model"], "/no/such/model"),
        # a traceback once every engine had run (min of no rounds), a ZeroDivisionError, and
        # a tree flag that no engine read
        # bench kernels: min or median of no rounds after a section ran, a section asked for
        # and skipped (--cases 0), M = 0 timed (--gemm-budget 0), files as tracebacks
        ("xyserve.bench.kernels", ["--only", "attention", "--cases", "0"], "--cases"),
        ("xyserve.bench.kernels", [*_ATT, "--repeat", "0"], "--repeat must be at least 1"),
        ("xyserve.bench.kernels", [*_GEMM, "--gemm-budget", "0"], "--gemm-budget must be"),
        ("xyserve.bench.kernels", [*_GEMM, "--gemm-repeat", "0"], "--gemm-repeat must be"),
        ("xyserve.bench.kernels", [*_ATT, "--heads", "12", "5", "64"], "multiple of HKV"),
        ("xyserve.bench.kernels", [*_ATT, "--workloads", "nope"], "'nope'"),
        ("xyserve.bench.kernels", [*_GEMM, "--gemm-models", "nope"], "--gemm-models nope"),
        ("xyserve.bench.spec", ["--rounds", "0"], "--rounds must be at least 1"),
        ("xyserve.bench.spec", ["--batch-sizes", "1,-2"], "--batch-sizes must all be"),
        ("xyserve.bench.spec", ["--methods", "ngram", "--tree-width", "3"], "--tree-width"),
    ],
)
def test_bench_engine_arguments_are_usage_errors(module, argv, named, capsys):
    """A model, method or dtype the engine refuses was a traceback from the engine's build."""
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(module).main(argv)
    assert exc.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,named",
    [
        (["--steps", "-1"], "--steps"),  # trained without end: the schedule never reached it
        (["--draft-steps", "0"], "--draft-steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "nan"], "--lr"),
        (["--max-minutes", "0"], "--max-minutes"),
        (["--heldout-pct", "100"], "--heldout-pct"),
        (["--distill-alpha", "1.5"], "--distill-alpha"),
    ],
)
def test_train_tiny_refuses_flags_out_of_range_before_training(argv, named, capsys):
    from xyserve.tools.train_tiny import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and named in capsys.readouterr().err
    assert parse_args([]).steps == 1500  # the defaults pass


def test_bench_kernels_refuses_two_gemm_models_reported_under_one_name(tmp_path, capsys):
    """Configs are reported by their folder's name: the second replaced the first unseen."""
    from xyserve.bench.kernels import parse_args

    for root, h in (("a", 64), ("b", 128)):
        (tmp_path / root / "m").mkdir(parents=True)
        cfg = {"hidden_size": h, "num_attention_heads": 2, "intermediate_size": 2 * h}
        (tmp_path / root / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as exc:
        parse_args(["--gemm-models", str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m")])
    assert exc.value.code == 2 and "reported as 'm'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module,flag",
    [
        ("xyserve.bench.kernels", "--json"),
        ("xyserve.bench.spec", "--json"),
        ("xyserve.bench.offline", "--json"),
        ("xyserve.bench.serve", "--json"),
        ("xyserve.bench.serve", "--markdown"),
        ("xyserve.bench.serve", "--plot"),
        ("xyserve.tools.tune", "--out"),
    ],
)
def test_a_result_file_that_cannot_be_written_is_a_usage_error_before_running(
    module, flag, tmp_path, capsys, monkeypatch
):
    """``--json`` under a folder that is a file was found only when the results were written,
    after the whole benchmark had run, and lost them; ``tune --out`` checked its path first.
    Every result file is now checked as the arguments are parsed."""
    import importlib

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    mod = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", ["x"])
    argv = ["--model", "xy-tiny", flag, str(blocker / "out.json")]
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and "not a file that can be written" in err, err

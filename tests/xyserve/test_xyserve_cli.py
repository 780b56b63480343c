"""The ``xyserve`` command's dispatch: usage, help and unknown commands."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "module,argv,named",
    [
        ("xyserve.bench.spec", ["--model", "/no/such/model"], "/no/such/model"),
        ("xyserve.bench.spec", ["--methods", "bogus"], "bogus"),
        ("xyserve.bench.spec", ["--dtype", "fp8"], "fp8"),
        ("xyserve.bench.grammar", ["--model", "/no/such/model"], "/no/such/model"),
        # a traceback once every engine had run (min of no rounds), a ZeroDivisionError, and
        # a tree flag that no engine read
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

"""Grid sweeps: the grid file, tidy rows, executors that agree, resuming."""

import csv
import json

import pytest
from octo_helpers import TUTORIAL_SPEC

from octopus.cli import main
from octopus.grid import expand, load_grid, parse_grid, run_grid

GRID = {
    "schema": "octopus-sweep/1",
    "workflows": ["recommendation"],
    "architectures": ["chip"],
    "schedulers": ["greedy", "static", TUTORIAL_SPEC],
    "seeds": [0, 1],
    "rates": ["closed", 2.0],
    "instances": 6,
}


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bad_grids_name_the_key():
    with pytest.raises(ValueError, match="unknown key 'seed'"):
        parse_grid({**GRID, "seed": 1})
    with pytest.raises(ValueError, match="field 'workflows': missing"):
        parse_grid({k: v for k, v in GRID.items() if k != "workflows"})
    with pytest.raises(ValueError, match="field 'rates'"):
        parse_grid({**GRID, "rates": ["open"]})
    with pytest.raises(ValueError, match="field 'seeds'"):
        parse_grid({**GRID, "seeds": [0.5]})
    with pytest.raises(ValueError, match="field 'schedulers': expected a non-empty list"):
        parse_grid({**GRID, "schedulers": []})
    with pytest.raises(ValueError, match="field 'instances'"):
        parse_grid({**GRID, "instances": 0})
    g = parse_grid({k: v for k, v in GRID.items() if k not in ("seeds", "rates")})
    assert g["seeds"] == [0] and g["rates"] == ["closed"] and g["levels"] == ["high"]


def test_process_pool_gives_the_rows_of_one_process_and_resume_skips_done(tmp_path):
    g = parse_grid(GRID)
    assert len(expand(g)) == 12
    a = run_grid(g, str(tmp_path / "a"), workers=1, progress=False)
    b = run_grid(g, str(tmp_path / "b"), workers=2, progress=False)
    assert a["ran"] == b["ran"] == 12
    ra, rb = _rows(a["csv"]), _rows(b["csv"])
    assert ra == rb and len(ra) == 12
    # tidy: every parameter and the metrics of its kind of run, one row per run
    for r in ra:
        assert r["workflow"] == "recommendation" and r["arch"] == "chip"
        if r["rate_per_ms"]:
            assert float(r["latency_p99_us"]) > 0 and float(r["offered_vs_bound"]) > 0
        else:
            assert float(r["makespan_us"]) >= float(r["bound_us"])
    # interrupt: keep 5 finished runs and a line cut in the middle
    journal = tmp_path / "b" / "rows.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    seen = []
    c = run_grid(g, str(tmp_path / "b"), workers=1, progress=False, on_row=seen.append)
    assert c["ran"] == 7 and c["reused"] == 5 and c["stale"] == 0 and len(seen) == 7
    assert _rows(c["csv"]) == ra


def test_ray_executor_gives_the_same_rows(tmp_path):
    pytest.importorskip("ray")
    g = parse_grid({**GRID, "schedulers": ["greedy", TUTORIAL_SPEC], "seeds": [0]})
    a = run_grid(g, str(tmp_path / "p"), workers=1, progress=False)
    r = run_grid(g, str(tmp_path / "r"), executor="ray", progress=False)
    assert _rows(a["csv"]) == _rows(r["csv"])


def test_ray_honours_workers(tmp_path):
    """`--workers` was ignored with `--executor ray`: every point was submitted at once and
    ran as wide as Ray's CPUs. With workers=1, no two tasks overlap in time."""
    pytest.importorskip("ray")
    from octopus.grid import executor_stream

    folder = str(tmp_path)

    def point(i: int) -> int:  # sent by value to Ray's workers (cloudpickle)
        import time
        from pathlib import Path

        t0 = time.time()
        time.sleep(1.5)
        Path(folder, f"{i}.span").write_text(f"{t0} {time.time()}")
        return i

    assert sorted(executor_stream(point, [0, 1, 2], "ray", 1, None)) == [0, 1, 2]
    spans = sorted(tuple(map(float, f.read_text().split())) for f in tmp_path.glob("*.span"))
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end


def test_cli_grid(tmp_path, capsys):
    import yaml

    f = tmp_path / "grid.yaml"
    f.write_text(yaml.safe_dump({**GRID, "schedulers": ["greedy"], "seeds": [0]}))
    out = tmp_path / "out"
    assert main(["sweep", "--grid", str(f), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.find("{") :])["rows"] == 2
    assert len(_rows(out / "rows.csv")) == 2
    assert main(["sweep", "--grid", str(f), "--seeds", "2"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["sweep", "--grid", str(f), "--address", "x:1"]) == 2


def test_the_example_grid_parses():
    from pathlib import Path

    from octopus.grid import load_grid

    g = load_grid(str(Path(__file__).resolve().parents[2] / "docs/octopus_tutorial/grid.yaml"))
    assert len(expand(g)) == 24


def test_rows_journal_is_standard_json(tmp_path):
    """An open-loop row of a small run has an undefined standard error (NaN), which was
    written into rows.jsonl as the bare token NaN, not JSON."""

    def refuse(c):
        raise ValueError(f"not JSON: {c}")

    g = parse_grid({**GRID, "schedulers": ["greedy"], "seeds": [0], "rates": [2.0]})
    run_grid(g, str(tmp_path), workers=1, progress=False)
    rows = [json.loads(x, parse_constant=refuse) for x in open(tmp_path / "rows.jsonl")]
    assert rows and rows[0]["latency_se_us"] is None


def test_a_repeated_value_in_a_grid_list_names_the_key(tmp_path):
    """seeds: [0, 0] ran the same run twice and wrote it twice into rows.csv (a silently
    double-weighted point in any mean over the rows)."""
    with pytest.raises(ValueError, match="'seeds'.*repeated 0"):
        parse_grid({**GRID, "seeds": [0, 1, 0]})
    with pytest.raises(ValueError, match="'rates'.*repeated 2"):
        parse_grid({**GRID, "rates": [2, "closed", 2.0]})


def test_every_unknown_name_is_reported_before_any_point_runs(tmp_path, capsys):
    """An unknown scheduler, workflow, architecture or level failed only when its point
    came up, after the points before it had run (and were journaled); now the whole grid
    is resolved first and every bad name is reported at once, with the file and the key."""
    import yaml

    bad = {
        **GRID,
        "workflows": ["recommendation", "ghost_flow"],
        "architectures": ["chip", "no_such_arch"],
        "schedulers": ["greedy", "no_such_sched", "tests/nope.py:Nope"],
        "levels": ["high", "extreme"],
        "seeds": [0],
    }
    f = tmp_path / "grid.yaml"
    f.write_text(yaml.safe_dump(bad))
    out = tmp_path / "out"
    assert main(["sweep", "--grid", str(f), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert str(f) in err
    for key, name in [
        ("workflows", "ghost_flow"),
        ("architectures", "no_such_arch"),
        ("schedulers", "no_such_sched"),
        ("schedulers", "tests/nope.py:Nope"),
        ("levels", "extreme"),
    ]:
        assert f"field '{key}': '{name}'" in err, (key, name, err)
    assert not (out / "rows.jsonl").exists()  # nothing ran
    # the Python API checks too, and so does a workflow that does not fit an architecture
    g = parse_grid({**GRID, "architectures": [str(tmp_path / "tiny.yaml")], "seeds": [0]})
    (tmp_path / "tiny.yaml").write_text(
        yaml.safe_dump({"schema": "octopus-arch/1", "clusters": [1, 1], "peas_per_cluster": [1, 1]})
    )
    with pytest.raises(ValueError, match="nothing was run") as e:
        run_grid(g, str(tmp_path / "api"), workers=1, progress=False)
    assert "'footprint'" in str(e.value) and "tiny.yaml" in str(e.value)
    assert not (tmp_path / "api" / "rows.jsonl").exists()


def test_all_unknown_keys_are_named_at_once():
    with pytest.raises(ValueError, match="unknown keys 'seed', 'workflow'"):
        parse_grid({**GRID, "seed": 1, "workflow": "x"})


def test_resume_reruns_rows_whose_files_or_code_changed(tmp_path, capsys, monkeypatch):
    """Resume matched finished runs by their parameters, and a workflow, architecture or
    plugin is named by its path: after the file (or octopus's code) changed, a rerun into
    the same folder reused the old rows silently. Each row now carries a fingerprint of
    what determines it; only matching rows are reused, the stale ones rerun and counted."""
    import shutil

    from octopus import grid
    from octopus.arch.config import CONFIG_DIR
    from octopus.workloads import workload_path

    wf, arch, plugin = tmp_path / "wf.yaml", tmp_path / "arch.yaml", tmp_path / "sched.py"
    shutil.copy(workload_path("recommendation"), wf)
    shutil.copy(CONFIG_DIR / "chip.yaml", arch)
    shutil.copy(TUTORIAL_SPEC.rpartition(":")[0], plugin)
    g = parse_grid(
        {
            "workflows": [str(wf)],
            "architectures": [str(arch)],
            "schedulers": ["greedy", f"{plugin}:ShortestWait"],
            "instances": 4,
        }
    )
    out = str(tmp_path / "out")

    def rerun():
        res = run_grid(g, out, workers=1, progress=False)
        return res["ran"], res["reused"], res["stale"]

    assert rerun() == (2, 0, 0)
    first = _rows(tmp_path / "out" / "rows.csv")
    assert all(len(r["fingerprint"]) == 16 for r in first)
    assert rerun() == (0, 2, 0)  # nothing changed
    # any edit of the workflow file (its bytes are hashed): both rows are stale
    wf.write_text(wf.read_text() + "\n# edited\n")
    assert rerun() == (2, 0, 2)
    assert rerun() == (0, 2, 0)
    # the architecture's links slow down: stale, and the rerun rows differ from the first
    arch.write_text(arch.read_text().replace("hop_latency_us: 0.01", "hop_latency_us: 0.5"))
    assert rerun() == (2, 0, 2)
    after = _rows(tmp_path / "out" / "rows.csv")
    assert [r["makespan_us"] for r in after] != [r["makespan_us"] for r in first]
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    assert rerun() == (1, 1, 1)  # only the plugin's row
    monkeypatch.setattr(grid, "code_digest", lambda: "other code")
    assert rerun() == (2, 0, 2)
    monkeypatch.undo()
    # a journal written before fingerprints: every row is stale, and the message says why
    journal = tmp_path / "out" / "rows.jsonl"
    rows = [json.loads(x) for x in journal.read_text().splitlines()]
    old = [{k: v for k, v in r.items() if k != "fingerprint"} for r in rows]
    journal.write_text("".join(json.dumps(r) + "\n" for r in old))
    capsys.readouterr()
    res = run_grid(g, out, workers=1, progress=True)
    assert (res["ran"], res["reused"], res["stale"]) == (2, 0, 2)
    err = capsys.readouterr().err
    assert "0 finished run(s) reused, 2 stale" in err
    assert "2 written before rows had fingerprints" in err


def test_a_failing_point_stops_the_pool_at_once(tmp_path):
    """The pool's context manager waited for every pending point before the error of one
    came out (here 3 points of 20 s on 2 workers: 40 s); now the pending points are
    cancelled, the running ones ended, and no worker process is left behind."""
    import os
    import time

    from octo_helpers import slow_or_fail

    from octopus.grid import process_pool

    todo = [("fail", str(tmp_path))] + [("slow", str(tmp_path))] * 3
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="this point failed"):
        list(process_pool(slow_or_fail, todo, 2))
    assert time.monotonic() - t0 < 15
    pids = [int(f.read_text()) for f in tmp_path.glob("*.pid")]
    assert pids  # at least the point running beside the failure had started
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # ended and reaped
            os.kill(pid, 0)


def test_after_a_failing_point_the_finished_rows_stay_and_a_rerun_resumes(tmp_path, capsys):
    flag = tmp_path / "fail"
    plugin = tmp_path / "boom.py"
    plugin.write_text(
        "import os\n"
        "from octopus.sched.greedy import GreedyScheduler\n\n\n"
        "class Boom(GreedyScheduler):\n"
        "    def on_ready(self, k, t):\n"
        f"        if os.path.exists({str(flag)!r}):\n"
        "            raise RuntimeError('boom')\n"
        "        super().on_ready(k, t)\n"
    )
    g = parse_grid({**GRID, "schedulers": ["greedy", f"{plugin}:Boom"], "rates": ["closed"]})
    flag.write_text("")
    with pytest.raises(RuntimeError, match="boom"):
        run_grid(g, str(tmp_path / "out"), workers=1)
    err = capsys.readouterr().err
    assert "stopped after 2 of 4 run(s)" in err and "again to resume" in err  # greedy's
    flag.unlink()
    res = run_grid(g, str(tmp_path / "out"), workers=1, progress=False)
    assert (res["ran"], res["reused"]) == (2, 2)


def test_grid_file_syntax_error_is_a_message_naming_the_file(tmp_path):
    """A grid that is not YAML: a ValueError the command line prints (naming the file), as
    for a workflow or an architecture, not a yaml traceback."""
    f = tmp_path / "g.yaml"
    f.write_text("schema: [\n")
    with pytest.raises(ValueError, match=r"sweep grid .*g\.yaml.*cannot be read"):
        load_grid(str(f))

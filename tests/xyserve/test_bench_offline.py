"""``xyserve bench offline`` runs end to end and reports every system side by side."""

from __future__ import annotations

import json

import pytest

from xyserve.bench.offline import load_workload, main, round_order


def test_bench_offline_smoke(tiny_llama, tmp_path):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "--model",
            str(tiny_llama),
            "--workload",
            "offline_smoke.json",
            "--num-requests",
            "4",
            "--no-tune",
            "--rounds",
            "1",
            "--hf-batch-size",
            "2",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["systems"]) == {"xyserve-hybrid", "xyserve-baseline", "hf-static-b2"}
    for row in res["systems"].values():
        assert row["output_tokens_per_s"] > 0 and row["speedup_vs_hf"] > 0
    assert res["systems"]["hf-static-b2"]["speedup_vs_hf"] == 1.0
    for name, row in res["systems"].items():  # the one round's run is the reported one
        assert res["round_seconds"][name] == [row["seconds"]]


def test_zero_rounds_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "unused", "--rounds", "0"])
    assert exc.value.code == 2 and "--rounds must be at least 1" in capsys.readouterr().err


def test_rounds_rotate_which_system_runs_first():
    names = ["hybrid", "baseline", "hf"]
    orders = [round_order(names, r) for r in range(4)]
    assert orders[0] == names and orders[3] == names
    assert [o[0] for o in orders[:3]] == names  # each system leads one round in three
    assert all(sorted(o) == sorted(names) for o in orders)


def test_workload_prefix_groups_share_prefixes():
    w = load_workload("offline_decode_heavy.json", vocab_size=1000, seed=0)
    assert len(w.prompts) == 64
    same = [p for i, p in enumerate(w.prompts) if i < 32 and i % 4 == 0]
    assert all(p[:16] == same[0][:16] for p in same)

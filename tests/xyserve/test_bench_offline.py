"""``xyserve bench offline`` runs end to end and reports every system side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xyserve.bench.offline import main
from xyserve.bench.offline_systems import first_mismatch, first_off_greedy, round_order
from xyserve.bench.offline_workload import load_workload


def test_bench_offline_smoke(tiny_llama, tmp_path, capsys):
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
            "--batch-size",
            "2",
            "--no-prefix-caching",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "greedy check: xyserve equal HF" in printed
    assert "xyserve GEMM table: none for this machine in float32: SmoothGEMM defaults" in printed
    res = json.loads(out.read_text())
    assert res["gemm_table"]["kind"] == "none" and res["gemm_table"]["source"] is None
    assert res["machine"]["kind"] == "cpu" and res["roof_output_tokens_per_s"] > 0
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


def test_unknown_peer_and_bad_batch_size_are_clear_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "unused", "--peers", "hf,vllm"])
    assert exc.value.code == 2 and "unknown ['vllm']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--model", "unused", "--batch-size", "0"])
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_greedy_check_names_the_first_difference():
    ref = [[1, 2, 3], [4, 5, 6]]
    assert first_mismatch([[1, 2, 3], [4, 5, 6]], ref) is None
    assert (
        first_mismatch([[1, 2, 3], [4, 9, 6]], ref) == "prompt 1, output token 1: 9 against HF's 5"
    )
    assert "2 tokens" in first_mismatch([[1, 2], [4, 5, 6]], ref)
    # a system that answers fewer prompts (or none) does not pass: zip compared the answered
    assert first_mismatch([[1, 2, 3]], ref) == "1 prompts answered of 2"
    assert first_mismatch([], ref) == "0 prompts answered of 2"


def test_bfloat16_greedy_check_allows_near_ties_only_and_wants_every_token():
    """The bfloat16 check: a token within the tolerance of HF's best passes, one further below
    fails, and so does a system that gives fewer tokens (or prompts) than asked, or a token
    that is no token id."""
    import torch

    # HF's logits along the system's tokens: 3 positions of a 4-token vocabulary, max |logit| 8
    lg = torch.tensor([[8.0, 7.9, 0.0, -1.0], [1.0, 8.0, 2.0, 0.0], [0.0, 0.0, 8.0, 5.0]])
    assert first_off_greedy([[0, 1, 2]], [lg], 2**-5, 3, 1) is None
    assert first_off_greedy([[1, 1, 2]], [lg], 2**-5, 3, 1) is None  # 0.1 below: a near-tie
    assert "output token 2: 3" in first_off_greedy([[0, 1, 3]], [lg], 2**-5, 3, 1)
    assert "2 tokens" in first_off_greedy([[0, 1]], [lg[:2]], 2**-5, 3, 1)
    assert "0 tokens" in first_off_greedy([[]], [lg[:0]], 2**-5, 3, 1)
    assert "no token id" in first_off_greedy([[0, -1, 2]], [lg], 2**-5, 3, 1)
    assert "1 prompts" in first_off_greedy([[0, 1, 2]], [lg], 2**-5, 3, 2)


def test_issue_workloads_load():
    w = load_workload("offline_fixed_32x64.json", vocab_size=600)
    assert len(w.prompts) == 32 and sum(map(len, w.prompts)) == 3030
    assert set(w.output_lens) == {64} and all(64 <= len(p) <= 128 for p in w.prompts)
    one = load_workload("offline_single_128.json", vocab_size=600)
    assert one.output_lens == [128]


def test_report_shows_each_systems_range_over_rounds(tmp_path, capsys):
    """With several rounds the table shows each system's slowest-fastest output tok/s and the
    header the peaks' range; the best round and the best peak are the reported figures."""
    from xyserve.bench.offline_report import report
    from xyserve.bench.offline_workload import Workload, packaged

    cfg = json.loads(packaged("models", "llama-76m-v600.json").read_text())
    work = Workload("w", [[5] * 10, [6] * 20], [40, 60])  # 100 output tokens
    rounds = {"xyserve-hybrid": [2.0, 1.0], "hf-static-b16": [4.0, 5.0]}
    out = tmp_path / "r.json"
    report(cfg, work, [250.0, 300.0], {"xyserve-hybrid": 1.0, "hf-static-b16": 4.0}, rounds,
           str(out))  # fmt: skip
    text = capsys.readouterr().out
    assert "matmul peak 300.0 GFLOP/s (measured now; 2 rounds: 250.0-300.0)" in text
    line = next(t for t in text.splitlines() if t.startswith("xyserve-hybrid"))
    assert line.split()[2] == "100.0" and line.endswith("50.0-100.0")  # best 100 tok/s
    line = next(t for t in text.splitlines() if t.startswith("hf-static-b16"))
    assert line.endswith("20.0-25.0")
    res = json.loads(out.read_text())
    assert res["matmul_peaks_gflops"] == [250.0, 300.0] and res["matmul_peak_gflops"] == 300.0


def test_report_pairs_the_ratio_round_by_round(tmp_path, capsys):
    """The best of each system can come from different rounds, i.e. different states of a
    shared machine; the ratio within each round is printed beside it, with its median."""
    from xyserve.bench.offline_report import report
    from xyserve.bench.offline_workload import Workload, packaged

    cfg = json.loads(packaged("models", "llama-76m-v600.json").read_text())
    work = Workload("w", [[5] * 10], [100])
    rounds = {"xyserve-hybrid": [1.0, 2.0, 1.5], "llama.cpp-b1": [1.1, 1.9, 2.4]}
    out = tmp_path / "r.json"
    report(cfg, work, [300.0], {"xyserve-hybrid": 1.0, "llama.cpp-b1": 1.1}, rounds, str(out))
    text = capsys.readouterr().out
    assert (
        "xyserve-hybrid vs llama.cpp: 1.10x (the best of each; round by round: median 1.10x, "
        "0.95-1.60x over 3 rounds)"
    ) in text
    res = json.loads(out.read_text())
    assert res["paired_round_ratios"]["xyserve-hybrid vs llama.cpp-b1"] == pytest.approx(
        [1.1, 0.95, 1.6]
    )


@pytest.mark.parametrize(
    "args,named",
    [
        (["--workload", "nope.json"], "nope.json"),  # was a FileNotFoundError traceback
        (["--model-config", "nope.json"], "nope.json"),
        (["--model", "/no/such/model"], "/no/such/model"),
    ],
)
def test_missing_files_are_usage_errors(capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        main(args + ["--rounds", "1"])
    assert exc.value.code == 2 and named in capsys.readouterr().err


# Where a refusal regresses, the bench runs: on a tiny model, one round, no extras.
_TINY = Path(__file__).parent / "data" / "tiny_bench_config.json"
_QUICK = ["--model-config", str(_TINY), "--rounds", "1", "--no-tune", "--no-check"]
_QUICK += ["--skip-baseline", "--peers", "", "--num-requests", "1"]


@pytest.mark.parametrize(
    "text,named",
    [
        ("not json", "not valid JSON"),  # each was a traceback, most after the model was built
        ('{"schema": "xyserve.offline-workload/1"}', "'requests' must be a non-empty list"),
        ('{"schema": "xyserve.offline-workload/1", "requests": []}', "non-empty"),
        (
            '{"schema": "xyserve.offline-workload/1", '
            '"requests": [{"prompt_len": "x", "output_len": 4}]}',
            "request 0: prompt_len must be a whole number",
        ),
        (
            '{"schema": "xyserve.offline-workload/1", "requests": [{"prompt_len": 4}]}',
            "request 0: output_len must be a whole number, got None",
        ),
        (
            '{"schema": "xyserve.offline-workload/1", '
            '"requests": [{"prompt_len": 4.5, "output_len": 4}]}',
            "got 4.5",  # was truncated to 4
        ),
        (
            '{"schema": "xyserve.offline-workload/1", '
            '"requests": [{"prompt_len": 2000, "output_len": 100}]}',
            "exceeds the model's context (2048 tokens",
        ),
    ],
)
def test_invalid_workload_files_are_usage_errors(tmp_path, capsys, text, named):
    (tmp_path / "w.json").write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["--workload", str(tmp_path / "w.json"), *_QUICK])
    assert exc.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag", ["--num-requests", "--threads", "--hf-batch-size", "--max-num-seqs"]
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_counts_below_one_are_usage_errors(capsys, flag, value):
    """--num-requests -1 dropped the last request silently (a slice), 0 and --hf-batch-size 0
    were tracebacks after the model was built, --threads 0 was ignored."""
    with pytest.raises(SystemExit) as exc:
        main([*_QUICK, flag, value])
    assert exc.value.code == 2 and f"{flag} must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--batch-size", "2", "--max-num-seqs", "8"], "--max-num-seqs"),
        (["--batch-size", "2", "--hf-batch-size", "8"], "--hf-batch-size"),
        (["--skip-hf", "--hf-batch-size", "8"], "--hf-batch-size"),
        (["--model", "xy-tiny"], "--model-config"),
    ],
)
def test_a_flag_another_overrides_or_no_system_reads_is_refused(capsys, extra, named):
    """--batch-size replaced --max-num-seqs and --hf-batch-size silently, --hf-batch-size
    without HF and --model-config beside --model were dropped."""
    if extra[:1] == ["--model"]:  # _QUICK names a --model-config
        from xyserve.models import resolve_model

        extra = ["--model", str(resolve_model("xy-tiny"))]
    with pytest.raises(SystemExit) as exc:
        main([*_QUICK, *extra])
    assert exc.value.code == 2 and named in capsys.readouterr().err


@pytest.fixture
def fake_tune(monkeypatch, tmp_path):
    """A model folder and an instant tune (every bucket gets addmm); returns the calls' Ms."""
    import xyserve.tools.tune as tune_mod
    from xyserve.plan.gemm_table import GemmConfig

    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[int] = []

    def fake_tune_one(w, x, device, repeat, allow_tf32=False):
        calls.append(x.shape[0])
        return GemmConfig(cpu_impl="addmm")

    monkeypatch.setattr(tune_mod, "tune_one", fake_tune_one)
    return calls


CFG = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
CFG |= {"intermediate_size": 48, "vocab_size": 50}


def _model_with_table(tmp_path, kind: str) -> Path:
    """A model whose only table here is the first-start quick one, one without lm_head, or
    one tuned to a smaller budget than the bench's."""
    import xyserve.tools.tune as tune_mod
    from xyserve.plan.gemm_table import OPS, TABLE_FILE

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CFG))
    if kind == "quick":
        tune_mod.quick_tune(model, progress=False)
    else:
        ops = [op for op in OPS if op != "lm_head"] if kind == "no-lm-head" else list(OPS)
        budget = 32 if kind == "short" else 96  # the tests bench with a budget of 96
        tune_mod.tune(CFG, budget, "cpu", ops, 1, progress=False).save(model / TABLE_FILE)
    return model


@pytest.mark.parametrize("kind", ["quick", "no-lm-head", "short"])
def test_bench_tunes_what_a_quick_or_partial_table_lacks(tmp_path, fake_tune, capsys, kind):
    """bench offline took any table of this machine for tuned, the first-start quick one too
    (decode buckets only), and ran the rest of its buckets on defaults without a word."""
    from xyserve.bench.offline_systems import gemm_table
    from xyserve.plan.gemm_table import OPS, TABLE_FILE

    model = _model_with_table(tmp_path, kind)
    fake_tune.clear()
    info = gemm_table(model, 96, tune=True)
    assert fake_tune  # tuned now
    assert info["kind"] == "full" and info["lacks"] == [] and info["tuned_now"]
    assert info["source"] == str(model / TABLE_FILE) and info["budget"] == 96
    assert "tuning SmoothGEMM" in capsys.readouterr().out
    fake_tune.clear()
    again = gemm_table(model, 96, tune=True)  # a full table is used as it is
    assert fake_tune == [] and again["kind"] == "full" and not again["tuned_now"]
    assert {"qkv", "lm_head"} <= set(OPS)


@pytest.mark.parametrize("kind", ["quick", "no-lm-head", "short"])
def test_bench_no_tune_says_what_table_it_used(tmp_path, fake_tune, kind):
    from xyserve.bench.offline_systems import gemm_table

    model = _model_with_table(tmp_path, kind)
    fake_tune.clear()
    info = gemm_table(model, 96, tune=False)
    assert fake_tune == [] and not info["tuned_now"]
    assert info["kind"] == ("quick" if kind == "quick" else "partial") and info["lacks"]
    assert info["source"] and info["source"] in info["text"]
    assert "untuned shapes run the defaults" in info["text"]
    if kind == "no-lm-head":
        assert info["lacks"] == ["lm_head: not tuned"]
    else:
        assert all("M buckets untuned" in gap for gap in info["lacks"])

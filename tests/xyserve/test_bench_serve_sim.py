"""bench serve --simulate: the real scheduler in simulated time, with exact timings."""

from __future__ import annotations

import json

import pytest

from xyserve.bench import serve
from xyserve.bench.serve_sim import StepCost, simulate
from xyserve.bench.serve_workload import BenchRequest
from xyserve.config import EngineConfig


def test_one_request_alone_has_exact_ttft_and_tbt():
    cost = StepCost(0.01, 0.001)
    reqs = [BenchRequest(list(range(3, 103)), 3)]
    (res,) = simulate(EngineConfig(num_kv_blocks=64), reqs, [0.5], cost)
    # prefill of 100 tokens: 110 ms; then two decode steps of 11 ms
    assert [t for t, _ in res.chunks] == pytest.approx([0.61, 0.621, 0.632])
    assert res.start == 0.5 and res.end == pytest.approx(0.632)


def test_baseline_stalls_decodes_behind_a_prefill_and_hybrid_fuses_them():
    cost = StepCost(0.01, 0.001)
    reqs = [BenchRequest(list(range(3, 13)), 4), BenchRequest(list(range(500, 900)), 2)]
    arrivals = [0.0, 0.025]  # the long prompt arrives while the first request decodes
    for policy in ("hybrid", "baseline"):
        first, second = simulate(
            EngineConfig(scheduler_policy=policy, num_kv_blocks=128), reqs, arrivals, cost
        )
        assert first.num_tokens == 4 and second.num_tokens == 2
        gaps = [b - a for (a, _), (b, _) in zip(first.chunks, first.chunks[1:])]
        if policy == "hybrid":  # one mixed step of 401 tokens carries the decode
            assert max(gaps) == pytest.approx(0.01 + 0.001 * 401)
        else:  # a 400-token prefill step alone, then a decode step for both requests
            assert max(gaps) == pytest.approx(0.41 + 0.012)


def test_simulated_sweep_through_the_cli(tmp_path, capsys):
    out = tmp_path / "sim.json"
    rc = serve.main(
        [
            "--simulate", "40,1.7", "--workload", "sonnet_prefill_heavy", "--sweep", "0.25,1",
            "--num-prompts", "30", "--json", str(out), "--no-progress",
            "--system", "hybrid=--tbt-target-ms 300", "--system", "baseline=--scheduler-policy baseline",
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "max rate under SLO" in text
    with pytest.raises(SystemExit):
        serve.main(["--simulate", "1,2", "--concurrency", "2", "--system", "x=--nope"])
    assert serve.main(["--simulate", "1,2", "--concurrency", "2"]) == 2
    assert "open-loop" in capsys.readouterr().err


def test_a_peer_is_refused_in_simulated_time(capsys):
    """--simulate replays xyserve's scheduler only: a peer server (or its flags) is refused,
    not dropped from the comparison without a word."""
    assert serve.main(["--simulate", "1,2", "--request-rate", "1", "--peer", "hf"]) == 2
    assert "--peer" in capsys.readouterr().err
    assert serve.main(["--simulate", "1,2", "--request-rate", "1", "--peer-args=--x"]) == 2
    assert "--peer-args" in capsys.readouterr().err


def _strict_json(text: str) -> object:
    """Parse as strict JSON: a bare NaN or Infinity is an error, as in jq or JavaScript."""

    def refuse(name: str) -> object:
        raise ValueError(f"bare {name} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_with_one_token_outputs_and_an_infinite_rate(tmp_path):
    """One-token outputs have no TPOT or TBT (NaN summaries) and ``--sweep ...,inf`` offers an
    infinite rate: the file must still be valid JSON, with null and "inf" (vLLM's spelling)."""
    work = tmp_path / "one.json"
    work.write_text(
        json.dumps(
            {
                "schema": "xyserve.serve-workload/1",
                "name": "one",
                "description": "one output token each",
                "prompt_len": [[4, 8, 1]],
                "output_len": [[1, 1, 1]],
            }
        )
    )
    out = tmp_path / "out.json"
    argv = ["--simulate", "5,0.1", "--workload", str(work), "--num-prompts", "4"]
    argv += ["--sweep", "1,inf", "--json", str(out), "--no-progress"]
    assert serve.main(argv) == 0
    data = _strict_json(out.read_text())
    runs = data["runs"]
    assert runs[0]["tpot"]["mean"] is None and runs[0]["tbt"]["p99"] is None
    assert {r["offered_rate"] for r in runs} == {1.0, "inf"}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "flag, value",
    [
        ("--trace-scale", "nan"),  # hung: no arrival ever drawn
        ("--duration", "nan"),  # failed with "cannot convert float NaN to integer"
        ("--duration", "inf"),  # crashed with an OverflowError traceback
        ("--duration", "-5"),  # ran --min-prompts requests without a word
        ("--duration", "0"),
        ("--burstiness", "nan"),
        ("--slo-attainment", "1.5"),  # no rate could ever meet it
        ("--slo-attainment", "nan"),
        ("--slo-attainment", "0"),
        ("--disconnect-fraction", "nan"),
        ("--disconnect-fraction", "1.5"),
        ("--request-timeout", "0"),
        ("--request-timeout", "nan"),
        ("--warmup", "-1"),
        ("--concurrency", "0"),
        ("--threads", "0"),
        ("--min-prompts", "0"),
        ("--num-prompts", "0"),
        ("--sweep", ","),  # ran the one --request-rate load, as if no sweep were given
        ("--vocab-size", "0"),  # taken as unset: the model's vocabulary, without a word
        ("--vocab-size", "4"),  # failed after the servers started
    ],
)
def test_out_of_range_numbers_are_usage_errors_naming_the_flag(flag, value, capsys):
    argv = ["--simulate", "5,0.1", "--num-prompts", "3", "--no-progress", f"{flag}={value}"]
    if flag == "--trace-scale":
        argv += ["--qps-trace", "qps_trace_dynamic"]
    with pytest.raises(SystemExit) as e:
        serve.main(argv)
    assert e.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--concurrency", "2", "--sweep", "1,2"], "--concurrency"),
        (["--concurrency", "2", "--request-rate", "3"], "--request-rate"),
        (["--concurrency", "2", "--qps-trace", "qps_trace_dynamic"], "--qps-trace"),
        (["--concurrency", "2", "--duration", "10"], "--duration"),
        (["--concurrency", "2", "--burstiness", "0.5"], "--burstiness"),
        (["--qps-trace", "qps_trace_dynamic", "--sweep", "1,2"], "--sweep"),
        (["--qps-trace", "qps_trace_dynamic", "--request-rate", "2"], "--request-rate"),
        (["--trace-scale", "2"], "--trace-scale"),
        (["--sweep", "1,2", "--request-rate", "3"], "--request-rate"),
        (["--base-url", "http://127.0.0.1:1"], "--base-url"),
        (["--disconnect-fraction", "0.5"], "--disconnect-fraction"),
        (["--label", "mine"], "--label"),
        (["--sweep", "1", "--reference", "nosuch"], "--reference 'nosuch'"),
        (["--duration", "10", "--num-prompts", "7"], "--num-prompts"),
        (["--duration", "10", "--sweep", "1,2", "--num-prompts", "7"], "--num-prompts"),
        (["--min-prompts", "4"], "--min-prompts"),
        (["--warmup", "3"], "--warmup"),
        (["--request-timeout", "30"], "--request-timeout"),
        (["--threads", "4"], "--threads"),
        (["--startup-timeout", "30"], "--startup-timeout"),
    ],
)
def test_a_flag_the_run_would_not_use_is_refused(extra, message, capsys):
    """Each of these ran with the flag silently dropped: the closed loop ignored the rates, a
    trace the sweep, --simulate the --base-url, an unknown --reference left every ratio n/a,
    --duration the --num-prompts, --simulate the client's and the server's flags."""
    base = ["--simulate", "5,0.1", "--no-progress"]
    if "--duration" not in extra and "--num-prompts" not in extra:
        base += ["--num-prompts", "3"]
    argv = [*base, *extra]
    assert serve.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_base_url_refuses_the_flags_of_servers_it_does_not_start(capsys):
    argv = ["--base-url", "http://127.0.0.1:1", "--vocab-size", "100", "--no-progress"]
    assert serve.main([*argv, "--system", "a=--scheduler-policy fcfs"]) == 2
    assert "--system" in capsys.readouterr().err
    assert serve.main([*argv, "--engine-args", "--max-num-seqs 4"]) == 2
    assert "--engine-args" in capsys.readouterr().err
    for flag in ("--threads", "--startup-timeout"):
        assert serve.main([*argv, flag, "4"]) == 2
        assert flag in capsys.readouterr().err


def test_a_base_url_system_is_its_default_label_for_reference():
    """--base-url --reference server raised TypeError: the reference was checked against the
    labels before --label's default was filled in."""
    argv = ["--base-url", "http://127.0.0.1:1", "--vocab-size", "100", "--reference", "server"]
    args = serve.build_parser().parse_args(argv)
    serve.refuse_conflicts(args)
    assert args.label == "server" and args.reference == "server"


def test_num_prompts_with_duration_counts_the_infinite_rate():
    """--duration sets a finite rate's count; --num-prompts is the count of a run at rate inf,
    where rate x duration says nothing, so the two go together only then."""
    from xyserve.bench import serve_workload as wl
    from xyserve.bench.serve_plan import loads

    argv = ["--simulate", "5,0.1", "--sweep", "2,inf", "--duration", "10", "--num-prompts", "7"]
    args = serve.build_parser().parse_args(argv)
    serve.refuse_conflicts(args)
    assert [ld["n"] for ld in loads(args, wl.load(args.workload))] == [20, 7]


def test_burstiness_applies_to_a_qps_trace():
    """--burstiness with --qps-trace was dropped: the trace file's shape was used."""
    from xyserve.bench import serve_workload as wl
    from xyserve.bench.serve_plan import load_inputs, loads

    def times(*extra: str) -> list[float]:
        args = serve.build_parser().parse_args(["--qps-trace", "qps_trace_dynamic", *extra])
        serve.refuse_conflicts(args)
        work = wl.load(args.workload)
        (ld,) = loads(args, work)
        return load_inputs(args, work, ld, 0, 1000, 2048)[1]

    plain, bursty = times(), times("--burstiness", "0.25")
    assert len(plain) == len(bursty) == 50 and plain != bursty
    gaps = [b - a for a, b in zip(bursty, bursty[1:])]
    assert sum(g < 0.05 for g in gaps) > 10  # shape 0.25: many near-simultaneous arrivals


@pytest.mark.parametrize("cost", ["5,-1", "-5,0", "nan,1", "inf,0", "0,0"])
def test_a_step_cost_that_is_not_a_time_is_refused(cost, capsys):
    """--simulate 5,-1 moved the clock back and reported negative TTFTs as measures; NaN and
    inf failed deep inside ("cannot convert float NaN to integer"); 0,0 froze the clock."""
    assert serve.main([f"--simulate={cost}", "--num-prompts", "3", "--no-progress"]) == 2
    assert "A_MS and B_MS must be finite numbers >= 0" in capsys.readouterr().err


def test_json_and_markdown_go_into_a_folder_not_yet_made(tmp_path):
    """--plot made its folder, --json and --markdown did not: a missing folder raised
    FileNotFoundError after the whole run, and the results were lost."""
    out, md = tmp_path / "new" / "out.json", tmp_path / "other" / "runs.md"
    argv = ["--simulate", "5,0.1", "--num-prompts", "3", "--no-progress", "--system", "a="]
    assert serve.main([*argv, "--json", str(out), "--markdown", str(md)]) == 0
    assert json.loads(out.read_text())["runs"] and md.read_text().startswith("| system")

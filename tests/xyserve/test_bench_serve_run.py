"""``xyserve bench serve`` end to end: a short run against a tiny model, and its clear errors."""

from __future__ import annotations

import json

import pytest

from xyserve.bench import serve
from xyserve.bench.serve_server import free_port

TINY_WORKLOAD = {
    "schema": "xyserve.serve-workload/1",
    "name": "tiny",
    "description": "short prompts and outputs for a fast test",
    "shared_prefix": {"num_prefixes": 2, "len": [[20, 40, 1]]},
    "prompt_len": [[4, 40, 1]],
    "output_len": [[4, 12, 1]],
}


def test_short_run_on_a_tiny_model_has_no_failure_and_no_leak(tiny_llama, tmp_path, capsys):
    """Two systems, two loads (one at saturation), some clients leaving mid-stream."""
    work = tmp_path / "tiny.json"
    work.write_text(json.dumps(TINY_WORKLOAD))
    out = tmp_path / "out.json"
    png = tmp_path / "sweep.png"
    md = tmp_path / "runs.md"
    rc = serve.main(
        [
            "--model",
            str(tiny_llama),
            "--workload",
            str(work),
            "--sweep",
            "20,inf",
            "--num-prompts",
            "10",
            "--threads",
            "1",
            "--disconnect-fraction",
            "0.3",
            "--engine-args",
            "--max-num-batched-tokens 64 --num-kv-blocks 48",
            "--system",
            "hybrid=--scheduler-policy hybrid",
            "--system",
            "baseline=--scheduler-policy baseline",
            "--slo-ttft-ms",
            "60000",
            "--slo-tbt-ms",
            "60000",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--markdown",
            str(md),
            "--no-progress",
            "--warmup",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert run["num_failed"] == 0, run["errors"]
        assert run["num_completed"] + run["num_disconnected"] == 10
        assert run["num_disconnected"] >= 1
        assert run["server"] == {
            "checked": True,
            "clean": True,
            "kv_cache_usage_perc": 0.0,
            "num_requests_running": 0.0,
            "num_requests_waiting": 0.0,
        }
        assert run["ttft"]["mean"] > 0 and run["tbt"]["p99"] >= run["tbt"]["p50"]
    # the generous SLO holds at 20 req/s; an infinite rate is never a "max rate"
    assert data["max_rate_under_slo"] == {"hybrid": 20.0, "baseline": 20.0}
    assert data["ratio_to_baseline"] == {"hybrid": 1.0, "baseline": 1.0}
    assert "max rate under SLO" in printed and png.stat().st_size > 0
    assert "SLO attainment per rate" in printed
    assert set(data["max_rate_settled"]) == {"hybrid", "baseline"}
    assert {(v["system"], v["rate"], v["meets"]) for v in data["rate_verdicts"]} == {
        ("hybrid", 20.0, True),
        ("baseline", 20.0, True),
    }
    assert len(md.read_text().splitlines()) == 2 + 4


def test_unreachable_endpoint_is_a_clear_error(capsys):
    rc = serve.main(
        [
            "--base-url",
            f"http://127.0.0.1:{free_port()}",
            "--vocab-size",
            "100",
            "--num-prompts",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "cannot reach http://127.0.0.1:" in capsys.readouterr().err


def test_non_loopback_endpoint_is_refused(capsys):
    """... and main, called in-process, leaves the caller's SIGTERM handler as it found it
    (it installs its own for the run: servers it started are stopped on SIGTERM)."""
    import signal

    mine = signal.getsignal(signal.SIGTERM)
    rc = serve.main(["--base-url", "http://192.0.2.1:8000", "--vocab-size", "100"])
    assert rc == 2
    assert "only http(s) on a loopback host" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is mine


@pytest.mark.parametrize("content, message", [("{", "not valid JSON"), ("[]", "JSON object")])
def test_invalid_workload_file_is_a_clear_error(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    rc = serve.main(["--workload", str(bad), "--base-url", "http://127.0.0.1:1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err


def test_base_url_records_the_model_it_measured(tmp_path, monkeypatch):
    """With --base-url the JSON said "model": "llama-100m.json" (--model's default, never
    served) whatever the server ran; it records the served model, or --model when given,
    which is then the name requested, as vLLM's --model."""
    from xyserve.bench.serve_client import RequestResult

    asked: list[str | None] = []

    async def fake_run_load(base_url, model, requests, **kw):
        asked.append(model)
        return [RequestResult(3, r.output_len, 0.0, [(0.1, r.output_len)], 0.2) for r in requests]

    monkeypatch.setattr(serve, "served_model", lambda url: "xy-tiny")
    monkeypatch.setattr(serve, "run_load", fake_run_load)
    monkeypatch.setattr(serve, "leak_check", lambda url: {"checked": False})
    out = tmp_path / "out.json"
    argv = ["--base-url", "http://127.0.0.1:1", "--vocab-size", "100", "--num-prompts", "2"]
    argv += ["--no-progress", "--warmup", "0", "--json", str(out)]
    assert serve.main(argv) == 0
    assert json.loads(out.read_text())["model"] == "xy-tiny" and asked == ["xy-tiny"]
    assert serve.main([*argv, "--model", "served-name"]) == 0
    assert json.loads(out.read_text())["model"] == "served-name" and asked[-1] == "served-name"


@pytest.mark.parametrize("body", [b"hello", b'{"data": "x"}', b"[1]", b'{"data": [1]}'])
def test_a_server_that_is_not_openai_compatible_is_a_clear_error(body, monkeypatch, capsys):
    """Another kind of server on the --base-url port: its /v1/models answer gave a bare
    "Expecting value: line 1 column 1" or an AttributeError traceback."""
    import httpx

    monkeypatch.setattr(
        httpx, "get", lambda url, timeout: httpx.Response(200, content=body, request=None)
    )
    argv = ["--base-url", "http://127.0.0.1:1", "--vocab-size", "100", "--no-progress"]
    assert serve.main(argv) == 2
    assert "/v1/models is not an OpenAI-compatible model list" in capsys.readouterr().err


def test_no_logprobs_on_a_model_served_without_a_tokenizer_is_refused(monkeypatch, capsys):
    """The random-weight model runs with --skip-tokenizer-init: with --no-logprobs every
    request failed as "the stream ended without a token" (its chunks carry no text)."""
    from xyserve.bench.serve_server import ServerProcess

    def launch(self):
        raise AssertionError("a server was started")

    monkeypatch.setattr(ServerProcess, "launch", launch)
    assert serve.main(["--no-logprobs", "--system", "a=", "--no-progress"]) == 2
    assert "--no-logprobs counts tokens by their text" in capsys.readouterr().err

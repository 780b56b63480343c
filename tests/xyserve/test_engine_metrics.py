"""The engine's metrics after a known workload, counted as vLLM V1 counts them, and the one
registry behind both ``LLM.get_metrics()`` and ``/metrics``."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_harness import metric

from xyserve import LLM, SamplingParams
from xyserve.engine_metrics import Counter, Gauge, Histogram, build_1_2_5_buckets
from xyserve.server.app import create_app
from xyserve.server.async_engine import AsyncLLM

P = list(range(20, 30))  # 10 tokens
Q = list(range(200, 207))  # 7 tokens, nothing in common with P


@pytest.fixture(scope="module")
def workload(tiny_llama: Path) -> LLM:
    """A (10 tokens, 4 generated, length), then B (A's prompt, n=2, 3 generated each: both
    samples read A's cached prompt), then C (7 tokens) aborted after two steps."""
    llm = LLM(str(tiny_llama), device="cpu", max_model_len=128, served_model_name="tiny")
    eng = llm.llm_engine
    llm.generate({"prompt_token_ids": P}, SamplingParams(max_tokens=4, ignore_eos=True))
    params = SamplingParams(n=2, max_tokens=3, ignore_eos=True)
    llm.generate({"prompt_token_ids": P}, params, use_tqdm=False)
    eng.add_request(Q, SamplingParams(max_tokens=50, ignore_eos=True), request_id="c")
    eng.step()
    eng.step()
    assert eng.abort_request("c")
    eng.kv.check_no_leak()
    return llm


def _by_name(llm: LLM) -> dict:
    out: dict = {}
    for m in llm.get_metrics():
        out.setdefault(m.name, []).append(m)
    return out


def _one(llm: LLM, name: str):
    (m,) = _by_name(llm)[name]
    return m


def test_counts_after_a_known_workload(workload: LLM) -> None:
    m = _by_name(workload)
    one = {k: v[0] for k, v in m.items() if len(v) == 1}
    c_tokens = 2  # C: its first token in step 1, one more in step 2
    # prompt tokens: each sample's whole prompt (cached tokens included), C's too
    assert one["xyserve:prompt_tokens"].value == 10 + 2 * 10 + 7
    assert one["xyserve:generation_tokens"].value == 4 + 2 * 3 + c_tokens
    # prefix cache, in tokens: every sample's first admission; B's two samples hit A's
    # prompt up to its last token, which is always computed
    assert one["xyserve:prefix_cache_queries"].value == 10 + 10 + 10 + 7
    assert one["xyserve:prefix_cache_hits"].value == 9 + 9
    success = {s.labels["finished_reason"]: s.value for s in m["xyserve:request_success"]}
    # A and B's two samples; the aborted C is no finished request (as in vLLM)
    assert success == {"stop": 0, "length": 3, "abort": 0, "error": 0, "repetition": 0}
    assert one["xyserve:request_aborted"].value == 1
    assert one["xyserve:request_failed"].value == 0
    assert one["xyserve:num_preemptions"].value == 0
    hist = {k: (v.count, v.sum) for k, v in one.items() if isinstance(v, Histogram)}
    assert hist["xyserve:request_prompt_tokens"] == (3, 30)
    assert hist["xyserve:request_generation_tokens"] == (3, 4 + 3 + 3)
    assert hist["xyserve:request_params_n"] == (2, 1 + 2)  # once per request
    assert hist["xyserve:request_max_num_generation_tokens"] == (2, 4 + 3)
    assert hist["xyserve:request_params_max_tokens"] == (3, 4 + 3 + 3)
    assert hist["xyserve:time_to_first_token_seconds"][0] == 4  # every sample, C's too
    # one inter-token latency per later token: A 3, B 2 + 2, C 1
    assert hist["xyserve:inter_token_latency_seconds"][0] == 3 + 4 + 1
    for name in (
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
        "request_inference_time_seconds",
        "request_time_per_output_token_seconds",
    ):
        assert hist["xyserve:" + name][0] == 3, name
    # every token of the steps: prompts when their first token comes, plus tokens generated
    assert hist["xyserve:iteration_tokens_total"][1] == 37 + 12
    assert one["xyserve:num_requests_running"].value == 0
    assert one["xyserve:num_requests_waiting"].value == 0
    assert one["xyserve:kv_cache_usage_perc"].value == 0
    assert one["xyserve:prefix_cache_hit_rate"].value == pytest.approx(18 / 37)


def test_every_metric_has_vllms_labels_and_shapes(workload: LLM) -> None:
    metrics = workload.get_metrics()
    assert {type(m) for m in metrics} == {Counter, Gauge, Histogram}
    for m in metrics:  # counters by their name without _total, as vLLM's reader
        assert m.name.startswith("xyserve:"), m
        assert not (isinstance(m, Counter) and m.name.endswith("_total")), m
        assert m.labels["model_name"] == "tiny" and m.labels["engine"] == "0", m
    ttft = _one(workload, "xyserve:time_to_first_token_seconds")
    assert ttft.buckets["+Inf"] == ttft.count and "2560.0" in ttft.buckets
    tokens = _one(workload, "xyserve:request_prompt_tokens")
    assert [float(b) for b in tokens.buckets][:-1] == build_1_2_5_buckets(128)


def test_get_metrics_and_the_metrics_endpoint_agree(workload: LLM) -> None:
    """Both read the engine's one registry: every value of one is the value of the other."""
    app = create_app(AsyncLLM(workload.llm_engine), shutdown_engine=False)
    text = TestClient(app).get("/metrics").text  # no lifespan: the engine thread stays off
    for m in workload.get_metrics():
        if isinstance(m, Histogram):
            assert metric(text, m.name + "_count", **m.labels) == m.count
            assert metric(text, m.name + "_sum", **m.labels) == pytest.approx(m.sum)
            for le, n in m.buckets.items():
                assert metric(text, m.name + "_bucket", le=le, **m.labels) == n
        elif isinstance(m, Counter):
            assert metric(text, m.name + "_total", **m.labels) == m.value, m.name
        else:
            assert metric(text, m.name, **m.labels) == pytest.approx(m.value), m.name


def test_a_failed_sample_counts_as_an_error(tiny_llama: Path) -> None:
    llm = LLM(str(tiny_llama), device="cpu", max_model_len=128)
    eng = llm.llm_engine
    real = eng.output.finish_reason

    def flaky(group, child):  # noqa: ANN001, ANN202 - fails one request after two tokens
        if group.request_id == "bad" and len(child.request.output_token_ids) == 2:
            raise RuntimeError("a detokenizer bug")
        return real(group, child)

    eng.output.finish_reason = flaky
    eng.add_request(P, SamplingParams(n=2, max_tokens=5, ignore_eos=True), request_id="bad")
    eng.add_request(Q, SamplingParams(max_tokens=5, ignore_eos=True), request_id="good")
    while eng.has_unfinished_requests():
        eng.step()
    success = {
        s.labels["finished_reason"]: s.value for s in _by_name(llm)["xyserve:request_success"]
    }
    assert success["error"] == 2 and success["length"] == 1  # each sample of "bad" failed
    assert _one(llm, "xyserve:request_failed").value == 1  # one request
    assert _one(llm, "xyserve:request_params_n").count == 2
    eng.kv.check_no_leak()

"""One request can only hurt itself: validation before admission, per-request failures inside
a step, atomic aborts, limits, and every parameter honoured or refused (issue 17)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from server_harness import Server, metric, run_server

from xyserve.config import EngineConfig
from xyserve.engine.sampler import SampleRow, sample
from xyserve.sampling_params import SamplingParams
from xyserve.server.options import ServerOptions
from xyserve.server.protocol import ChatCompletionRequest, CompletionRequest

MODEL = "tiny"
MAX_MODEL_LEN = 1024  # the tiny model's max_position_embeddings, the engine's default
NUM_KV_BLOCKS = 24  # 384 tokens at block size 16: less than MAX_MODEL_LEN
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name=MODEL,
        num_kv_blocks=NUM_KV_BLOCKS,
        max_num_seqs=16,
        max_num_batched_tokens=128,
        max_n=8,
        max_stop_strings=4,
        max_request_body_bytes=64 * 1024,
        device="cpu",
    )
    with run_server(config) as srv:
        yield srv


def post(server: Server, path: str, payload: object, **kw) -> httpx.Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(
        f"{server.url}{path}",
        content=data,
        headers={"content-type": "application/json", **kw.pop("headers", {})},
        timeout=kw.pop("timeout", 30),
    )


CHAT = [{"role": "user", "content": "Hello"}]
BASE = {"model": MODEL, "prompt": "Hello world", "max_tokens": 4}


# ---- the hang: a request that can never fit ------------------------------------------------


def test_max_model_len_is_capped_to_the_kv_cache(server: Server) -> None:
    assert server.engine.max_model_len == NUM_KV_BLOCKS * 16 < MAX_MODEL_LEN
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["data"][0]["max_model_len"] == NUM_KV_BLOCKS * 16


def test_request_that_can_never_fit_is_a_400_not_a_hang(server: Server) -> None:
    # Fits max_model_len as configured, but not the K/V cache: today it would wait forever.
    r = post(server, "/v1/completions", {**BASE, "max_tokens": 450, "ignore_eos": True}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(server, "/v1/completions", {**BASE, "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    server.assert_clean()


# ---- bad requests, each refused before admission ---------------------------------------------

VOCAB = 300
BAD = [
    # (path, payload, param) -- every one a 400 naming param
    ("/v1/completions", {**BASE, "stop_token_ids": [VOCAB + 5], "min_tokens": 2}, "stop_token_ids"),
    ("/v1/completions", {**BASE, "repetition_penalty": 1e-30}, "repetition_penalty"),
    ("/v1/completions", {**BASE, "repetition_penalty": 1e30}, "repetition_penalty"),
    ("/v1/completions", {**BASE, "n": 2, "seed": 2**64 - 1}, "seed"),
    ("/v1/completions", {**BASE, "seed": 2**70}, "seed"),
    ("/v1/completions", {**BASE, "n": 1000}, "n"),
    ("/v1/completions", {**BASE, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/completions", {**BASE, "stop": [""]}, "stop"),
    ("/v1/completions", {**BASE, "logit_bias": {str(VOCAB): 5}}, "logit_bias"),
    ("/v1/completions", {**BASE, "logit_bias": {"1": 500}}, "logit_bias"),
    ("/v1/completions", {**BASE, "logit_bias": {"x": 1}}, "logit_bias"),
    ("/v1/completions", {**BASE, "best_of": 2}, "best_of"),
    ("/v1/completions", {**BASE, "suffix": "tail"}, "suffix"),
    ("/v1/completions", {**BASE, "prompt_logprobs": 21}, "prompt_logprobs"),
    ("/v1/completions", {**BASE, "prompt_logprobs": -1}, "prompt_logprobs"),
    ("/v1/completions", {**BASE, "stream": True, "prompt_logprobs": 1}, "prompt_logprobs"),
    ("/v1/completions", {**BASE, "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": True,
                              "prompt_logprobs": 0}, "prompt_logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT,
                              "continue_final_message": True}, "continue_final_message"),
    ("/tokenize", {"model": MODEL, "prompt": "x", "continue_final_message": True},
     "continue_final_message"),
    ("/v1/completions", {**BASE, "prompt": "bad \ud800 text"}, "prompt"),
    ("/v1/completions", {**BASE, "no_such_field": 1}, "no_such_field"),
    ("/v1/completions", {**BASE, "guided_regex": "("}, "guided_regex"),
    ("/v1/completions", {**BASE, "guided_json": {"type": "bogus"}}, "guided_json"),
    # two constraints: the 400 names a field the request gave (it named response_format)
    ("/v1/completions", {**BASE, "guided_json": {}, "guided_regex": "a"}, "guided_regex"),
    ("/v1/completions", {**BASE, "guided_choice": ["a"], "structured_outputs": {"regex": "a"}},
     "structured_outputs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "response_format": {
        "type": "json_object"}, "guided_grammar": 'start: "a"'}, "guided_grammar"),
    ("/v1/completions", {**BASE, "guided_json": "{not json"}, "guided_json"),
    ("/v1/completions", {**BASE, "guided_regex": "a", "guided_decoding_backend": "xgrammar"},
     "guided_decoding_backend"),
    # none of these ids is '{': it was a 500 from the first step
    ("/v1/completions", {**BASE, "guided_json": {"type": "object"}, "allowed_token_ids": [5, 6]},
     "allowed_token_ids"),
    ("/v1/completions", {**BASE, "structured_outputs": {"json": "{not json"}},
     "structured_outputs"),
    ("/v1/completions", {**BASE, "structured_outputs": {}}, "structured_outputs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
     "messages.0.role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]},
     "messages.0.content"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]},
     "messages.0.tool_call_id"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "top_logprobs": 2},
     "top_logprobs"),
    # tool_choice "auto" (the default with tools) needs --enable-auto-tool-choice
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tool_choice"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "tool_choice": "required"},
     "tool_choice"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "response_format": {
        "type": "json_schema"}}, "response_format"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": "lone \udc00 surrogate"}]}, "messages"),
    # accepted and ignored before: now refused
    ("/v1/completions", {**BASE, "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {**BASE, "stream": True, "stream_options": {
        "continuous_usage_stats": True}}, "stream_options"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "response_format": {
        "type": "json_object", "json_schema": {"name": "p", "schema": {"type": "object"}}}},
     "response_format"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 3,
                              "max_completion_tokens": 5}, "max_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "user", "content": "y"}]}, "messages.0.function_call"),
    ("/tokenize", {"model": MODEL, "prompt": "x", "messages": CHAT}, "prompt"),
    # chat names its own fields: the messages (not "prompt"), max_completion_tokens
    ("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": "Hello " * 1000}]}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_completion_tokens": 10**4},
     "max_completion_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 10**4},
     "max_tokens"),
    # min_tokens beyond what the context leaves the prompt when max_tokens is unset (chat's
    # default): it could never be honoured
    ("/v1/completions", {**BASE, "max_tokens": None, "min_tokens": NUM_KV_BLOCKS * 16},
     "min_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "min_tokens": 10**6},
     "min_tokens"),
    ("/tokenize", {"model": MODEL, "prompt": "x", "add_generation_prompt": False},
     "add_generation_prompt"),
]  # fmt: skip


def test_prompt_too_long_without_max_tokens_says_so(server: Server) -> None:
    """The 400 for a prompt longer than the context, with max_tokens unset, says what is
    wrong, not that max_tokens is some negative number the client never sent."""
    r = post(server, "/v1/completions", {**BASE, "prompt": "Hello " * 1000, "max_tokens": None})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert "max_tokens is -" not in r.json()["error"]["message"], r.text
    server.assert_clean()


def _infinite_temperature() -> bytes:
    return json.dumps({**BASE, "temperature": math.inf}).encode()  # "Infinity", as JS sends


@pytest.mark.parametrize("path,payload,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_request_is_a_400_naming_its_field(server: Server, path, payload, param) -> None:
    r = post(server, path, payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    server.assert_clean()  # nothing admitted, nothing orphaned


def test_infinite_temperature_is_refused(server: Server) -> None:
    r = post(server, "/v1/completions", _infinite_temperature())
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_connection_survives_errors(server: Server) -> None:
    """Keep-alive: the same connection serves a good request after each kind of error."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for payload in (
            {**BASE, "prompt": "x \ud800"},
            {**BASE, "temperature": -1},
            b"{not json",
        ):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            r = c.post("/v1/completions", content=data)
            assert r.status_code == 400
            r = c.post("/v1/completions", json={**BASE, "max_tokens": 1})
            assert r.status_code == 200
        r = c.post("/v1/completions", content=b"x" * (65 * 1024))
        assert r.status_code == 413
    server.assert_clean()


def test_bad_requests_while_two_streams_run(server: Server) -> None:
    """Every bad request above, sent while two greedy streams are in flight: both streams
    finish with the text they give when run alone."""
    kw = {"model": MODEL, "max_tokens": 340, "temperature": 0.0, "ignore_eos": True}
    prompts = ["The quick brown", "def add(a, b):"]
    alone = [
        post(server, "/v1/completions", {**kw, "prompt": p}).json()["choices"][0]["text"]
        for p in prompts
    ]

    async def stream(client: httpx.AsyncClient, prompt: str, started: asyncio.Event) -> str:
        text = ""
        payload = {**kw, "prompt": prompt, "stream": True}
        async with client.stream("POST", "/v1/completions", json=payload) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    text += chunk["choices"][0]["text"]
                    started.set()
        return text

    async def main() -> tuple[list[str], int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            events = [asyncio.Event(), asyncio.Event()]
            tasks = [asyncio.create_task(stream(client, p, e)) for p, e in zip(prompts, events)]
            await asyncio.gather(*(e.wait() for e in events))

            async def bad(path: str, payload: dict) -> bool:
                r = await client.post(path, content=json.dumps(payload).encode())
                assert r.status_code == 400, (payload, r.text)
                return not any(t.done() for t in tasks)  # answered while both streams ran

            during = await asyncio.gather(*(bad(path, payload) for path, payload, _ in BAD))
            return await asyncio.gather(*tasks), sum(during)

    preempted = server.engine.scheduler.num_preemptions
    texts, num_during = asyncio.run(main())
    assert texts == alone
    # Both streams need 22 of the 24 K/V blocks: they only finish by preempting each other.
    assert server.engine.scheduler.num_preemptions > preempted
    assert num_during > 0, "no bad request was answered while the streams ran"
    server.assert_clean()


# ---- failures inside a step fail only their request -------------------------------------------


def test_sampler_row_failure_is_that_rows_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    ok = SamplingParams(temperature=0.7, seed=1)
    rows = [
        SampleRow(ok, [1], [], torch.Generator().manual_seed(1), []),
        SampleRow(ok, [1], [], torch.Generator().manual_seed(1), list(range(50))),  # nothing left
        SampleRow(SamplingParams(temperature=0.0), [1], [], None, []),
    ]
    res = sample(logits, rows)
    assert res[1].error is not None and "no token" in res[1].error
    assert res[0].error is None and res[2].error is None
    assert res[2].token_id == int(logits[2].argmax())
    alone = sample(logits[:1], rows[:1])
    assert alone[0].error is None


def test_output_failure_fails_one_request_and_the_batch_goes_on(tiny_llama: Path) -> None:
    from xyserve.engine.engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=str(tiny_llama), device="cpu", max_model_len=128))
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    eng.add_request("Hello world", greedy, request_id="good")
    eng.add_request("Hello world", greedy, request_id="bad")
    real = eng.output.finish_reason

    def flaky(group, child):  # noqa: ANN001, ANN202
        if group.request_id == "bad" and len(child.request.output_token_ids) == 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a detokenizer bug")
        return real(group, child)

    eng.output.finish_reason = flaky
    finals = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                finals[out.request_id] = out
    assert finals["bad"].error and "UnicodeDecodeError" in finals["bad"].error
    assert finals["good"].error is None and len(finals["good"].outputs[0].token_ids) == 6
    assert eng.num_failed_requests == 1
    eng.kv.check_no_leak()
    assert not eng.scheduler.requests


# ---- atomic abort: nothing left after each kind of failure ------------------------------------


def test_a_withdrawn_request_leaves_no_trace_in_the_counts(tiny_llama: Path) -> None:
    """The rollback of a multi-prompt add that failed part-way: the prompts admitted before the
    failure are withdrawn, not aborted, and their prompt tokens leave the count."""
    from xyserve.engine.engine import LLMEngine

    eng = LLMEngine(EngineConfig(model=str(tiny_llama), device="cpu", max_model_len=128))
    eng.add_request([5, 6, 7], SamplingParams(n=2, max_tokens=3), request_id="taken-back")
    assert eng.scheduler.requests
    eng.withdraw_request("taken-back")
    assert eng.num_prompt_tokens == 0 and eng.num_aborted_requests == 0
    assert not eng.has_unfinished_requests() and not eng.scheduler.requests
    eng.kv.check_no_leak()


def test_a_child_id_taken_by_another_request_is_refused_and_harms_nothing(
    tiny_llama: Path,
) -> None:
    """``n`` > 1 names the children ``<id>#<i>``; one of those may already be another request's
    id. The add is refused before anything is admitted, and the other request keeps its own
    state (its child mapping was overwritten, and the new request's first child left running
    for nobody)."""
    from xyserve.engine.engine import LLMEngine
    from xyserve.engine.intake import RequestValidationError

    eng = LLMEngine(EngineConfig(model=str(tiny_llama), device="cpu", max_model_len=128))
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    eng.add_request([5, 6, 7], params, request_id="x#1")
    with pytest.raises(RequestValidationError, match="x#1"):
        eng.add_request([8, 9], SamplingParams(n=2, max_tokens=3), request_id="x")
    assert list(eng.groups) == ["x#1"] and list(eng.scheduler.requests) == ["x#1"]
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    assert [o.request_id for o in outs if o.finished] == ["x#1"]
    assert len(outs[-1].outputs[0].token_ids) == 3
    eng.kv.check_no_leak()


def test_echo_refused_after_admission_aborts_its_requests(tiny_llama: Path) -> None:
    """Echo of a token prompt needs a tokenizer; the 400 it gets comes after the requests were
    added, and they must not run on for nobody."""
    config = EngineConfig(
        model=str(tiny_llama), device="cpu", max_model_len=512, skip_tokenizer_init=True
    )
    with run_server(config) as srv:
        payload = {"prompt": [[5, 6, 7]], "max_tokens": 400, "ignore_eos": True, "echo": True}
        r = post(srv, "/v1/completions", payload)
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo", r.text
        srv.assert_clean()
        assert srv.engine.num_aborted_requests == 1


def test_no_orphans_after_a_rejected_fanout(server: Server) -> None:
    r = post(server, "/v1/completions", {**BASE, "prompt": ["ok", [VOCAB + 1]], "n": 2})
    assert r.status_code == 400
    server.assert_clean()


def test_no_orphans_after_timeout(tiny_llama: Path) -> None:
    config = EngineConfig(
        model=str(tiny_llama), device="cpu", max_model_len=512, request_timeout_s=0.3
    )
    with run_server(config) as srv, srv.slow_steps():
        payload = {"prompt": "Hello", "max_tokens": 480, "ignore_eos": True}
        r = post(srv, "/v1/completions", payload)
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
        with httpx.stream(
            "POST", f"{srv.url}/v1/completions", json={**payload, "stream": True}, timeout=30
        ) as resp:
            lines = [line for line in resp.iter_lines() if line]
        assert "request_timeout" in lines[-2] and lines[-1] == "data: [DONE]"
        srv.assert_clean()
        assert srv.engine.num_aborted_requests == 2
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert metric(metrics, "xyserve:request_aborted_total", engine="0") == 2


def test_max_waiting_gives_503_with_retry_after(tiny_llama: Path) -> None:
    import threading

    config = EngineConfig(
        model=str(tiny_llama), device="cpu", max_num_seqs=1, max_waiting_requests=2
    )
    long = {"prompt": "Hello", "max_tokens": 1000, "ignore_eos": True}
    with run_server(config) as srv:
        # A gate in front of each step holds the engine thread, so requests pile up at will.
        gate, real_step = threading.Event(), srv.engine.step
        gate.set()
        srv.engine.step = lambda: gate.wait(30) and real_step()

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                async with client.stream(
                    "POST", "/v1/completions", json={**long, "stream": True}
                ) as a:
                    await a.aiter_lines().__anext__()  # running
                    gate.clear()
                    waiting = [
                        asyncio.create_task(client.post("/v1/completions", json=long))
                        for _ in range(2)
                    ]
                    deadline = time.monotonic() + 30
                    while srv.llm.num_waiting < 2:
                        assert time.monotonic() < deadline, srv.llm.num_waiting
                        await asyncio.sleep(0.005)
                    r = await client.post("/v1/completions", json={**long, "max_tokens": 1})
                    gate.set()
                    for t in waiting:
                        t.cancel()
                    await asyncio.gather(*waiting, return_exceptions=True)
                    return r

        try:
            r = asyncio.run(main())
        finally:
            gate.set()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "server_busy"
        srv.assert_clean()
        r = post(srv, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        assert r.status_code == 200  # below the limit again


# ---- body limit -------------------------------------------------------------------------------


def test_body_limit_413_before_parsing(server: Server) -> None:
    big = json.dumps({**BASE, "prompt": "x" * (1 << 20)}).encode()  # 1 MiB > 64 KiB
    t0 = time.monotonic()
    r = post(server, "/v1/completions", big)
    assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming in
        for _ in range(32):
            yield b" " * 4096

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(), timeout=30)
    assert r.status_code == 413
    assert time.monotonic() - t0 < 20  # generous: this is about not hanging, not speed
    server.assert_clean()


# ---- parameters that used to be ignored -------------------------------------------------------


def test_logit_bias_is_honoured(server: Server) -> None:
    target = server.tokenizer.encode("fox", add_special_tokens=False)[0]
    payload = {**BASE, "max_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    r = post(server, "/v1/completions", {**payload, "logit_bias": {str(target): 100}})
    assert r.status_code == 200
    (choice,) = r.json()["choices"]
    ids = server.tokenizer.encode(choice["text"], add_special_tokens=False)
    assert set(ids) == {target}
    # Sampled too: +100 dominates any logit of a random model.
    r = post(server, "/v1/completions", {**payload, "temperature": 1.0, "seed": 3,
                                         "logit_bias": {str(target): 100}})  # fmt: skip
    assert set(server.tokenizer.encode(r.json()["choices"][0]["text"], False)) == {target}


def test_echo(server: Server) -> None:
    payload = {**BASE, "prompt": "Hello world", "temperature": 0.0, "max_tokens": 3}
    plain = post(server, "/v1/completions", payload).json()["choices"][0]["text"]
    echoed = post(server, "/v1/completions", {**payload, "echo": True}).json()
    assert echoed["choices"][0]["text"] == "Hello world" + plain
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json={**payload, "echo": True, "stream": True}
    ) as resp:
        chunks = [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello world" + plain


# The OpenAI request fields and vLLM extras: how each is honoured, or the value it refuses.
HONOURED = {
    "model", "prompt", "messages", "n", "temperature", "top_p", "presence_penalty",
    "frequency_penalty", "seed", "stop", "stream", "stream_options", "user", "top_k", "min_p",
    "repetition_penalty", "stop_token_ids", "ignore_eos", "min_tokens", "skip_special_tokens",
    "include_stop_str_in_output", "logit_bias", "response_format", "guided_json",
    "guided_regex", "guided_choice", "guided_grammar", "structured_outputs",
    "guided_decoding_backend", "max_tokens",
    "max_completion_tokens", "logprobs", "top_logprobs", "echo", "add_generation_prompt",
    "add_special_tokens", "prompt_logprobs", "continue_final_message", "tools", "tool_choice",
    "parallel_tool_calls", "allowed_token_ids", "bad_words", "truncate_prompt_tokens",
    "chat_template_kwargs", "priority", "return_tokens_as_token_ids", "include_reasoning",
    "use_beam_search", "length_penalty",
}  # fmt: skip
REFUSED = {
    "best_of": 2, "suffix": "x", "functions": [{"name": "f"}], "function_call": "auto",
    "audio": {"voice": "x"}, "modalities": ["audio"], "prediction": {"type": "content"},
    "reasoning_effort": "low", "service_tier": "flex", "store": True, "metadata": {"a": "b"},
    "web_search_options": {},
}  # fmt: skip


@pytest.mark.parametrize("model_cls", [CompletionRequest, ChatCompletionRequest])
def test_every_request_field_is_honoured_or_refused(server: Server, model_cls) -> None:
    fields = set(model_cls.model_fields)
    assert fields <= HONOURED | set(REFUSED), (
        f"unclassified fields: {fields - HONOURED - set(REFUSED)}"
    )
    path = "/v1/completions" if model_cls is CompletionRequest else "/v1/chat/completions"
    base = BASE if model_cls is CompletionRequest else {"model": MODEL, "messages": CHAT}
    for name in sorted(fields & set(REFUSED)):
        r = post(server, path, {**base, name: REFUSED[name]})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["param"] == name
    server.assert_clean()


# ---- structured outputs -----------------------------------------------------------------------

SCHEMAS = [
    {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                        "maximum": 99}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6},
                       "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
        "required": ["name", "tags"],
        "additionalProperties": False,
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1,
     "maxItems": 4},
]  # fmt: skip


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_output_validates(server: Server, i: int) -> None:
    import jsonschema

    schema = SCHEMAS[i]
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    r = post(server, "/v1/chat/completions", {"model": MODEL, "messages": CHAT,
             "response_format": rf, "max_tokens": 120, "temperature": 1.0, "seed": i, "n": 2})  # fmt: skip
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    # vLLM's spelling, on completions.
    r = post(server, "/v1/completions", {**BASE, "guided_json": schema, "max_tokens": 120})
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), schema)
    server.assert_clean()


def test_json_object_regex_choice(server: Server) -> None:
    kw = {**BASE, "max_tokens": 100, "temperature": 1.0, "seed": 5}
    r = post(server, "/v1/completions", {**kw, "response_format": {"type": "json_object"}})
    (choice,) = r.json()["choices"]
    # Any object: free-form strings may outlast max_tokens on a random model, so a cut-off
    # output is allowed, but it must be the start of an object and parse when complete.
    assert choice["text"].startswith("{"), choice
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["text"]), dict)
    for backend in (None, "auto", "guidance"):  # vLLM's names of ours: llguidance
        body = {**kw, "guided_regex": "[a-c]{2}-[0-9]{3}", "guided_decoding_backend": backend}
        r = post(server, "/v1/completions", body)
        text = r.json()["choices"][0]["text"]
        assert len(text) == 6 and text[2] == "-" and text[3:].isdigit(), text
    r = post(server, "/v1/completions", {**kw, "guided_choice": ["red", "green", "blue"]})
    assert r.json()["choices"][0]["text"] in ("red", "green", "blue")
    r = post(server, "/v1/completions", {**kw, "structured_outputs": {"choice": ["yes", "no"]}})
    assert r.json()["choices"][0]["text"] in ("yes", "no")
    lark = 'start: "x=" NUM ";"\nNUM: /[0-9]{1,3}/'
    r = post(server, "/v1/completions", {**kw, "guided_grammar": lark})
    text = r.json()["choices"][0]["text"]
    assert text.startswith("x=") and text.endswith(";") and text[2:-1].isdigit(), text
    gbnf = 'root ::= "x=" num ";"\nnum ::= [0-9] [0-9]?'  # llama.cpp's, as vLLM takes it too
    r = post(server, "/v1/completions", {**kw, "guided_grammar": gbnf})
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert text.startswith("x=") and text.endswith(";") and text[2:-1].isdigit(), text
    server.assert_clean()


# ---- operations -------------------------------------------------------------------------------


def test_tokenize_detokenize_version_model_card(server: Server) -> None:
    r = post(server, "/tokenize", {"prompt": "Hello world"})
    assert r.status_code == 200
    toks = r.json()["tokens"]
    assert toks == server.tokenizer.encode("Hello world") and r.json()["count"] == len(toks)
    back = post(server, "/detokenize", {"tokens": toks}).json()["prompt"]
    assert back.endswith("Hello world")
    chat = post(server, "/tokenize", {"messages": CHAT}).json()
    text = server.tokenizer.apply_chat_template(CHAT)
    assert chat["tokens"] == server.tokenizer.encode(text, add_special_tokens=False)
    assert post(server, "/detokenize", {"tokens": [VOCAB]}).status_code == 400
    assert post(server, "/tokenize", {"prompt": "x\ud800"}).status_code == 400
    assert httpx.get(f"{server.url}/version").json()["version"]
    assert httpx.get(f"{server.url}/v1/models/{MODEL}").json()["id"] == MODEL
    assert httpx.get(f"{server.url}/v1/models/gpt-4").status_code == 404


def test_api_key_cors_and_chat_template(tiny_llama: Path) -> None:
    config = EngineConfig(model=str(tiny_llama), device="cpu", served_model_name=MODEL)
    options = ServerOptions(
        api_key=KEY,
        allowed_origins=["https://ui.example"],
        chat_template=(
            "{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('system messages are not supported') }}{% endif %}"
            "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        ),
    )
    with run_server(config, options) as srv:
        assert httpx.get(f"{srv.url}/health").status_code == 200
        assert httpx.get(f"{srv.url}/metrics").status_code == 200
        r = httpx.get(f"{srv.url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bad = {"authorization": "Bearer nope"}
        assert httpx.get(f"{srv.url}/v1/models", headers=bad).status_code == 401
        good = {"authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{srv.url}/v1/models", headers=good).status_code == 200
        assert srv.client(KEY).models.list().data[0].id == MODEL
        pre = httpx.options(
            f"{srv.url}/v1/completions",
            headers={"origin": "https://ui.example", "access-control-request-method": "POST"},
        )
        assert pre.headers["access-control-allow-origin"] == "https://ui.example"
        r = httpx.post(f"{srv.url}/tokenize", json={"messages": CHAT}, headers=good)
        ids = r.json()["tokens"]
        assert srv.tokenizer.decode(ids) == "[user] Hello\n"
        # the template's raise_exception: a 400 in LLM.chat's words (test_sampling)
        system = [{"role": "system", "content": "be brief"}, *CHAT]
        body = {"model": MODEL, "messages": system, "max_tokens": 2}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, headers=good)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        want = "cannot apply the chat template: system messages are not supported"
        assert r.json()["error"]["message"] == want


def test_busy_port_is_reported_before_the_model_loads(capsys) -> None:
    from xyserve.server.cli import main

    holder = socket_on_free_port()
    port = holder.getsockname()[1]
    try:
        rc = main(["/no/such/model", "--port", str(port), "--device", "cpu"])
    finally:
        holder.close()
    assert rc == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "model" not in err


def socket_on_free_port():  # noqa: ANN201
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_tokenization_runs_off_the_engine_thread(server: Server, caplog) -> None:
    """A big prompt's tokenisation never stalls the engine loop; one log line per request."""
    import logging
    import threading

    tok = server.engine.tokenizer
    real, threads = tok.encode, []

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    tok.encode = spy
    try:
        with caplog.at_level(logging.INFO, logger="xyserve.server"):
            r = post(server, "/v1/completions", {**BASE, "user": "u-42"})
    finally:
        del tok.encode
    assert r.status_code == 200 and threads
    assert "xyserve-engine" not in threads
    lines = [m for m in caplog.messages if r.json()["id"] in m]
    assert len(lines) == 1 and "completion_tokens=4" in lines[0] and "user=u-42" in lines[0]


def test_a_user_with_a_line_break_cannot_forge_a_log_line(server: Server, caplog) -> None:
    """``user`` is the client's text: written into the request's log line as it is, a line
    break in it would start a line that reads as the server's own."""
    import logging

    forged = "u-1\nrequest cmpl-forged: prompt_tokens=1 completion_tokens=1 finish=stop"
    with caplog.at_level(logging.INFO, logger="xyserve.server"):
        r = post(server, "/v1/completions", {**BASE, "user": forged})
    assert r.status_code == 200, r.text
    (line,) = [m for m in caplog.messages if r.json()["id"] in m]
    assert "\n" not in line and "\r" not in line
    assert "user=u-1\\nrequest cmpl-forged" in line


def test_metrics_counters(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("xyserve:num_preemptions_total", "xyserve:request_aborted_total",
                 "xyserve:request_failed_total"):  # fmt: skip
        assert name in text


def _metric(server: Server, name: str) -> float:
    return metric(httpx.get(f"{server.url}/metrics").text, name, model_name=MODEL, engine="0")


def test_ttft_is_observed_once_for_a_request_failing_after_its_first_token(
    server: Server,
) -> None:
    """A request that fails in a later step (its output then carries the error and no new
    token) still counts one first token, not two."""
    ttft = "xyserve:time_to_first_token_seconds_count"
    before_ttft, before_failed = (
        _metric(server, ttft),
        _metric(server, "xyserve:request_failed_total"),
    )
    output = server.engine.output
    real = output.record_logprobs

    def flaky(child, res):  # noqa: ANN001, ANN202 - fails the step after the first token
        if len(child.request.output_token_ids) == 1:
            raise RuntimeError("a logprob bug")
        return real(child, res)

    output.record_logprobs = flaky
    try:
        r = post(server, "/v1/completions", {**BASE, "max_tokens": 6, "ignore_eos": True})
    finally:
        del output.record_logprobs
    assert r.status_code == 500 and "a logprob bug" in r.json()["error"]["message"]
    server.assert_clean()
    assert _metric(server, "xyserve:request_failed_total") == before_failed + 1
    assert _metric(server, ttft) == before_ttft + 1


def test_cli_server_flags(tmp_path: Path, monkeypatch) -> None:
    from xyserve.server.cli import parse_args, server_options

    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ messages[0]['content'] }}")
    ns, cfg = parse_args(
        ["--api-key", "k", "--allowed-origins", '["https://a.example"]', "--chat-template",
         str(tpl), "--disable-log-requests", "--max-request-body-bytes", "1000",
         "--max-waiting-requests", "3", "--request-timeout-s", "2.5"]
    )  # fmt: skip
    opts = server_options(ns)
    assert opts.api_key == "k" and opts.allowed_origins == ["https://a.example"]
    assert opts.chat_template == tpl.read_text() and opts.disable_log_requests
    assert cfg.max_request_body_bytes == 1000 and cfg.max_waiting_requests == 3
    assert cfg.request_timeout_s == 2.5
    monkeypatch.setenv("XYSERVE_API_KEY", "from-env")
    ns, _ = parse_args(["--allowed-origins", "https://a.example, https://b.example"])
    opts = server_options(ns)
    assert opts.api_key == "from-env"
    assert opts.allowed_origins == ["https://a.example", "https://b.example"]
    assert server_options(parse_args(["--chat-template", "{{ x }}"])[0]).chat_template == "{{ x }}"
    for bad in (["--chat-template", "no/such/file"], ["--allowed-origins", "[1"]):
        with pytest.raises(ValueError):
            server_options(parse_args(bad)[0])
    with pytest.raises(SystemExit):
        parse_args(["--max-n", "0"])


def test_a_port_out_of_range_is_a_usage_error(capsys) -> None:
    from xyserve.server.cli import main

    with pytest.raises(SystemExit) as exc:  # was an OverflowError traceback from bind()
        main(["--port", "99999"])
    assert exc.value.code == 2 and "--port" in capsys.readouterr().err

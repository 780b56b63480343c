"""The OpenAI-compatible server on loopback, driven by the ``openai`` client (and httpx)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_harness import Server, metric, run_server

from xyserve.config import EngineConfig
from xyserve.outputs import CompletionOutput
from xyserve.server.cli import DEFAULT_HOST, DEFAULT_PORT, build_parser, parse_args
from xyserve.server.render import ChoiceState
from xyserve.server.sse import text_delta

MODEL = "tiny"
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name=MODEL,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=64,
        max_num_batched_tokens=256,
        device="cpu",
    )
    with run_server(config) as srv:
        yield srv


GREEDY = dict(temperature=0.0, extra_body={"ignore_eos": True})


def test_models_and_health(server: Server) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].max_model_len == MAX_MODEL_LEN
    assert httpx.get(f"{server.url}/health").status_code == 200
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_completion(server: Server) -> None:
    client = server.client()
    prompt = "Hello world! Serving"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, **GREEDY)
    assert r.object == "text_completion" and r.model == MODEL
    (choice,) = r.choices
    assert choice.finish_reason == "length" and choice.index == 0
    assert r.usage.prompt_tokens == len(server.tokenizer.encode(prompt))
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6
    # Greedy is deterministic: the same request gives the same text.
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, **GREEDY)
    assert again.choices[0].text == choice.text
    # Token ids are a prompt too.
    ids = server.tokenizer.encode(prompt)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, **GREEDY)
    assert by_ids.choices[0].text == choice.text


def test_completion_n_logprobs_seed_multi_prompt(server: Server) -> None:
    client = server.client()
    kw = dict(model=MODEL, max_tokens=4, n=2, logprobs=3, seed=7, temperature=1.0, top_p=0.9)
    kw["extra_body"] = {"ignore_eos": True, "top_k": 50, "min_p": 0.01}
    r = client.completions.create(prompt="import os", **kw)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 8
    for c in r.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
        assert all(x <= 0 for x in lp.token_logprobs)
        assert all(1 <= len(top) <= 4 for top in lp.top_logprobs)
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    same = client.completions.create(prompt="import os", **kw)
    assert [c.text for c in same.choices] == [c.text for c in r.choices]
    # Several prompts: choices are numbered prompt-major, usage sums over all.
    r = client.completions.create(
        model=MODEL, prompt=["def add", "The quick brown"], max_tokens=3, **GREEDY
    )
    assert [c.index for c in r.choices] == [0, 1]
    n_prompt = sum(len(server.tokenizer.encode(p)) for p in ["def add", "The quick brown"])
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 6


def _stop_across_tokens(client: openai.OpenAI, prompt: str) -> tuple[str, str] | None:
    """A greedy text and a 2-char stop string spanning two of its tokens (first occurrence)."""
    base = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=16, logprobs=0, **GREEDY
    ).choices[0]
    toks, text = base.logprobs.tokens, base.text
    for j in range(len(toks) - 1):
        a, b = toks[j], toks[j + 1]
        if not a or not b or "\ufffd" in a + b or not text.startswith("".join(toks[: j + 2])):
            continue
        stop = a[-1] + b[0]
        if text.find(stop) == len("".join(toks[: j + 1])) - 1:
            return text, stop
    return None


def test_stop_strings_and_token_ids(server: Server) -> None:
    client = server.client()
    found = None
    for prompt in ["for i in", "Hello world!", "def add(a, b):", "The quick", "import sys"]:
        found = found or _stop_across_tokens(client, prompt)
        if found:
            break
    assert found, "no greedy output with a stop string across two tokens"
    text, stop = found
    kw = dict(model=MODEL, prompt=prompt, max_tokens=16, stop=[stop], **GREEDY)
    r = client.completions.create(**kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.find(stop)]
    # Streamed, the tail that may start the stop string is held back, never sent.
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == text[: text.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Every token id stops: exactly one token comes out, and stop_reason names it.
    vocab = server.tokenizer.vocab_size
    r = client.completions.create(
        model=MODEL,
        prompt="for i in",
        max_tokens=12,
        temperature=0.0,
        extra_body={"stop_token_ids": list(range(vocab))},
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 1
    assert isinstance(r.choices[0].model_extra["stop_reason"], int)


def test_stop_token_text_follows_include_stop_str_in_output(server: Server) -> None:
    """As in vLLM, the token that stops a sequence (a stop_token_ids entry) is counted but its
    text is left out, unless ``include_stop_str_in_output``; streamed or not."""
    client = server.client()
    for prompt in ["Hello world!", "for i in", "def add(a, b):", "The quick"]:
        kw = dict(model=MODEL, prompt=prompt, max_tokens=1, temperature=0.0)
        first = client.completions.create(**kw).choices[0].text
        if first and "\ufffd" not in first:
            break
    assert first and "\ufffd" not in first, "no greedy first token with text: could not fail"
    every = list(range(server.tokenizer.vocab_size))
    for include, want in ((False, ""), (True, first)):
        extra = {"stop_token_ids": every, "include_stop_str_in_output": include}
        kw = dict(model=MODEL, prompt=prompt, max_tokens=12, temperature=0.0, extra_body=extra)
        r = client.completions.create(**kw)
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 1
        assert r.choices[0].text == want
        chunks = list(client.completions.create(stream=True, **kw))
        assert "".join(c.choices[0].text for c in chunks) == want
        chat_kw = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0.0)
        chat_first = client.chat.completions.create(max_tokens=1, **chat_kw)
        chat = client.chat.completions.create(max_tokens=12, extra_body=extra, **chat_kw)
        assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens == 1
        chat_want = chat_first.choices[0].message.content if include else ""
        assert chat.choices[0].message.content == chat_want
    server.assert_clean()


class _CountedStop(str):
    """A stop string that counts how often a piece of it is cut out (``s[:k]``)."""

    cuts = 0

    def __getitem__(self, key):  # noqa: ANN001, ANN204 - str's own signature
        _CountedStop.cuts += 1
        return str.__getitem__(self, key)


def test_stream_hold_back_looks_at_the_unsent_tail_only() -> None:
    """Streaming holds back a tail that may begin a stop string. Only text not sent yet can
    begin one, so the work per chunk follows the chunk, not the whole text times the stop's
    length: a request with long stop strings must not stall the event loop that serves
    every other request (it took some 60 ms per chunk with 32 stops of 100k characters)."""
    text = "abcdefghij" * 200
    stops = [_CountedStop("j" + "z" * 100_000), _CountedStop("q" * 50_000)]
    st, sent, chunks = ChoiceState(), "", 0
    _CountedStop.cuts = 0
    for end in range(10, len(text) + 1, 10):  # every chunk ends in "j": held back
        sent += text_delta(st, CompletionOutput(0, text[:end], [], None, None), stops)
        assert sent == text[: end - 1]
        chunks += 1
    done = CompletionOutput(0, text, [], None, None, finish_reason="length")
    sent += text_delta(st, done, stops)
    assert sent == text
    assert _CountedStop.cuts <= 20 * chunks * len(stops), _CountedStop.cuts


def test_chat(server: Server) -> None:
    client = server.client()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello"},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=5, **GREEDY
    )
    assert r.object == "chat.completion"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    text = server.tokenizer.apply_chat_template(messages)
    assert r.usage.prompt_tokens == len(server.tokenizer.encode(text, add_special_tokens=False))
    assert r.usage.completion_tokens == 5
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=3, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 3
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        # Greedy picks the most likely token.
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_streaming_completion(server: Server) -> None:
    client = server.client()
    kw = dict(model=MODEL, prompt="Hello world!", max_tokens=7, **GREEDY)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    body = [c for c in chunks[:-1]]
    assert all(c.usage is None for c in body)
    assert "".join(c.choices[0].text for c in body) == full
    assert [c.choices[0].finish_reason for c in body][-1] == "length"
    assert sum(c.choices[0].finish_reason is not None for c in body) == 1
    # On the wire: SSE events, then [DONE].
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Hello world!",
            "max_tokens": 7,
            "temperature": 0.0,
            "stream": True,
            "ignore_eos": True,
        },
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_streaming_chat(server: Server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "Hello"}]
    kw = dict(model=MODEL, messages=messages, max_completion_tokens=6, **GREEDY)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    body = chunks[:-1]
    assert "".join(c.choices[0].delta.content or "" for c in body) == full
    assert body[-1].choices[0].finish_reason == "length"


def _post(server: Server, path: str, payload: object) -> httpx.Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(
        f"{server.url}{path}", content=data, headers={"content-type": "application/json"}
    )


BAD_COMPLETIONS = [
    # (payload, status, param)
    (b'{"model": "tiny", "prompt": "hi",', 400, None),  # malformed JSON
    (b"not json at all", 400, None),
    ({"model": MODEL, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": 123}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ({"model": MODEL, "prompt": "hi", "n": 0}, 400, "n"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi " * MAX_MODEL_LEN, "max_tokens": 1}, 400, "prompt"),
    ({"model": MODEL, "prompt": [[1, 2], [999999]]}, 400, "prompt"),  # token id out of range
    ({"model": "gpt-4", "prompt": "hi"}, 404, "model"),
]


@pytest.mark.parametrize("payload,status,param", BAD_COMPLETIONS)
def test_bad_completion_requests(server: Server, payload: object, status: int, param) -> None:
    r = _post(server, "/v1/completions", payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["param"] == param
    if status == 404:
        assert err["code"] == "model_not_found"
    if payload is BAD_COMPLETIONS[11][0]:
        assert err["code"] == "context_length_exceeded"


BAD_CHATS = [
    ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"content": "no role"}]}, 400, "messages.0.role"),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -3},
        400,
        "max_tokens",
    ),
    (
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 0,
        },
        400,
        "max_completion_tokens",
    ),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 2}, 400, "top_p"),
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
]


@pytest.mark.parametrize("payload,status,param", BAD_CHATS)
def test_bad_chat_requests(server: Server, payload: object, status: int, param) -> None:
    r = _post(server, "/v1/chat/completions", payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param


def test_openai_client_errors_and_server_keeps_serving(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", temperature=-1)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=10_000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):  # a bad streaming request fails before streaming
        client.completions.create(model=MODEL, prompt="hi", top_p=3.0, stream=True)
    r = client.completions.create(model=MODEL, prompt="hi", max_tokens=2, **GREEDY)
    assert r.usage.completion_tokens == 2
    server.wait_idle()


def test_64_concurrent_streams(server: Server) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.completions.create(
            model=MODEL,
            prompt=f"Request {i}: the quick brown fox",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
        text, usage, reasons = "", None, []
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                reasons.append(chunk.choices[0].finish_reason)
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
        assert reasons[-1] == "length"
        return text, usage

    async def main() -> list[tuple[str, int]]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        try:
            return await asyncio.gather(*(one(client, i) for i in range(64)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len(results) == 64 and all(usage == 8 for _, usage in results)
    server.wait_idle()
    server.engine.kv.check_no_leak()


def test_aborted_stream_frees_its_blocks(server: Server) -> None:
    server.wait_idle()
    eng = server.engine
    before = eng.num_generation_tokens
    stream = server.client().completions.create(
        model=MODEL, prompt="Hello", max_tokens=400, stream=True, **GREEDY
    )
    it = iter(stream)
    next(it), next(it)
    assert eng.kv.req_blocks  # the request holds blocks while it streams
    stream.close()
    server.wait_idle()
    eng.kv.check_no_leak()
    assert eng.num_generation_tokens - before < 400  # aborted, not run to the end


def test_disconnected_non_streaming_request_is_aborted(server: Server) -> None:
    server.wait_idle()
    eng = server.engine
    before = eng.num_generation_tokens
    payload = {"model": MODEL, "prompt": "Hello", "max_tokens": 450, "ignore_eos": True}
    with server.slow_steps():  # still running when the client gives up, whatever the CPU
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/completions", json=payload, timeout=0.3)
        server.wait_idle()
    eng.kv.check_no_leak()
    assert eng.num_generation_tokens - before < 450


def test_a_stream_whose_client_left_before_it_began_is_aborted(server: Server) -> None:
    """A streamed request whose client leaves while its add waits for the engine thread (busy
    in a step) is admitted after the client left: it is aborted all the same (Starlette starts
    the response's generator before it sees the disconnect, and the generator's ``finally``
    aborts the request), not run to its max_tokens for nobody."""
    server.wait_idle()
    eng = server.engine
    aborted, generated = eng.num_aborted_requests, eng.num_generation_tokens
    body = json.dumps(
        {"model": MODEL, "prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "stream": True}
    ).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"  # fmt: skip
    busy = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "ignore_eos": True}
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with server.slow_steps(0.5):  # each step sleeps 0.5 s first
        t = threading.Thread(
            target=httpx.post, args=(f"{server.url}/v1/completions",), kwargs={"json": busy, "timeout": 60}
        )  # fmt: skip
        t.start()
        while eng.num_generation_tokens == generated:  # until a step has just ended
            time.sleep(0.002)
        with socket.create_connection((host, int(port))) as sock:  # the next step sleeps now
            sock.sendall(head.encode() + body)
            time.sleep(0.1)  # the route's add waits in the inbox; then the client leaves
        t.join()
    server.wait_idle()
    eng.kv.check_no_leak()
    assert eng.num_aborted_requests == aborted + 1  # aborted, not run to its end
    assert eng.num_generation_tokens - generated < 3 + 400


def test_metrics(server: Server) -> None:
    server.client().completions.create(model=MODEL, prompt="metrics", max_tokens=3, **GREEDY)
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200
    text = r.text
    for name in [
        "xyserve:time_to_first_token_seconds_bucket",
        "xyserve:request_time_per_output_token_seconds_bucket",
        "xyserve:inter_token_latency_seconds_bucket",
        "xyserve:num_requests_running",
        "xyserve:num_requests_waiting",
        "xyserve:kv_cache_usage_perc",
        "xyserve:prefix_cache_hit_rate",
        "xyserve:prompt_tokens_total",
        "xyserve:generation_tokens_total",
    ]:
        assert name in text, name
    labels = {"model_name": MODEL, "engine": "0"}  # vLLM's labels, on every metric
    assert metric(text, "xyserve:generation_tokens_total", **labels) >= 3
    assert metric(text, "xyserve:prompt_tokens_total", **labels) >= 1
    assert metric(text, "xyserve:time_to_first_token_seconds_count", **labels) >= 1
    assert metric(text, "xyserve:request_time_per_output_token_seconds_count", **labels) >= 1
    length = {**labels, "finished_reason": "length"}
    assert metric(text, "xyserve:request_success_total", **length) >= 1


def test_cli_parses_every_engine_flag() -> None:
    ns, cfg = parse_args(
        [
            "/models/m",
            "--host",
            "0.0.0.0",
            "--port",
            "1234",
            "--max-model-len",
            "128",
            "--max-num-batched-tokens",
            "64",
            "--no-enable-prefix-caching",
            "--scheduler-policy",
            "baseline",
            "--num-kv-blocks",
            "32",
            "--served-model-name",
            "m",
            "--skip-tokenizer-init",
        ]
    )
    assert (ns.host, ns.port) == ("0.0.0.0", 1234)
    assert cfg.model == "/models/m" and cfg.max_model_len == 128
    assert cfg.max_num_batched_tokens == 64 and cfg.num_reserved_decode_tokens == 16
    assert cfg.enable_prefix_caching is False and cfg.skip_tokenizer_init is True
    assert cfg.scheduler_policy == "baseline" and cfg.num_kv_blocks == 32
    assert cfg.served_model_name == ["m"]
    ns, cfg = parse_args([])
    assert (ns.host, ns.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 8000)
    assert cfg == EngineConfig()
    assert parse_args(["--model", "x"])[1].model == "x"
    options = build_parser()._option_string_actions
    for name in EngineConfig.field_names():
        assert "--" + name.replace("_", "-") in options, name
    assert "--no-enable-prefix-caching" in options and "--enable-prefix-caching" in options
    for bad in (["--max-num-seqs", "many"], ["--scheduler-policy", "fifo"], ["--bogus"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_start_up_heap_is_frozen_while_serving_and_released_after(tiny_llama: Path) -> None:
    """The app's start-up freezes what is alive (a full collection of a serving process's
    imports and model pauses every stream for ~150 ms), objects made while serving are still
    collected, and shutdown unfreezes, so an app made and dropped leaves nothing frozen."""
    import gc

    config = EngineConfig(model=str(tiny_llama), max_model_len=128, device="cpu")
    with run_server(config) as srv:
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # at least torch's and the server's imports
        out = srv.client().completions.create(model=str(tiny_llama), prompt="hi", max_tokens=4)
        assert out.choices[0].text is not None
        ring: list = []
        ring.append(ring)  # cyclic garbage made while serving
        del ring
        assert gc.collect() >= 1  # found; frozen objects that refcounting freed leave the count
        assert gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0

"""Request and response shapes where OpenAI clients expect what OpenAI and vLLM do."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server, sse_events

import xyserve.server.protocol as protocol
from xyserve.config import EngineConfig

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name=MODEL,
        max_model_len=512,
        max_num_seqs=16,
        max_num_batched_tokens=256,
        device="cpu",
    )
    with run_server(config) as srv:
        yield srv


def _post(server: Server, path: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=payload, timeout=60)


def test_text_parts_are_joined_by_newlines_as_in_vllm(server: Server) -> None:
    """vLLM renders a message whose content is a list of text parts as the parts joined by
    "\\n"; joined by nothing, two words would run together and the prompt would differ."""
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]
    as_parts = _post(server, "/tokenize", {"messages": [{"role": "user", "content": parts}]})
    as_text = _post(server, "/tokenize", {"messages": [{"role": "user", "content": "Say\nhello"}]})
    assert as_parts.status_code == as_text.status_code == 200
    assert as_parts.json()["tokens"] == as_text.json()["tokens"]
    r = _post(
        server,
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 1},
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == as_text.json()["count"]


def test_a_text_part_without_text_is_refused(server: Server) -> None:
    """OpenAI's text part requires ``text``: one without it is a 400, not an empty string."""
    msg = {"role": "user", "content": [{"type": "text"}]}
    r = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": [msg]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith("messages.0.content")
    assert "messages.0.content.0.text: Field required" in err["message"]


class _Clock:
    """A ``time`` module whose clock moves on 5 s at each reading."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1_700_000_000, 5)

    def time(self) -> float:
        return float(next(self._ticks))


@pytest.mark.parametrize(
    "path,payload",
    [
        ("/v1/completions", {"prompt": ["Hello", "Bye"], "n": 2, "echo": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "n": 2}),
    ],
)
def test_every_chunk_of_a_stream_has_the_same_created(
    server: Server, monkeypatch: pytest.MonkeyPatch, path: str, payload: dict
) -> None:
    """OpenAI: "Each chunk has the same timestamp" (vLLM passes one ``created`` to all of a
    request's chunks); read per chunk, it changes when a stream crosses a second."""
    monkeypatch.setattr(protocol, "time", _Clock())
    body = dict(
        payload,
        model=MODEL,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        ignore_eos=True,
    )
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 2
    assert len({c["created"] for c in chunks}) == 1
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize(
    "path,field",
    [
        ("/v1/completions", "n"),
        ("/v1/completions", "stream"),
        ("/v1/completions", "echo"),
        ("/v1/chat/completions", "n"),
        ("/v1/chat/completions", "stream"),
        ("/v1/chat/completions", "logprobs"),
    ],
)
def test_null_for_a_field_openai_declares_nullable_is_its_default(
    server: Server, path: str, field: str
) -> None:
    """OpenAI's reference declares these fields nullable, and openai-python sends ``null`` for
    an argument given as None (``n=None``): vLLM serves that as the default, not a 400."""
    prompt = {"prompt": "Hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    body = {"model": MODEL, **prompt, "max_tokens": 2, "ignore_eos": True}
    r = _post(server, path, {**body, field: None})
    assert r.status_code == 200, r.text
    out = r.json()
    (choice,) = out["choices"]  # n: 1, not streamed, no echo or logprobs
    assert choice["logprobs"] is None and out["usage"]["completion_tokens"] == 2
    server.assert_clean()


def test_top_logprobs_of_two_tokens_with_one_text_keep_the_likelier() -> None:
    """Completions key top logprobs by token text, and byte-level tokens of pieces of one
    character all read "\\ufffd": where two share a text, the entry is the likelier token's
    (the sampled one here), as its ``token_logprobs``, so that a client reading the top
    token (lm-eval's greedy check) sees the token that was chosen, not a less likely one's
    logprob under its name."""
    from xyserve.outputs import Logprob
    from xyserve.server.render import ChoiceState, completion_logprobs

    entry = {
        7: Logprob(-1.0, 1, "\ufffd"),  # the sampled token, the likeliest
        8: Logprob(-2.0, 2, "a"),
        9: Logprob(-3.0, 3, "\ufffd"),  # another piece of a character
    }
    lp = completion_logprobs([7], [entry], ChoiceState())
    assert lp.tokens == ["\ufffd"] and lp.token_logprobs == [-1.0]
    (top,) = lp.top_logprobs
    assert top == {"\ufffd": -1.0, "a": -2.0}
    assert max(top, key=top.get) == lp.tokens[0]


@pytest.mark.parametrize(
    "field,value",
    [("max_completion_tokens", 0), ("top_logprobs", 21)],
)
def test_a_400_names_the_chat_field_the_client_sent(server: Server, field: str, value: int) -> None:
    """Chat's ``max_completion_tokens`` and ``top_logprobs`` set what the engine calls
    ``max_tokens`` and ``logprobs``: the error names the field the client sent, in its
    ``param`` and in its message, not a field it never gave."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": None}
    body = {**body, field: value, "logprobs": True}
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field
    assert err["message"].startswith(f"{field}:"), err["message"]
    server.assert_clean()


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprob_bytes_are_the_tokens_own(server: Server, stream: bool) -> None:
    """OpenAI's ``bytes`` exist so that tokens that each hold part of one UTF-8 character can
    be joined into it. Such a token reads as U+FFFD; its ``bytes`` must be its own, not
    U+FFFD's: joined, a reply's bytes are its text."""
    partial = 0
    for seed in range(4):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "日本語 héllo"}],
            "max_tokens": 16,
            "ignore_eos": True,
            "temperature": 1.0,
            "seed": seed,
            "logprobs": True,
            "top_logprobs": 2,
        }
        if stream:
            events = sse_events(f"{server.url}/v1/chat/completions", body)
            chunks = [e["choices"] for e in events]
            text = "".join(c[0]["delta"]["content"] or "" for c in chunks if c)
            entries = [e for c in chunks if c and c[0]["logprobs"] for e in c[0]["logprobs"]["content"]]  # fmt: skip
        else:
            (choice,) = _post(server, "/v1/chat/completions", body).json()["choices"]
            text, entries = choice["message"]["content"], choice["logprobs"]["content"]
        assert len(entries) == 16
        joined = b"".join(bytes(e["bytes"]) for e in entries)
        assert joined.decode("utf-8", errors="replace") == text, (seed, entries)
        partial += sum(e["token"] == "\ufffd" for e in entries)
        for e in entries:
            for top in e["top_logprobs"]:
                if top["token"] != "\ufffd":
                    assert bytes(top["bytes"]).decode() == top["token"]
    assert partial, "no token held part of a character: the check checked nothing"
    server.assert_clean()

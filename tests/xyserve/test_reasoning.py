"""Reasoning parsers (--reasoning-parser): the split of a reply into reasoning and content,
whole and streamed, and the chat endpoint around them (with tool calls read from the content)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server

from xyserve.beam_search import BeamSearch
from xyserve.config import EngineConfig
from xyserve.server.options import ServerOptions
from xyserve.server.reasoning import PARSERS, ReasoningStream, split_reasoning

R1, QWEN = PARSERS["deepseek_r1"], PARSERS["qwen3"]

CASES = [
    # (parser, reply, reasoning, content)
    (R1, "<think>a plan</think>\n\nThe answer.", "a plan", "\n\nThe answer."),
    (R1, "a plan</think>The answer.", "a plan", "The answer."),  # the template opened it
    (R1, "still thinking, cut short", "still thinking, cut short", None),
    (R1, "<think></think>just this", None, "just this"),
    (R1, "x < y </thin and </think>ok", "x < y </thin and ", "ok"),
    (QWEN, "<think>\nhmm\n</think>\n\nDone.", "\nhmm\n", "\n\nDone."),
    (QWEN, "No thinking here.", None, "No thinking here."),
    (QWEN, "<think>cut short", "cut short", None),
    (QWEN, "<thin is not a tag", None, "<thin is not a tag"),
    (QWEN, "\n<think>a</think>b", "a", "b"),
    (QWEN, "", None, None),
]


@pytest.mark.parametrize("parser,text,reasoning,content", CASES)
def test_split(parser, text, reasoning, content):
    assert split_reasoning(parser, text) == (reasoning, content)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("parser,text,reasoning,content", CASES)
def test_a_stream_splits_as_the_whole_reply_does(parser, text, reasoning, content, step):
    rs = ReasoningStream(parser)
    got_r, got_c = "", ""
    pieces = [text[i : i + step] for i in range(0, len(text), step)] or [""]
    for i, piece in enumerate(pieces):
        r, c = rs.feed(piece, i == len(pieces) - 1)
        assert "<think>" not in r + c and "</think>" not in r + c
        got_r, got_c = got_r + r, got_c + c
    assert (got_r or None, got_c or None) == (reasoning, content)


def test_reasoning_streams_before_the_reply_ends():
    rs = ReasoningStream(R1)
    assert rs.feed("<thi", False) == ("", "")
    assert rs.feed("nk>step one, ", False) == ("step one, ", "")
    assert rs.feed("step two</th", False) == ("step two", "")
    assert rs.feed("ink>Answer", False) == ("", "Answer")
    assert rs.feed("!", True) == ("", "!")


# ---- the endpoint: the engine's reply text is replaced by a script, token by token ----------
SCRIPT = '<think>Plan: call add.</think>Sure.<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'  # fmt: skip
TOKENS = 24  # the reply's length: the script comes out in TOKENS pieces, the last at the end
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
MESSAGES = [{"role": "user", "content": "add one"}]


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama), served_model_name="tiny", max_model_len=256, device="cpu"
    )
    opts = ServerOptions(
        enable_auto_tool_choice=True, tool_call_parser="hermes", reasoning_parser="deepseek_r1"
    )
    with run_server(config, opts) as srv:
        out = srv.engine.output
        make = out.make_output

        def scripted(group):  # noqa: ANN001, ANN202
            ro = make(group)
            for c in ro.outputs:
                n = len(c.token_ids)
                done = c.finish_reason is not None
                c.text = SCRIPT if done else SCRIPT[: n * len(SCRIPT) // (TOKENS + 4)]
            return ro

        out.make_output = scripted
        yield srv


def _body(**kw) -> dict:  # noqa: ANN003
    return {"messages": MESSAGES, "max_tokens": TOKENS, "ignore_eos": True, "tools": TOOLS, **kw}


def test_whole_reply(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", json=_body(), timeout=60)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    msg = choice["message"]
    assert msg["reasoning"] == "Plan: call add."
    assert msg["content"] == "Sure."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == [("add", {"a": 1})]  # fmt: skip
    assert choice["finish_reason"] == "length"  # the engine's: it ran to max_tokens
    r = httpx.post(f"{server.url}/v1/chat/completions", json=_body(include_reasoning=False), timeout=60)  # fmt: skip
    msg = r.json()["choices"][0]["message"]
    assert msg["reasoning"] is None and msg["content"] == "Sure."
    server.assert_clean()


def test_streamed_reply(server):
    with (
        server.slow_steps(0.02),
        httpx.stream(  # each step's output reaches the stream
            "POST", f"{server.url}/v1/chat/completions", json=_body(stream=True), timeout=60
        ) as resp,
    ):
        chunks = [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    calls = [t for d in deltas for t in d.get("tool_calls") or []]
    assert reasoning == "Plan: call add." and content == "Sure."
    assert [t["function"]["name"] for t in calls] == ["add"]
    # the reasoning came in several chunks, before the reply ended
    assert sum(1 for d in deltas if d.get("reasoning")) > 1
    server.assert_clean()


def test_a_constrained_reply_is_not_read_for_reasoning(server):
    body = _body(tool_choice={"type": "function", "function": {"name": "add"}})
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    msg = r.json()["choices"][0]["message"]
    assert msg["reasoning"] is None  # the script's text is taken as the arguments
    assert msg["tool_calls"][0]["function"]["arguments"] == SCRIPT


def test_include_reasoning_needs_a_parser(tiny_llama: Path):
    config = EngineConfig(model=str(tiny_llama), served_model_name="tiny", device="cpu")
    with run_server(config) as srv:
        body = {"messages": MESSAGES, "max_tokens": 2, "include_reasoning": False}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "include_reasoning"
        r = httpx.post(f"{srv.url}/v1/chat/completions", json={**body, "include_reasoning": True}, timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["reasoning"] is None
    with pytest.raises(ValueError, match="the parsers are deepseek_r1, qwen3"):
        ServerOptions(reasoning_parser="granite")


def test_beam_search_replies_are_read_for_reasoning(server, monkeypatch):
    """A chat beam is a reply like any other: with --reasoning-parser its thinking is the
    message's reasoning (as vLLM's), and include_reasoning: false drops it. The beams
    came back whole as content, tags and all, and include_reasoning was refused."""
    real = BeamSearch.results

    def scripted(self, decode=None):  # noqa: ANN001, ANN202 - the beams' texts, replaced
        outs = real(self, decode)
        for o in outs:
            for s in o.sequences:
                s.text = "<think>a plan</think>The answer."
        return outs

    monkeypatch.setattr(BeamSearch, "results", scripted)
    body = {"messages": MESSAGES, "n": 2, "max_tokens": 3, "use_beam_search": True, "ignore_eos": True}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    msgs = [c["message"] for c in r.json()["choices"]]
    assert [(m["reasoning"], m["content"]) for m in msgs] == [("a plan", "The answer.")] * 2  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "include_reasoning": False}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    msgs = [c["message"] for c in r.json()["choices"]]
    assert [(m["reasoning"], m["content"]) for m in msgs] == [(None, "The answer.")] * 2
    server.assert_clean()


def test_each_of_n_choices_is_read_on_its_own(server):
    """n > 1 with a tool parser and a reasoning parser: every choice has its reasoning and its
    calls (ids of its own), whole and streamed; a streamed call delta names its choice by the
    chunk's choice index and the call by its own index from 0 within that choice, as vLLM's."""
    r = httpx.post(f"{server.url}/v1/chat/completions", json=_body(n=2), timeout=60)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    ids = set()
    for c in choices:
        msg = c["message"]
        assert (msg["reasoning"], msg["content"]) == ("Plan: call add.", "Sure.")
        (call,) = msg["tool_calls"]
        assert call["function"]["name"] == "add" and call["type"] == "function"
        ids.add(call["id"])
    assert len(ids) == 2
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=_body(n=2, stream=True), timeout=60
    ) as resp:
        chunks = [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: {")]
    per = {0: ("", "", []), 1: ("", "", [])}
    for ch in chunks:
        for c in ch["choices"]:
            r_, t_, calls = per[c["index"]]
            d = c["delta"]
            per[c["index"]] = (
                r_ + (d.get("reasoning") or ""),
                t_ + (d.get("content") or ""),
                calls + (d.get("tool_calls") or []),
            )
    for reasoning, content, calls in per.values():
        assert (reasoning, content) == ("Plan: call add.", "Sure.")
        (call,) = calls
        assert call["index"] == 0 and call["id"] and call["function"]["name"] == "add"
        assert json.loads(call["function"]["arguments"]) == {"a": 1}
    server.assert_clean()

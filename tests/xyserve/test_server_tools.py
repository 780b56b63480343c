"""Tool calling as vLLM serves it: a named function and "required" held to the tools' schemas
by the grammar, "auto" read by the hermes parser, tool results sent back, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
from server_harness import Server, run_server, sse_events

from xyserve.config import EngineConfig
from xyserve.server.options import ServerOptions
from xyserve.server.protocol import ChatCompletionRequest
from xyserve.server.tools import (
    ToolMode,
    ToolStream,
    keeps_special_tokens,
    parse_reply,
    tool_mode,
)

MODEL = "tiny"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "adds", "parameters": ADD}},
]
SCHEMAS = {"weather": WEATHER, "add": ADD}
CHAT = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama), served_model_name=MODEL, max_model_len=512, device="cpu"
    )
    opts = ServerOptions(enable_auto_tool_choice=True, tool_call_parser="hermes")
    with run_server(config, opts) as srv:
        yield srv


def post(server: Server, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=60)


def stream(server: Server, payload: dict) -> list[dict]:
    return sse_events(f"{server.url}/v1/chat/completions", payload)


def assemble(chunks: list[dict]) -> tuple[str, list[dict], str]:
    """A stream's content, calls (deltas merged by index) and finish reason."""
    content, calls, reason = "", {}, None
    for c in chunks:
        for ch in c["choices"]:
            d = ch["delta"]
            content += d.get("content") or ""
            for tc in d.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.get("id") or call["id"]
                fn = tc.get("function") or {}
                call["name"] += fn.get("name") or ""
                call["arguments"] += fn.get("arguments") or ""
            reason = ch["finish_reason"] or reason
    return content, [calls[i] for i in sorted(calls)], reason


BASE = {"model": MODEL, "messages": CHAT, "tools": TOOLS, "max_tokens": 80, "temperature": 1.0}


@pytest.mark.parametrize("seed", range(3))
def test_named_function_arguments_follow_its_schema(server: Server, seed: int) -> None:
    body = {**BASE, "seed": seed, "n": 2}
    body["tool_choice"] = {"type": "function", "function": {"name": "weather"}}
    r = post(server, body)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        msg = choice["message"]
        assert msg["content"] is None and choice["finish_reason"] == "stop", choice
        (call,) = msg["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
        assert call["function"]["name"] == "weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)
    first = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
    content, calls, reason = assemble(stream(server, {**body, "n": 1}))
    assert content == "" and reason == "stop"
    assert [(c["name"], c["arguments"]) for c in calls] == [("weather", first["arguments"])]
    server.assert_clean()


@pytest.mark.parametrize("parallel", [True, False])
def test_required_gives_calls_of_the_tools(server: Server, parallel: bool) -> None:
    body = {**BASE, "tool_choice": "required", "parallel_tool_calls": parallel, "seed": 7}
    body["max_tokens"] = 200
    r = post(server, body)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    if choice["finish_reason"] == "length":  # cut short: the text comes back as content
        assert not choice["message"]["tool_calls"]
        pytest.skip("the random model's calls outran max_tokens")
    calls = choice["message"]["tool_calls"]
    assert (
        choice["finish_reason"] == "tool_calls" and calls and choice["message"]["content"] is None
    )
    assert parallel or len(calls) == 1
    for call in calls:
        name = call["function"]["name"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    content, streamed, reason = assemble(stream(server, body))
    assert reason == "tool_calls" and content == ""
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]
    server.assert_clean()


@pytest.mark.parametrize("logprobs", [False, True])
def test_required_stream_sends_no_empty_chunks(server: Server, logprobs: bool) -> None:
    """A "required" reply's text is held until its calls are whole: a chunk went out every
    step with an empty delta (no content, no calls, no finish reason). No chunk goes out for
    such a step now; with logprobs, the held tokens' logprobs come with the chunk that
    carries the calls, all of them, as the whole response has them."""
    body = {**BASE, "tool_choice": "required", "seed": 7, "max_tokens": 200}
    if logprobs:
        body.update(logprobs=True, top_logprobs=1)
    whole = post(server, body)
    assert whole.status_code == 200, whole.text
    chunks = stream(server, body)
    deltas = [ch for c in chunks for ch in c["choices"]]
    assert deltas[0]["delta"].get("role") == "assistant"
    for ch in deltas[1:]:
        d = ch["delta"]
        assert d.get("content") or d.get("tool_calls") or ch["finish_reason"], ch
    if logprobs:
        streamed = [e["token"] for ch in deltas[1:] for e in ch["logprobs"]["content"]]
        (choice,) = whole.json()["choices"]
        assert streamed == [e["token"] for e in choice["logprobs"]["content"]]
    server.assert_clean()


def test_auto_and_none_on_a_model_that_writes_no_calls(server: Server) -> None:
    """The random model writes plain text: auto (parsed with hermes) and none give the text
    that the same seeded request gives without tools."""
    plain = {"model": MODEL, "messages": CHAT, "max_tokens": 12, "seed": 3, "temperature": 1.0}
    ref = post(server, plain).json()["choices"][0]["message"]["content"]
    for choice in ("auto", "none"):
        r = post(server, {**plain, "tools": TOOLS, "tool_choice": choice}).json()
        msg = r["choices"][0]["message"]
        assert msg["content"] == ref and msg["tool_calls"] == []
        content, calls, _ = assemble(
            stream(server, {**plain, "tools": TOOLS, "tool_choice": choice})
        )
        assert content == ref and calls == []
    server.assert_clean()


def test_tool_results_go_back_to_the_model(server: Server) -> None:
    """An assistant's calls and the tool's result, sent back, render through the template."""
    history = CHAT + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo", "unit": "c"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
    ]
    r = post(server, {"model": MODEL, "messages": history, "tools": TOOLS, "max_tokens": 4,
                      "tool_choice": "none"})  # fmt: skip
    assert r.status_code == 200, r.text
    tok = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "messages": history})
    text = server.tokenizer.decode(tok.json()["tokens"], skip_special_tokens=False)
    assert "<|tool|>\n-3 C" in text


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice"),
        ({"tools": TOOLS * 2}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "bogus"}}}], "tool_choice": "required"}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
         "messages.0.role"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_refused(server: Server, payload: dict, param: str) -> None:
    r = post(server, {"model": MODEL, "messages": CHAT, "max_tokens": 4, **payload})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param), r.json()
    server.assert_clean()


def test_auto_needs_the_server_flags(tiny_llama: Path) -> None:
    config = EngineConfig(model=str(tiny_llama), served_model_name=MODEL, device="cpu")
    with run_server(config) as srv:
        r = post(srv, {"model": MODEL, "messages": CHAT, "tools": TOOLS})  # auto by default
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
        r = post(srv, {**BASE, "tool_choice": {"type": "function", "function": {"name": "add"}}})
        assert r.status_code == 200, r.text  # a named function needs no parser
    with pytest.raises(ValueError, match="parsers are hermes, llama3_json, mistral, pythonic"):
        ServerOptions(tool_call_parser="granite")
    with pytest.raises(ValueError, match="needs --tool-call-parser"):
        ServerOptions(enable_auto_tool_choice=True)


# ---- the hermes parser, and streaming it ---------------------------------------------------

AUTO = ToolMode("auto", parser="hermes")
CALLS = (
    'Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo", "unit": "c"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
)


def test_hermes_parser() -> None:
    reply = parse_reply(AUTO, CALLS)
    assert reply.content == "Let me look."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in reply.calls] == [
        ("weather", {"city": "Oslo", "unit": "c"}),
        ("add", {"a": 2}),
    ]
    assert parse_reply(AUTO, "no calls here").content == "no calls here"
    bad = 'x <tool_call>{"name": 3}</tool_call>'
    assert parse_reply(AUTO, bad).content == bad and not parse_reply(AUTO, bad).calls
    unclosed = parse_reply(AUTO, '<tool_call>{"name": "add", "arguments": {"a": 1}}')
    assert unclosed.content is None and unclosed.calls[0].function.name == "add"


@pytest.mark.parametrize("step", [1, 3, 7, 50])
def test_hermes_stream_holds_back_the_calls(step: int) -> None:
    ts = ToolStream(AUTO)
    content, deltas = "", []
    pieces = [CALLS[i : i + step] for i in range(0, len(CALLS), step)]
    for i, piece in enumerate(pieces):
        c, d = ts.feed(piece, i == len(pieces) - 1)
        assert "<" not in (c or "")  # no piece of a tag goes out as content
        content += c or ""
        deltas += d
    assert content.strip() == "Let me look."
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
        ("weather", {"city": "Oslo", "unit": "c"}),
        ("add", {"a": 2}),
    ]
    assert [d.index for d in deltas] == [0, 1]


def test_offline_chat_renders_tools_and_continues_a_message(tiny_llama: Path) -> None:
    from xyserve import LLM, SamplingParams

    llm = LLM(str(tiny_llama), device="cpu")
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    history = CHAT + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "The sum is"},
    ]
    params = SamplingParams(max_tokens=2, temperature=0)
    (out,) = llm.chat(
        history, params, use_tqdm=False, tools=[TOOLS[1]], add_generation_prompt=False,
        continue_final_message=True,
    )  # fmt: skip
    assert "<|tool|>\n4<|end|>" in out.prompt and out.prompt.endswith("The sum is")
    with pytest.raises(ValueError, match="add_generation_prompt"):
        llm.chat(history, params, use_tqdm=False, continue_final_message=True)


LOC = {
    "type": "object",
    "$defs": {
        "Point": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["x"],
            "additionalProperties": False,
        }
    },
    "properties": {"at": {"$ref": "#/$defs/Point"}},
    "required": ["at"],
    "additionalProperties": False,
}


def _required_calls_follow(server: Server, loc: dict) -> tuple[list, dict]:
    """Under "required", with ``ADD`` and a tool ``go`` taking ``loc``: every call's arguments
    follow its tool's schema. Returns the tools and the request body."""
    tools = [TOOLS[1], {"type": "function", "function": {"name": "go", "parameters": loc}}]
    body = {**BASE, "tools": tools, "tool_choice": "required", "seed": 1, "max_tokens": 200}
    r = post(server, body)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls", choice
    for call in choice["message"]["tool_calls"]:
        schema = loc if call["function"]["name"] == "go" else ADD
        jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
    return tools, body


def test_required_takes_parameters_with_defs(server: Server) -> None:
    """A tool's parameters with ``$defs`` (what pydantic writes for nested models): under
    "required" the calls' schema nests each tool's parameters, and their ``#/$defs/...``
    references still resolve (vLLM moves the definitions to the top)."""
    tools, body = _required_calls_follow(server, LOC)
    # two tools whose definitions of one name differ cannot share the top: a 400
    other = json.loads(json.dumps(LOC))
    other["$defs"]["Point"]["properties"]["x"]["maximum"] = 5
    tools.append({"type": "function", "function": {"name": "go2", "parameters": other}})
    r = post(server, {**body, "tools": tools})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    assert "Point" in r.json()["error"]["message"]
    server.assert_clean()


def test_hermes_stream_keeps_content_after_leading_space() -> None:
    """Content that starts with white space and reaches the tag in the last piece: the part
    of it not streamed yet still goes out (the parser's content is stripped; what was sent is
    counted in the unstripped text)."""
    text = '  hello world<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    ts = ToolStream(AUTO)
    first, _ = ts.feed(text[:11], False)
    last, deltas = ts.feed(text[11:], True)
    assert (first or "") + (last or "") == "  hello world"
    assert [d.function.name for d in deltas] == ["add"]


def test_auto_honours_parallel_tool_calls_false() -> None:
    """parallel_tool_calls false: only the first of the model's calls comes back (vLLM)."""
    body = ChatCompletionRequest(model=MODEL, messages=CHAT, tools=TOOLS, parallel_tool_calls=False)
    mode = tool_mode(body, "hermes", True)
    assert [c.function.name for c in parse_reply(mode, CALLS).calls] == ["weather"]
    ts = ToolStream(mode)
    _, deltas = ts.feed(CALLS, True)
    assert [d.function.name for d in deltas] == ["weather"]
    body = ChatCompletionRequest(model=MODEL, messages=CHAT, tools=TOOLS)
    assert len(parse_reply(tool_mode(body, "hermes", True), CALLS).calls) == 2


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "b"}}])
def test_refused_schema_names_its_tool(server: Server, choice) -> None:
    """A schema the grammar refuses, among many tools: the 400 says which function's."""
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "parameters": ADD}} for i in range(20)
    ]
    tools.append({"type": "function", "function": {"name": "b", "parameters": bad}})
    r = post(server, {**BASE, "tools": tools, "tool_choice": choice})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text
    assert "function 'b'" in r.json()["error"]["message"]
    server.assert_clean()


def test_named_stream_sends_one_delta_per_chunk() -> None:
    """A named function's first chunk held two deltas of index 0 (the name with empty
    arguments, then the first text): a client reading each chunk's ``tool_calls[0]`` lost
    that text (the opening ``{``). The first delta now carries the name and the text, as
    vLLM's does."""
    ts = ToolStream(ToolMode("named", name="weather"))
    pieces = ['{"city', '": "Oslo"', "}"]
    per_chunk = [ts.feed(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    assert all(content is None and len(d) == 1 for content, d in per_chunk)
    first = per_chunk[0][1][0]
    assert first.id and first.type == "function" and first.function.name == "weather"
    args = "".join(d[0].function.arguments for _, d in per_chunk)
    assert json.loads(args) == {"city": "Oslo"}
    assert all(d[0].id is None and d[0].function.name is None for _, d in per_chunk[1:])


def test_a_parser_whose_marker_is_a_special_token_keeps_special_tokens(tiny_llama: Path) -> None:
    """Mistral's ``[TOOL_CALLS]`` is a special token of its tokenizer: detokenized with the
    default ``skip_special_tokens``, it is dropped from the reply, and the mistral parser
    never saw a call (the calls came back as content). Decoding each marker both ways tells
    which parsers need special tokens kept, for this tokenizer."""
    from xyserve.tokenizer import Tokenizer

    tok = Tokenizer(str(tiny_llama))
    mistral, hermes = ToolMode("auto", parser="mistral"), ToolMode("auto", parser="hermes")
    assert not keeps_special_tokens(mistral, tok)  # here "[TOOL_CALLS]" is plain text
    tok.hf.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    assert keeps_special_tokens(mistral, tok)
    assert not keeps_special_tokens(hermes, tok)  # "<tool_call>" is plain text here
    assert not keeps_special_tokens(ToolMode("none"), tok)
    assert not keeps_special_tokens(ToolMode("named", "add"), tok)


def test_auto_replies_keep_special_tokens_where_the_parser_needs_them(
    server: Server, monkeypatch
) -> None:
    """Where the parser needs special tokens kept (stood in for here: the hermes markers are
    plain text to the tiny tokenizer), an auto reply is detokenized with them; a
    skip_special_tokens the client gives stands. The reply is held to one special token."""
    from xyserve.server.routes import chat

    monkeypatch.setattr(chat, "keeps_special_tokens", lambda mode, tok: mode.kind == "auto")
    (special,) = server.tokenizer.encode("<|system|>", add_special_tokens=False)
    body = {"model": MODEL, "messages": CHAT, "tools": TOOLS, "max_tokens": 2,
            "ignore_eos": True, "allowed_token_ids": [special]}  # fmt: skip
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "<|system|><|system|>"
    r = post(server, {**body, "skip_special_tokens": True})
    assert r.json()["choices"][0]["message"]["content"] in (None, "")
    r = post(server, {**body, "tool_choice": "none"})  # nothing is parsed: the default stands
    assert r.json()["choices"][0]["message"]["content"] in (None, "")
    content, _, _ = assemble(stream(server, body))
    assert content == "<|system|><|system|>"
    server.assert_clean()


@pytest.mark.parametrize("parameters", [None, {}])
def test_a_function_without_parameters_is_called_with_none(server: Server, parameters) -> None:
    """A function without ``parameters`` (or with ``{}``, as vLLM reads it) takes an empty
    parameter list (OpenAI's words): its arguments are ``{}``. The grammar held them to an
    open object, and a sampled reply made up properties (seeds 0, 3, 4 and 5 here)."""
    fn = {"name": "ping"} if parameters is None else {"name": "ping", "parameters": parameters}
    tools = [{"type": "function", "function": fn}]
    named = {"type": "function", "function": {"name": "ping"}}
    for seed in range(6):
        body = {**BASE, "tools": tools, "seed": seed, "max_tokens": 60}
        r = post(server, {**body, "tool_choice": named})
        assert r.status_code == 200, r.text
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "stop", choice
        assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "{}"
        r = post(server, {**body, "tool_choice": "required", "parallel_tool_calls": False})
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "tool_calls", choice
        assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {}
    server.assert_clean()


def test_required_takes_parameters_with_draft7_definitions(server: Server) -> None:
    """As ``$defs``, so ``definitions`` (draft 7's, pydantic 1's and many tool libraries'):
    a tool that a named choice takes was a 400 under "required", its ``#/definitions/...``
    references left pointing at the top of the calls' array."""
    _required_calls_follow(server, json.loads(json.dumps(LOC).replace("$defs", "definitions")))
    server.assert_clean()


@pytest.mark.parametrize("schema", [{"type": "string"}, {"type": ["string", "null"]}])
def test_parameters_of_another_type_than_object_are_a_400(server: Server, schema) -> None:
    """OpenAI's parameters describe a JSON object (the arguments); a string schema gave
    ``arguments`` that were a JSON string. Refused by name, as OpenAI refuses it."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    for choice in ("auto", "none", "required"):
        r = post(server, {**BASE, "tools": tools, "tool_choice": choice})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "parameters" in err["param"] and '"object"' in err["message"], err
    server.assert_clean()

"""The tool-call parsers of ``--tool-call-parser`` beyond hermes (test_server_tools.py): each
format's replies read as vLLM's parser reads them, replies that are not calls stay content,
and a stream sends the content before the calls and the calls whole at the end."""

from __future__ import annotations

import json

import pytest

from xyserve.server.tool_parsers import PARSERS
from xyserve.server.tools import ToolMode, ToolStream, parse_reply

WEATHER = ("weather", {"city": "Oslo", "days": 3})
ADD = ("add", {"a": 2, "b": [1, 2.5, None, True]})

# (parser, reply, content, calls)
CASES = [
    (
        "llama3_json",
        '{"name": "weather", "parameters": {"city": "Oslo", "days": 3}}',
        None,
        [WEATHER],
    ),  # fmt: skip
    (
        "llama3_json",
        '<|python_tag|>{"name": "weather", "arguments": {"city": "Oslo", "days": 3}}; '
        '{"name": "add", "parameters": {"a": 2, "b": [1, 2.5, null, true]}}',
        None,
        [WEATHER, ADD],
    ),
    (
        "llama3_json",
        ' \n{"name": "weather", "parameters": {"city": "Oslo", "days": 3}}\n',
        None,
        [WEATHER],
    ),  # fmt: skip
    (
        "mistral",
        'Checking.[TOOL_CALLS][{"name": "weather", "arguments": {"city": "Oslo", "days": 3}}, '
        '{"name": "add", "arguments": {"a": 2, "b": [1, 2.5, null, true]}}]',
        "Checking.",
        [WEATHER, ADD],
    ),
    (
        "mistral",
        '[TOOL_CALLS]weather[ARGS]{"city": "Oslo", "days": 3}'
        '[TOOL_CALLS]add[ARGS]{"a": 2, "b": [1, 2.5, null, true]}',
        None,
        [WEATHER, ADD],
    ),
    (
        "pythonic",
        '[weather(city="Oslo", days=3), add(a=2, b=[1, 2.5, None, True])]',
        None,
        [WEATHER, ADD],
    ),
    (
        "pythonic",
        "Sure. <|python_start|>[weather(city='Oslo', days=3)]<|python_end|>",
        "Sure.",
        [WEATHER],
    ),  # fmt: skip
]

# replies that are not calls: the whole text comes back as content
NOT_CALLS = [
    ("llama3_json", "The answer is 4."),
    ("llama3_json", '{"name": "weather"} and more text'),
    ("llama3_json", '{"not": "a call"}'),
    ("llama3_json", '{"name": "weather", "parameters": [1]}'),
    ("mistral", "no calls"),
    ("mistral", "[TOOL_CALLS]{broken"),
    ("mistral", "[TOOL_CALLS][]"),
    ("pythonic", "[1, 2, 3]"),
    ("pythonic", "[weather('Oslo')]"),  # positional: not the format
    ("pythonic", "[weather(city=open('x'))]"),  # not a literal: never evaluated
    ("pythonic", "[weather(**kw)]"),
    ("pythonic", "plain text"),
    # literals JSON cannot write: not arguments (they were read as calls, and writing their
    # arguments as JSON then raised: a 500, or an error event in a stream)
    ("pythonic", "[weather(city={'Oslo', 'Bergen'})]"),
    ("pythonic", "[weather(city=b'Oslo')]"),
    ("pythonic", "[weather(days=3j)]"),
    ("pythonic", "[weather(days={(1, 2): 3})]"),
    ("pythonic", "[weather(days=1e999)]"),
]


def _calls(reply) -> list[tuple[str, object]]:  # noqa: ANN001
    return [(c.function.name, json.loads(c.function.arguments)) for c in reply.calls]


@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_calls_read_as_the_format_says(parser, text, content, calls):
    reply = parse_reply(ToolMode("auto", parser=parser), text)
    assert reply.content == content
    assert _calls(reply) == calls


@pytest.mark.parametrize("parser,text", NOT_CALLS)
def test_replies_that_are_not_calls_stay_content(parser, text):
    reply = parse_reply(ToolMode("auto", parser=parser), text)
    assert reply.content == text and not reply.calls


def test_mistral_call_ids_are_nine_letters_and_digits():
    reply = parse_reply(ToolMode("auto", parser="mistral"), CASES[3][1])
    assert all(len(c.id) == 9 and c.id.isalnum() for c in reply.calls)
    assert reply.calls[0].id != reply.calls[1].id


def test_parallel_tool_calls_false_keeps_the_first():
    reply = parse_reply(ToolMode("auto", parser="pythonic", parallel=False), CASES[5][1])
    assert _calls(reply) == [WEATHER]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_streams_hold_the_calls_back(parser, text, content, calls, step):
    ts = ToolStream(ToolMode("auto", parser=parser))
    sent, deltas = "", []
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    for i, piece in enumerate(pieces):
        c, d = ts.feed(piece, i == len(pieces) - 1)
        sent += c or ""
        deltas += d
    assert sent.strip() == (content or "")
    for marker in PARSERS[parser].markers + PARSERS[parser].leading:
        assert marker not in sent
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == calls
    assert ts.finish_reason("stop") == "tool_calls"


@pytest.mark.parametrize("step", [1, 4, 1000])
@pytest.mark.parametrize("parser,text", NOT_CALLS)
def test_streams_of_plain_replies_send_all_of_it(parser, text, step):
    ts = ToolStream(ToolMode("auto", parser=parser))
    sent = ""
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    for i, piece in enumerate(pieces):
        c, d = ts.feed(piece, i == len(pieces) - 1)
        assert not d
        sent += c or ""
    assert sent == text
    assert ts.finish_reason("stop") == "stop"


def test_plain_text_streams_before_the_end():
    """A reply that does not open with a call streams as it comes (only a tail that may start
    a marker waits), so content is not delayed to the end for the leading-call formats."""
    ts = ToolStream(ToolMode("auto", parser="llama3_json"))
    assert ts.feed("  ", False) == (None, [])  # white space: a call may still open
    assert ts.feed("The answer", False) == ("  The answer", [])
    assert ts.feed(" is <|pyth", False) == (" is ", [])

"""Reading a model's tool calls out of its reply text, one format per ``--tool-call-parser``.

Each parser knows where calls begin in a reply (so that a stream can send the content before
them and hold the rest) and reads the calls of a finished reply. A reply whose calls do not
read as the format says comes back whole as content, as vLLM's parsers do.

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks after any
  content (Qwen2.5/Qwen3, Hermes and many other templates).
- ``llama3_json``: a reply that is JSON calls ``{"name": ..., "parameters": {...}}`` (or
  ``"arguments"``), separated by ``;``, optionally after ``<|python_tag|>`` (Llama 3.1-3.3).
- ``mistral``: ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}`` (Mistral's
  earlier tokenizers), or ``name[ARGS]{...}`` calls (v11 tokenizers); any content before it.
  Call ids are nine letters and digits, as Mistral's chat templates require of the ids sent
  back with the results.
- ``pythonic``: a reply that is a Python list of calls with keyword arguments,
  ``[get_weather(city="Paris", days=3), ...]``, optionally in ``<|python_start|>`` ...
  ``<|python_end|>`` (Llama 3.2 and 4). Arguments must be literals.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Calls = list[tuple[str, Any]]  # (function name, arguments: a JSON value or JSON text)


@dataclass(frozen=True)
class ToolParser:
    """One format: ``markers`` open the calls anywhere in a reply, ``leading`` only at its
    start (after white space); ``read`` gives (content, calls) of a finished reply in which
    calls begin, and raises where they do not read as calls."""

    name: str
    markers: tuple[str, ...]
    leading: tuple[str, ...]
    read: Callable[[str], tuple[str | None, Calls]]  # raises where it does not read
    call_id: Callable[[], str] | None = None  # None: OpenAI-style ids

    def start(self, text: str) -> int:
        """Where the calls begin in ``text`` (so far), or -1 where none has begun."""
        body = text.lstrip()
        if body and body.startswith(self.leading):
            return len(text) - len(body)
        found = [i for i in (text.find(m) for m in self.markers) if i >= 0]
        return min(found) if found else -1

    def undecided(self, text: str) -> bool:
        """Whether a reply that begins so may still open calls at its start (it is all white
        space so far, and this format has calls that only open there)."""
        return bool(self.leading) and not text.strip()


def _content(text: str) -> str | None:
    return text.strip() or None


def _name_args(obj: object, keys: tuple[str, ...]) -> tuple[str, Any]:
    """(name, arguments) of a call object; ValueError where it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("not a call")
    args = next((obj[k] for k in keys if k in obj), {})
    if not isinstance(args, dict | str):
        raise ValueError("arguments are not an object")
    return obj["name"], args


HERMES_OPEN = "<tool_call>"
HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)


def _hermes(text: str) -> tuple[str | None, Calls]:
    start = text.find(HERMES_OPEN)
    calls = []
    for m in HERMES_CALL.finditer(text, start):
        body = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        calls.append(_name_args(json.loads(body), ("arguments",)))
    return _content(text[:start]), calls


PYTHON_TAG = "<|python_tag|>"


def _json_calls(text: str, sep: str, keys: tuple[str, ...]) -> Calls:
    """JSON call objects one after another, separated by ``sep`` (and white space)."""
    dec, calls, i = json.JSONDecoder(), [], 0
    while True:
        obj, end = dec.raw_decode(text, i)
        calls.append(_name_args(obj, keys))
        rest = text[end:].lstrip()
        if not rest:
            return calls
        if not rest.startswith(sep):
            raise ValueError("text after a call")
        i = len(text) - len(rest[len(sep) :].lstrip())


def _llama3_json(text: str) -> tuple[str | None, Calls]:
    start = text.find(PYTHON_TAG)
    content = None
    if start >= 0:
        content, text = _content(text[:start]), text[start + len(PYTHON_TAG) :]
    return content, _json_calls(text.strip(), ";", ("parameters", "arguments"))


MISTRAL_OPEN, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"


def _mistral(text: str) -> tuple[str | None, Calls]:
    start = text.find(MISTRAL_OPEN)
    body = text[start:].replace(MISTRAL_OPEN, "").strip()
    if body.startswith("["):  # a JSON array of calls
        arr = json.loads(body)
        if not isinstance(arr, list) or not arr:
            raise ValueError("not a list of calls")
        calls = [_name_args(c, ("arguments",)) for c in arr]
    else:  # name[ARGS]{...}, one after another
        dec, calls = json.JSONDecoder(), []
        while body:
            name, sep, rest = body.partition(MISTRAL_ARGS)
            if not sep or not name.strip():
                raise ValueError("not name[ARGS]{...}")
            args, end = dec.raw_decode(rest.lstrip())
            calls.append(_name_args({"name": name.strip(), "arguments": args}, ("arguments",)))
            body = rest.lstrip()[end:].strip()
    return _content(text[:start]), calls


def _mistral_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


PY_START, PY_END = "<|python_start|>", "<|python_end|>"


def _pythonic(text: str) -> tuple[str | None, Calls]:
    body = text.strip()
    content = None
    if PY_START in body:
        start = body.find(PY_START)
        content, body = _content(body[:start]), body[start + len(PY_START) :]
        body = body.replace(PY_END, "").strip()
    tree = ast.parse(body, mode="eval").body
    if not isinstance(tree, ast.List) or not tree.elts:
        raise ValueError("not a list of calls")
    calls = []
    for call in tree.elts:
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
            raise ValueError("not a call with keyword arguments")
        args = {}
        for kw in call.keywords:
            if kw.arg is None:  # **kwargs
                raise ValueError("not a keyword argument")
            args[kw.arg] = ast.literal_eval(kw.value)
        # A literal JSON has no form for (a set, bytes, a complex number, a tuple as a key)
        # is not a call's arguments: the reply stays content, as any that does not read.
        json.dumps(args, allow_nan=False)  # raises ValueError or TypeError
        calls.append((call.func.id, args))
    return content, calls


PARSERS: dict[str, ToolParser] = {
    p.name: p
    for p in (
        ToolParser("hermes", (HERMES_OPEN,), (), _hermes),
        ToolParser("llama3_json", (PYTHON_TAG,), ("{",), _llama3_json),
        ToolParser("mistral", (MISTRAL_OPEN,), (), _mistral, _mistral_id),
        ToolParser("pythonic", (PY_START,), ("[",), _pythonic),
    )
}
TOOL_PARSERS = tuple(PARSERS)


def read_calls(parser: ToolParser, text: str) -> tuple[str | None, Calls]:
    """(content, calls) of a finished reply; the whole text as content, with no calls, where
    no call begins or the calls do not read as the format says."""
    if parser.start(text) < 0:
        return text, []
    try:
        got = parser.read(text)
    except (ValueError, KeyError, TypeError, SyntaxError, RecursionError):
        return text, []
    return got if got[1] else (text, [])

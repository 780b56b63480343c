"""Tool calling, as vLLM serves OpenAI's ``tools`` and ``tool_choice``.

- ``tool_choice`` a named function: the reply is that function's arguments, held to its
  parameters' JSON schema by the structured-output grammar; no parser is needed.
- ``"required"``: the reply is a JSON array of one or more calls (``{"name": ..., "parameters":
  {...}}``, each held to its function's schema; one call when ``parallel_tool_calls`` is false),
  as vLLM does.
- ``"auto"`` (the default when tools are given, as in vLLM): the model decides, in its chat
  template's own format, which ``--tool-call-parser`` reads back. It needs
  ``--enable-auto-tool-choice``, as in vLLM. Parsers (``tool_parsers``): ``hermes``,
  ``llama3_json``, ``mistral``, ``pythonic``. With ``parallel_tool_calls`` false only the
  first call comes back (vLLM's).
- ``"none"``: the tools are still shown to the template; nothing is parsed.

Whatever the choice, the tools go to the chat template (``tools=``), and earlier calls and
their results (assistant ``tool_calls``, ``tool`` messages) are rendered by it as well.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xyserve.server.errors import APIError
from xyserve.server.protocol import (
    ChatCompletionRequest,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
)
from xyserve.server.sse import held_tail
from xyserve.server.tool_parsers import PARSERS, read_calls

# What a function without ``parameters`` takes (OpenAI: "an empty parameter list"): the
# object ``{}``. Closed, since a bare ``{"type": "object"}`` lets the grammar write any
# properties, arguments the function does not take.
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def new_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ToolMode:
    """How a request's reply is read: ``named`` (the arguments of ``name``), ``required`` (a
    JSON array of calls), ``auto`` (the parser's format in free text) or ``none``."""

    kind: str
    name: str | None = None
    parser: str | None = None
    parallel: bool = True  # parallel_tool_calls: false keeps a reply's first call alone

    @property
    def constrained(self) -> bool:
        return self.kind in ("named", "required")


def tool_mode(body: ChatCompletionRequest, parser: str | None, auto_enabled: bool) -> ToolMode:
    """The request's tool mode, its ``tools`` and ``tool_choice`` checked (APIError: 400)."""
    tools = body.tools or []
    choice = body.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    elif not tools and choice != "none":
        raise APIError("tool_choice needs tools", param="tool_choice")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise APIError("tools: function names must differ", param="tools")
    if "parallel_tool_calls" in body.model_fields_set and not tools:
        raise APIError("parallel_tool_calls needs tools", param="parallel_tool_calls")
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            msg = f"tool_choice names {choice.function.name!r}, which is not among the tools"
            raise APIError(msg, param="tool_choice")
        return ToolMode("named", choice.function.name)
    if choice == "auto":
        if not (auto_enabled and parser):
            raise APIError(
                '"auto" tool choice needs the server started with --enable-auto-tool-choice '
                'and --tool-call-parser (give tool_choice "required", a function, or '
                '"none" otherwise)',
                param="tool_choice",
            )
        return ToolMode("auto", parser=parser, parallel=body.parallel_tool_calls)
    return ToolMode(choice, parallel=body.parallel_tool_calls)


def template_tools(body: ChatCompletionRequest) -> list[dict] | None:
    """The tools as chat templates take them (OpenAI's shape)."""
    if not body.tools:
        return None
    return [t.model_dump(exclude_none=True) for t in body.tools]


def _parameters(body: ChatCompletionRequest, name: str) -> dict:
    for t in body.tools or []:
        if t.function.name == name:
            return t.function.parameters or NO_PARAMETERS
    raise KeyError(name)


# Where a schema keeps the definitions its "#/<key>/..." references point to: ``$defs``
# (draft 2019-09 on, pydantic 2) and ``definitions`` (draft 7 and before, pydantic 1).
DEFINITIONS = ("$defs", "definitions")


def constraint_schema(body: ChatCompletionRequest, mode: ToolMode) -> dict | None:
    """The JSON schema a constrained mode holds the reply to (None: unconstrained)."""
    if mode.kind == "named":
        return _parameters(body, mode.name)
    if mode.kind != "required":
        return None
    calls: list[dict] = []
    defs: dict[str, dict] = {key: {} for key in DEFINITIONS}
    for t in body.tools:
        params = dict(t.function.parameters or NO_PARAMETERS)
        # Each tool's parameters sit inside the array's schema here, so their references
        # ("#/$defs/...") resolve against its top: their definitions move there (as vLLM's do).
        for key in DEFINITIONS:
            for name, definition in (params.pop(key, None) or {}).items():
                if defs[key].setdefault(name, definition) != definition:
                    raise APIError(
                        f"tools: {key} {name!r} is defined differently by two tools, which "
                        'tool_choice "required" cannot take (their definitions share one '
                        "schema)",
                        param="tools",
                    )
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [t.function.name]},
                    "parameters": params,
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    schema.update((key, found) for key, found in defs.items() if found)
    if not body.parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


def refused_tool(
    body: ChatCompletionRequest, mode: ToolMode, compile_schema: Callable[[str, Any], Any]
) -> str | None:
    """Which tool's parameters the grammar refuses, and why (for the 400 of a constrained
    mode whose schema did not compile), or None when each compiles alone."""
    names = [mode.name] if mode.kind == "named" else [t.function.name for t in body.tools]
    for name in names:
        try:
            compile_schema("json_schema", _parameters(body, name))
        except ValueError as e:
            return f"function {name!r}: {e}"
    return None


# ---- reading a reply ----------------------------------------------------------------------


@dataclass
class ParsedReply:
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)


def _call(name: str, arguments: Any, call_id: Callable[[], str] | None = None) -> ToolCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    cid = (call_id or new_call_id)()
    return ToolCall(id=cid, function=FunctionCall(name=name, arguments=args))


def parse_reply(mode: ToolMode, text: str) -> ParsedReply:
    """A finished reply's content and calls (the first alone without ``mode.parallel``, as
    vLLM). A ``required`` reply that does not parse (cut short by ``max_tokens``) comes back as
    content, with no calls; a named function's reply is its call's arguments even then (as
    vLLM's, and as they streamed)."""
    reply = _parse_reply(mode, text)
    if not mode.parallel:
        reply.calls = reply.calls[:1]
    return reply


def _parse_reply(mode: ToolMode, text: str) -> ParsedReply:
    if mode.kind == "named":
        return ParsedReply(None, [_call(mode.name, text)])
    if mode.kind == "required":
        try:
            calls = [_call(c["name"], c["parameters"]) for c in json.loads(text)]
        except (ValueError, KeyError, TypeError):
            return ParsedReply(text)
        return ParsedReply(None, calls)
    if mode.kind == "auto":
        parser = PARSERS[mode.parser]
        content, calls = read_calls(parser, text)
        return ParsedReply(content, [_call(name, args, parser.call_id) for name, args in calls])
    return ParsedReply(text)


def keeps_special_tokens(mode: ToolMode, tokenizer: Any) -> bool:
    """Whether an ``auto`` reply must be detokenized with its special tokens: where one of the
    parser's markers is (or holds) a special token of this tokenizer, as Mistral's
    ``[TOOL_CALLS]`` is, the default ``skip_special_tokens`` drops it from the text, and the
    calls would come back as content, never read (vLLM's mistral parser keeps special tokens
    for this reason). Told by decoding each marker both ways."""
    if mode.kind != "auto" or tokenizer is None:
        return False
    for marker in PARSERS[mode.parser].markers:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        if tokenizer.decode(ids, skip_special_tokens=True) != tokenizer.decode(
            ids, skip_special_tokens=False
        ):
            return True
    return False


def finish_reason(mode: ToolMode, reply: ParsedReply, engine_reason: str | None) -> str | None:
    """OpenAI's: ``tool_calls`` when the model chose to call (``auto``, ``required``); a
    named function keeps the engine's reason, as OpenAI's forced calls end with ``stop``."""
    if reply.calls and mode.kind in ("auto", "required") and engine_reason == "stop":
        return "tool_calls"
    return engine_reason


class ToolStream:
    """One streamed choice's tool calls. A named function's arguments stream as they come
    (the first delta names the call); ``required`` and ``auto`` replies stream their content
    until a call may begin (``auto``: the parser's opening tag), then hold the rest and send
    the calls whole once the reply is finished."""

    def __init__(self, mode: ToolMode) -> None:
        self.mode = mode
        self.text = ""  # everything the reply said
        self.sent = 0  # how much of ``text`` went out as content (auto) or arguments (named)
        self.call_id: str | None = None
        self.reply: ParsedReply | None = None  # the finished reply, as parsed (auto, required)

    def finish_reason(self, engine_reason: str) -> str:
        """The finished choice's reason (module ``finish_reason``, of the reply parsed once)."""
        reply = self.reply if self.reply is not None else ParsedReply(self.text)
        return finish_reason(self.mode, reply, engine_reason)

    def feed(self, delta: str, finished: bool) -> tuple[str | None, list[DeltaToolCall]]:
        """(content to send now, tool-call deltas to send now) for new reply text ``delta``."""
        self.text += delta
        if self.mode.kind == "named":
            return None, self._named(delta)
        if self.mode.kind == "none":
            return (delta or None), []
        if not finished:
            return self._content_so_far(), []
        reply = self.reply = parse_reply(self.mode, self.text)
        if not reply.calls:
            rest = self.text[self.sent :]
            self.sent = len(self.text)
            return (rest or None), []
        content = None
        if reply.content is not None:
            # ``sent`` counts the text as it is; the reply's content is stripped: what is left
            # of the content is the text's, up to the tag, less trailing white space
            end = PARSERS[self.mode.parser].start(self.text)
            content = self.text[self.sent : end].rstrip() or None
            self.sent = max(self.sent, end)
        deltas = [
            DeltaToolCall(
                index=i,
                id=c.id,
                type="function",
                function=DeltaFunctionCall(name=c.function.name, arguments=c.function.arguments),
            )
            for i, c in enumerate(reply.calls)
        ]
        return content, deltas

    def _named(self, delta: str) -> list[DeltaToolCall]:
        """One delta per call and chunk, as vLLM: the first names the call and carries the
        first arguments text with it."""
        if self.call_id is None:
            self.call_id = new_call_id()
            fn = DeltaFunctionCall(name=self.mode.name, arguments=delta)
            return [DeltaToolCall(index=0, id=self.call_id, type="function", function=fn)]
        if delta:
            return [DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=delta))]
        return []

    def _content_so_far(self) -> str | None:
        """Auto: the text before a call may begin (a tail that may start the opening tag is
        held back). Required: nothing (the reply is the calls' JSON)."""
        if self.mode.kind == "required":
            return None
        text = self.text
        parser = PARSERS[self.mode.parser]
        if parser.undecided(text):  # calls may still open at the start: send nothing yet
            return None
        cut = parser.start(text)
        if cut < 0:
            cut = len(text) - held_tail(text, list(parser.markers), self.sent)
        if cut <= self.sent:
            return None
        out = text[self.sent : cut]
        self.sent = cut
        return out

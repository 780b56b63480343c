"""Reasoning parsers (vLLM's ``--reasoning-parser``): a reasoning model's thinking, written
between ``<think>`` and ``</think>``, comes back as the message's ``reasoning`` (vLLM's field,
once ``reasoning_content``) and the rest as its ``content`` (where tool calls are then looked
for).

- ``deepseek_r1``: the reply is reasoning from its start (the chat template may already have
  opened ``<think>``; a ``<think>`` the model writes first is dropped) up to ``</think>``. A
  reply cut short before ``</think>`` is all reasoning. Also the parser for templates that
  open the thinking themselves, as Qwen3's 2507 thinking models do.
- ``qwen3``: reasoning only where the reply opens with ``<think>``; a reply that does not
  (thinking switched off) is all content.

One machine serves whole replies and streams: a whole reply is a stream fed at once, so the
two never split a reply differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from xyserve.server.sse import held_tail

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ReasoningParser:
    name: str
    starts_in_reasoning: bool  # reasoning from the start, without an opening tag


PARSERS = {
    p.name: p for p in (ReasoningParser("deepseek_r1", True), ReasoningParser("qwen3", False))
}
REASONING_PARSERS = tuple(PARSERS)


class ReasoningStream:
    """One choice's reply, fed as it comes: each piece splits into (reasoning, content) to
    send now; a tail that may begin a tag is held until the next piece, or the end, decides."""

    def __init__(self, parser: ReasoningParser) -> None:
        self.parser = parser
        self.text = ""
        self.pos = 0  # how much of ``text`` has gone out (or was a tag)
        self.phase = "start"  # start | reasoning | content

    def feed(self, delta: str, finished: bool) -> tuple[str, str]:
        self.text += delta
        text = self.text
        if self.phase == "start":
            head = text.lstrip()
            if not finished and len(head) < len(THINK_OPEN) and THINK_OPEN.startswith(head):
                return "", ""  # may still open with <think>
            if head.startswith(THINK_OPEN):
                self.phase, self.pos = "reasoning", len(text) - len(head) + len(THINK_OPEN)
            else:
                self.phase = "reasoning" if self.parser.starts_in_reasoning else "content"
        reasoning = ""
        if self.phase == "reasoning":
            end = text.find(THINK_CLOSE, self.pos)
            if end >= 0:
                reasoning, self.pos = text[self.pos : end], end + len(THINK_CLOSE)
                self.phase = "content"
            else:
                stop = (
                    len(text) if finished else len(text) - held_tail(text, [THINK_CLOSE], self.pos)
                )
                reasoning, self.pos = text[self.pos : stop], stop
                return reasoning, ""
        content, self.pos = text[self.pos :], len(text)
        return reasoning, content


def split_reasoning(parser: ReasoningParser, text: str) -> tuple[str | None, str | None]:
    """(reasoning, content) of a whole reply; None for a part it does not have."""
    reasoning, content = ReasoningStream(parser).feed(text, True)
    return (reasoning or None), (content or None)


def reply_parts(
    parser: ReasoningParser | None, text: str, include_reasoning: bool
) -> tuple[str | None, str | None]:
    """(reasoning, content) of a whole reply as a chat message carries them: the text split
    by ``parser`` where there is one, the reasoning dropped without ``include_reasoning``."""
    reasoning, content = split_reasoning(parser, text) if parser else (None, text)
    return (reasoning if include_reasoning else None), content

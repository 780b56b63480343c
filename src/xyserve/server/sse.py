"""Server-sent events: the ``data:`` framing, the error event, and each choice's new text.

A streamed response is a series of ``data: {json}`` events ending with ``data: [DONE]``; an
error after the response started is sent as one more event with OpenAI's error body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from xyserve.outputs import CompletionOutput
from xyserve.server.errors import stream_error
from xyserve.server.protocol import ErrorResponse
from xyserve.server.render import ChoiceState

DONE = "data: [DONE]\n\n"

# Called once a stream ends, with the final outputs and the error message (None if none).
OnDone = Callable[[list[Any], Any], None]


def sse(model: BaseModel) -> str:
    return f"data: {model.model_dump_json()}\n\n"


def sse_error(err: Exception) -> str:
    info = stream_error(err).info
    return f"data: {ErrorResponse(error=info).model_dump_json()}\n\n"


def held_tail(text: str, marks: list[str], since: int) -> int:
    """The length of the longest tail of ``text`` after position ``since`` that may begin
    one of ``marks`` (a proper prefix of it): what a stream holds back while the next text
    may complete the mark. Only text after ``since`` (not sent yet) is tried: sent text was
    no mark's beginning when it was sent, so it cannot be one now."""
    hold = 0
    for s in marks:
        for k in range(min(len(s) - 1, len(text) - since), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


def text_delta(st: ChoiceState, c: CompletionOutput, stops: list[str]) -> str:
    """New text since the last chunk.

    While the sequence runs, a trailing partial UTF-8 character and any tail that may begin a
    stop string are held back (``held_tail``): the engine cuts the stop string off the text
    later, and what was streamed cannot be taken back. The work per chunk is the chunk's, not
    the whole text's times the stop's.
    """
    text = c.text
    if c.finish_reason is None:
        text = text.rstrip("\ufffd")
        text = text[: len(text) - held_tail(text, stops, st.text_len)]
    if len(text) <= st.text_len:
        return ""
    delta = text[st.text_len :]
    st.text_len = len(text)
    return delta


def advance(st: ChoiceState, c: CompletionOutput, stops: list[str]) -> tuple[str, int] | None:
    """(new text, index of the first new token) for the choice's next chunk, or None when it
    has nothing to send (finished already, or no new text, token or finish reason)."""
    if st.done:
        return None
    start = st.num_tokens
    text = text_delta(st, c, stops)
    if not text and len(c.token_ids) == start and c.finish_reason is None:
        return None
    st.num_tokens = len(c.token_ids)
    st.done = c.finish_reason is not None
    return text, start

"""Engine outputs as OpenAI response parts: usage, and logprobs in the completions and chat
shapes. Shared by whole responses and streamed chunks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xyserve.outputs import CompletionOutput, Logprob, RequestOutput
from xyserve.server.protocol import (
    ChatChoiceLogprobs,
    ChatLogprobEntry,
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    UsageInfo,
)


@dataclass
class ChoiceState:
    """How much of one choice was already sent (streaming) or rendered."""

    text_len: int = 0
    num_tokens: int = 0
    text_offset: int = 0
    done: bool = False
    # vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:<id>", not their text
    # (a token that is part of a UTF-8 character has no text of its own)
    as_ids: bool = False


def usage(outs: list[RequestOutput | None], generated: bool = True) -> UsageInfo:
    """Token counts; ``generated`` False: the completions were not returned (``echo`` with
    ``max_tokens`` 0), so none is counted."""
    p = sum(len(o.prompt_token_ids) for o in outs if o is not None)
    c = sum(len(x.token_ids) for o in outs if o is not None for x in o.outputs) if generated else 0
    return UsageInfo.of(p, c)


def choice_usage(prompt_tokens: int, st: ChoiceState) -> UsageInfo:
    """A streamed chunk's usage with ``continuous_usage_stats``, as vLLM gives it: its
    choice's prompt and the tokens that choice has generated so far (the final usage chunk
    sums every choice's, :func:`usage`)."""
    return UsageInfo.of(prompt_tokens, st.num_tokens)


def _token_str(tid: int, lp: Logprob | None, as_ids: bool = False) -> str:
    if not as_ids and lp is not None and lp.decoded_token is not None:
        return lp.decoded_token
    return f"token_id:{tid}"


def _ranked(entry: dict[int, Logprob]) -> list[tuple[int, Logprob]]:
    return sorted(entry.items(), key=lambda kv: (kv[1].rank or 1 << 30, -kv[1].logprob))


def _top_by_text(entry: dict[int, Logprob], as_ids: bool) -> dict[str, float]:
    """Completions' top logprobs, keyed by token text. Tokens can share a text (byte-level
    pieces of one character all read "\ufffd"): the key keeps the likelier token's logprob,
    not the last one's, so the top entry is a token that was among the likeliest (and the
    sampled token's, where it is the likelier, matches its ``token_logprobs``)."""
    top: dict[str, float] = {}
    for t, lp in _ranked(entry):  # likeliest first
        top.setdefault(_token_str(t, lp, as_ids), lp.logprob)
    return top


def completion_logprobs(
    token_ids: list[int],
    entries: list[dict[int, Logprob] | None],
    st: ChoiceState,
    out: CompletionLogprobs | None = None,
    decode: Callable[[int], str] | None = None,
) -> CompletionLogprobs:
    """Completions-shaped logprobs of ``token_ids`` (an output's, or an echoed prompt's) from
    their ``entries``, appended to ``out`` (a new one by default); advances
    ``st.text_offset``. An entry None (a prompt's first token) has no logprob: its token is
    named by ``decode`` and its logprob and top logprobs are null (OpenAI's echo)."""
    out = out if out is not None else CompletionLogprobs()
    for tid, entry in zip(token_ids, entries):
        ids = st.as_ids
        if entry is None:
            tok = decode(tid) if decode is not None and not ids else _token_str(tid, None)
            out.tokens.append(tok)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
        else:
            tok = _token_str(tid, entry.get(tid), ids)
            out.tokens.append(tok)
            out.token_logprobs.append(entry[tid].logprob if tid in entry else None)
            out.top_logprobs.append(_top_by_text(entry, ids))
        out.text_offset.append(st.text_offset)
        st.text_offset += len(tok)
    return out


def output_logprobs(c: CompletionOutput, start: int, st: ChoiceState) -> CompletionLogprobs:
    """Completions-shaped logprobs of ``c``'s tokens from ``start`` on."""
    return completion_logprobs(c.token_ids[start:], (c.logprobs or [])[start:], st)


def prompt_logprobs(out: RequestOutput) -> PromptLogprobs | None:
    """vLLM's ``prompt_logprobs`` of a response (None where the request did not ask)."""
    if out.prompt_logprobs is None:
        return None
    return [
        None
        if entry is None
        else {
            tid: PromptLogprob(logprob=lp.logprob, rank=lp.rank, decoded_token=lp.decoded_token)
            for tid, lp in entry.items()
        }
        for entry in out.prompt_logprobs
    ]


# A token's own bytes, where its tokenizer spells them (``Tokenizer.token_bytes``).
TokenBytes = Callable[[int], bytes | None]


def chat_logprobs(
    c: CompletionOutput,
    start: int,
    k: int,
    as_ids: bool = False,
    token_bytes: TokenBytes | None = None,
) -> ChatChoiceLogprobs:
    """Logprobs of ``c``'s tokens from ``start`` on, each with its ``k`` most likely tokens
    (``as_ids``: see ``ChoiceState``). Each token's ``bytes`` are its own (``token_bytes``),
    so that the pieces of a character split over tokens, each read as U+FFFD, join into it
    (OpenAI's reason for the field); named by id, or where the tokenizer does not spell
    them, a token's bytes are those of its name."""

    def named(t: int, lp: Logprob | None) -> tuple[str, list[int]]:
        name = _token_str(t, lp, as_ids)
        raw = token_bytes(t) if token_bytes is not None and not as_ids else None
        return name, list(raw if raw is not None else name.encode())

    content = []
    for tid, entry in zip(c.token_ids[start:], (c.logprobs or [])[start:]):
        tok, raw = named(tid, entry.get(tid))
        top = []
        for t, lp in _ranked(entry):
            if lp.rank is not None and lp.rank <= k and len(top) < k:
                name, name_bytes = named(t, lp)
                top.append(dict(token=name, logprob=lp.logprob, bytes=name_bytes))
        lp = entry[tid].logprob if tid in entry else float("-inf")
        content.append(ChatLogprobEntry(token=tok, logprob=lp, bytes=raw, top_logprobs=top))
    return ChatChoiceLogprobs(content=content)

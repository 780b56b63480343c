"""``use_beam_search`` on the completions and chat endpoints (vLLM's): the request's ``n`` is
the beam width, and its ``n`` choices are the best beams, best first (xyserve.beam_search).
Each step's beams run as ordinary requests of one token, so the waiting limit, priorities,
disconnects and aborts apply to them as to any request. A search is checked whole before its
first step: a width over the waiting limit (every prompt runs a request per beam from the
second step on) is a 400 then, not after work was done; ``--request-timeout-s`` bounds the
whole search, not each step. On chat, ``--reasoning-parser`` reads each beam's thinking.

Beam search takes ``n``, ``max_tokens``, ``length_penalty`` and ``ignore_eos``; a sampling or
output field it would not use (``temperature``, ``stop``, ``logprobs``, ``stream``, ...) is
refused with a 400 naming it, as is ``length_penalty`` without ``use_beam_search``.
"""

from __future__ import annotations

import asyncio
import dataclasses

from fastapi import Request

from xyserve.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams
from xyserve.sampling_params import SamplingParams
from xyserve.server.context import ServerContext
from xyserve.server.errors import APIError, admission_error, stream_error
from xyserve.server.protocol import ChatCompletionRequest, CompletionRequest, UsageInfo
from xyserve.server.request_stream import RequestTimeoutError
from xyserve.server.streams import cancel_on_disconnect, final_outputs

# Fields a beam-search request may set besides the prompt's own (prompt, or chat's messages
# and rendering fields): everything else is a sampling or output option it would not use.
BEAM_FIELDS = {
    "model", "prompt", "messages", "n", "max_tokens", "max_completion_tokens", "use_beam_search",
    "length_penalty", "ignore_eos", "user", "priority", "add_generation_prompt",
    "continue_final_message", "chat_template_kwargs", "add_special_tokens", "include_reasoning",
}  # fmt: skip


def _given(body: CompletionRequest | ChatCompletionRequest) -> set[str]:
    """The fields the request sets to something other than their default: one sent with its
    default value (``"stream": false``, ``"logprobs": null``, as some clients send every
    field) asks for nothing, so beam search honours it as it is."""
    fields = type(body).model_fields
    return {f for f in body.model_fields_set if getattr(body, f) != fields[f].default}


def requested_max_tokens(body: CompletionRequest | ChatCompletionRequest) -> int | None:
    """The request's max_tokens (chat: ``max_completion_tokens`` first), None where unset."""
    given = getattr(body, "max_completion_tokens", None)
    return body.max_tokens if given is None else given


def beam_params(body: CompletionRequest | ChatCompletionRequest) -> BeamSearchParams | None:
    """The request's beam search, or None without ``use_beam_search``; APIError on a field
    it would not use."""
    given = _given(body)
    if not body.use_beam_search:
        if "length_penalty" in given:
            raise APIError("length_penalty applies to use_beam_search", param="length_penalty")
        return None
    unused = sorted(given - BEAM_FIELDS)
    if body.stream:
        unused = ["stream", *[f for f in unused if f != "stream"]]
    if unused:
        raise APIError(
            f"{unused[0]} is not used by beam search (it takes n, max_tokens, length_penalty "
            "and ignore_eos)",
            param=unused[0],
        )
    # Without max_tokens (chat's default), a search runs to the end of the context: a
    # placeholder of one here, set by ``run_beam_search`` once the prompt's length is known.
    max_tokens = requested_max_tokens(body)
    max_tokens = 1 if max_tokens is None else max_tokens
    try:
        return BeamSearchParams(body.n, max_tokens, body.ignore_eos, body.length_penalty)
    except ValueError as e:
        msg = str(e)
        param = msg.split(" ", 1)[0]
        if param == "beam_width":  # the request's name for it
            param, msg = "n", msg.replace("beam_width", "n (the beam width)", 1)
        raise APIError(msg, param=param) from None


async def run_beam_search(
    ctx: ServerContext,
    raw: Request,
    prompts: list,
    params: BeamSearchParams,
    rid: str,
    priority: int = 0,
    add_special_tokens: bool = True,
    renames: dict[str, str] | None = None,
    to_context_end: bool = False,
) -> list[BeamSearchOutput]:
    """Each prompt's best beams; the prompts are checked first (a 400 before anything runs).
    ``renames``: the request's names of the fields a 400 names (chat: ``prompt`` is the
    messages), as in ``ServerContext.add_all``. ``to_context_end``: the request gave no
    max_tokens, so the search may run to the end of the context (``max_model_len`` less the
    longest prompt), as vLLM's chat beam search does."""
    intake = ctx.llm.engine.intake
    most = intake.config.max_n
    if params.beam_width > most:  # each step runs a request per beam
        raise APIError(f"n (the beam width) must be at most {most}", param="n")
    # From the second step on, every prompt runs a request per beam: a search the waiting
    # limit can never admit is refused now, not after its first step has run.
    limit = ctx.llm.max_waiting
    need = len(prompts) * params.beam_width
    if limit is not None and need > limit:
        raise APIError(
            f"beam search runs {need} sequences a step ({len(prompts)} prompts x n="
            f"{params.beam_width}) but at most {limit} may wait (--max-waiting-requests): it "
            "can never be admitted",
            param="n" if params.beam_width > limit else "prompt",
        )
    step = params.step_params()

    def prepare() -> list[list[int]]:
        ids = [intake.prompt_ids(p, add_special_tokens)[1] for p in prompts]
        check = SamplingParams(max_tokens=params.max_tokens)
        for p in ids:
            intake.validate(p, check)
        return ids

    try:
        ids = await asyncio.to_thread(prepare)
    except ValueError as e:  # as ServerContext.add_all words a request's 400
        raise admission_error(e, renames, param="prompt") from None
    if to_context_end:
        room = intake.max_model_len - max(len(p) for p in ids)  # >= 1: checked in prepare
        params = dataclasses.replace(params, max_tokens=room)
    search = BeamSearch(ids, params, ctx.llm.engine.eos_token_ids)

    async def steps() -> None:
        n = 0
        while not search.finished:
            reqs = search.requests()
            streams = await ctx.add_all(reqs, step, f"{rid}-s{n}", priority=priority)
            search.advance(await final_outputs(streams))
            n += 1

    async def timed() -> None:
        """The search, within the request time limit: each step's requests get the limit of
        their own, so without this one a search could run ``max_tokens`` times as long."""
        timeout = ctx.llm.request_timeout_s
        if timeout is None:
            return await steps()
        try:
            await asyncio.wait_for(steps(), timeout)  # cancelled: its step's requests abort
        except asyncio.TimeoutError:
            raise RequestTimeoutError("the request ran past its time limit") from None

    try:
        await cancel_on_disconnect(raw, timed())
    except Exception as e:  # a step's failure, or the time limit: the client's error body
        raise stream_error(e) from None
    tok = ctx.llm.engine.tokenizer
    return search.results(tok.decode if tok is not None else None)


def beam_usage(outs: list[BeamSearchOutput]) -> UsageInfo:
    """Each prompt's tokens once, and every returned beam's."""
    p = sum(len(o.sequences[0].tokens) - len(o.sequences[0].output_token_ids) for o in outs)
    c = sum(len(s.output_token_ids) for o in outs for s in o.sequences)
    return UsageInfo.of(p, c)

"""POST /v1/completions: one or several prompts, each with ``n`` choices, whole or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from xyserve.beam_search import BeamSearchParams
from xyserve.outputs import RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.server.async_engine import AsyncLLM
from xyserve.server.beam import beam_params, beam_usage, requested_max_tokens, run_beam_search
from xyserve.server.context import Ctx
from xyserve.server.errors import APIError, stream_error
from xyserve.server.params import sampling_params
from xyserve.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamChoice,
    CompletionStreamResponse,
    unix_time,
)
from xyserve.server.render import (
    ChoiceState,
    choice_usage,
    completion_logprobs,
    output_logprobs,
    prompt_logprobs,
    usage,
)
from xyserve.server.request_stream import RequestStream
from xyserve.server.sse import DONE, OnDone, advance, sse, sse_error
from xyserve.server.streams import merge

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, raw: Request, ctx: Ctx) -> Any:
    t0 = time.monotonic()
    ctx.check_model(body.model)
    if body.stream and body.prompt_logprobs is not None:  # vLLM refuses them too
        raise APIError("prompt_logprobs are not available with stream", param="prompt_logprobs")
    beam = beam_params(body)
    if beam is not None:
        return await _beam_completion(body, raw, ctx, beam)
    params = await sampling_params(ctx.llm, body, {})
    prompts = body.prompts()
    if not prompts:
        raise APIError("prompt must not be empty", param="prompt")
    rid = f"cmpl-{uuid.uuid4().hex}"
    streams = await ctx.add_all(prompts, params, rid, priority=body.priority)
    try:
        # a cut prompt (truncate_prompt_tokens) echoes what the model read
        said = (
            prompts
            if params.truncate_prompt_tokens is None
            else [s.prompt_token_ids for s in streams]
        )
        echo = await asyncio.to_thread(_echo_texts, ctx.llm, said) if body.echo else None
    except BaseException:  # refused after admission: its requests must not run for nobody
        for s in streams:
            s.close()
        raise
    model_name = ctx.model_name
    decode = _decoder(ctx.llm)
    if body.stream:
        gen = _completion_stream(
            streams, rid, model_name, params, body, echo, decode,
            lambda outs, err: ctx.log_request(rid, t0, outs, body.user, err),
        )  # fmt: skip
        return StreamingResponse(gen, media_type="text/event-stream")
    finals = await ctx.collect(raw, streams, rid, t0, body.user)
    bare = body.echo_without_generation
    choices = []
    for i, out in enumerate(finals):
        for c in out.outputs:
            st = ChoiceState(as_ids=body.return_tokens_as_token_ids)
            text = (echo[i] if echo else "") + ("" if bare else c.text)
            lp = None
            if params.logprobs is not None:
                lp = _echo_logprobs(out, st, decode) if echo else None
                if not bare:
                    lp = completion_logprobs(c.token_ids, c.logprobs or [], st, lp)
            choices.append(
                CompletionChoice(
                    index=i * params.n + c.index,
                    text=text,
                    logprobs=lp,
                    finish_reason="length" if bare else c.finish_reason,
                    stop_reason=None if bare else c.stop_reason,
                    prompt_logprobs=prompt_logprobs(out)
                    if body.prompt_logprobs is not None
                    else None,
                )
            )
    u = usage(finals, generated=not bare)
    return CompletionResponse(id=rid, model=model_name, choices=choices, usage=u)


async def _beam_completion(
    body: CompletionRequest, raw: Request, ctx: Ctx, beam: BeamSearchParams
) -> CompletionResponse:
    prompts = body.prompts()
    if not prompts:
        raise APIError("prompt must not be empty", param="prompt")
    rid = f"cmpl-{uuid.uuid4().hex}"
    outs = await run_beam_search(
        ctx,
        raw,
        prompts,
        beam,
        rid,
        body.priority,
        to_context_end=requested_max_tokens(body) is None,
    )
    choices = [
        CompletionChoice(
            index=i * beam.beam_width + j, text=s.text or "", finish_reason=s.finish_reason
        )
        for i, o in enumerate(outs)
        for j, s in enumerate(o.sequences)
    ]
    return CompletionResponse(id=rid, model=ctx.model_name, choices=choices, usage=beam_usage(outs))


def _decoder(llm: AsyncLLM) -> Callable[[int], str] | None:
    """One token's text, for an echoed prompt's first token (which has no logprob entry)."""
    tok = llm.engine.tokenizer
    if tok is None:
        return None
    return lambda tid: tok.decode([tid], skip_special_tokens=False)


def _echo_logprobs(
    out: RequestOutput, st: ChoiceState, decode: Callable[[int], str] | None
) -> CompletionLogprobs:
    """The echoed prompt's part of a choice's logprobs (``echo`` with ``logprobs``)."""
    entries = out.prompt_logprobs or [None] * len(out.prompt_token_ids)
    return completion_logprobs(out.prompt_token_ids, entries, st, decode=decode)


def _prompt_logprobs_complete(out: RequestOutput) -> bool:
    """Whether every prompt token past the first has its logprob entry."""
    entries = out.prompt_logprobs
    return entries is not None and all(e is not None for e in entries[1:])


def _echo_texts(llm: AsyncLLM, prompts: list[Any]) -> list[str]:
    """``echo``: each prompt's text (token prompts decoded), put before its completions."""
    tok = llm.engine.tokenizer
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        elif tok is None:
            raise APIError("echo of a token prompt needs a tokenizer", param="echo")
        else:
            out.append(tok.decode(list(p), skip_special_tokens=False))
    return out


async def _completion_stream(
    streams: list[RequestStream],
    rid: str,
    model: str,
    params: SamplingParams,
    body: CompletionRequest,
    echo: list[str] | None = None,
    decode: Callable[[int], str] | None = None,
    on_done: OnDone | None = None,
) -> AsyncIterator[str]:
    n = params.n
    states = [ChoiceState(as_ids=body.return_tokens_as_token_ids) for _ in range(len(streams) * n)]
    finals: list[RequestOutput | None] = [None] * len(streams)
    error = None
    created = unix_time()
    logprobs = params.logprobs is not None
    bare = body.echo_without_generation
    # Each prompt's echo is its choices' first chunk: at once, or with logprobs, once every
    # prompt position's logprob is in (or the request ended). Not at the first output token:
    # with n > 1 another sample may read the cached prompt and sample while the one that
    # computes the prompt's logprobs is still prefilling.
    echoed = [not echo] * len(streams)
    prompt_lens = [len(s.prompt_token_ids) for s in streams]

    def chunk(choice: CompletionStreamChoice) -> str:
        if body.continuous_usage:
            u = choice_usage(prompt_lens[choice.index // n], states[choice.index])
        else:
            u = None
        return sse(
            CompletionStreamResponse(
                id=rid, created=created, model=model, choices=[choice], usage=u
            )
        )

    def echo_chunks(i: int, out: RequestOutput | None) -> list[str]:
        echoed[i] = True
        chunks = []
        for j in range(n):
            st = states[i * n + j]
            lp = _echo_logprobs(out, st, decode) if logprobs else None
            done = "length" if bare else None
            chunks.append(
                chunk(
                    CompletionStreamChoice(
                        index=i * n + j, text=echo[i], logprobs=lp, finish_reason=done
                    )
                )
            )
        return chunks

    try:
        if echo and not logprobs:
            for i in range(len(streams)):
                for c in echo_chunks(i, None):
                    yield c
        async for i, out in merge(streams):
            finals[i] = out
            if not echoed[i]:
                if not (out.finished or _prompt_logprobs_complete(out)):
                    continue
                for c in echo_chunks(i, out):
                    yield c
            if bare:
                continue
            for c in out.outputs:
                st = states[i * n + c.index]
                step = advance(st, c, params.stop_strings)
                if step is None:
                    continue
                text, start = step
                lp = output_logprobs(c, start, st) if logprobs else None
                yield chunk(
                    CompletionStreamChoice(
                        index=i * n + c.index,
                        text=text,
                        logprobs=lp,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                    )
                )
        if body.include_usage:
            u = usage(finals, generated=not bare)
            yield sse(
                CompletionStreamResponse(id=rid, created=created, model=model, choices=[], usage=u)
            )
    except Exception as e:
        error = stream_error(e).info.message
        yield sse_error(e)
    finally:
        for s in streams:
            s.close()
        if on_done is not None:
            on_done(finals, error)
    yield DONE

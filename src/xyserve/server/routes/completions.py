"""POST /v1/completions: one or several prompts, each with ``n`` choices, whole or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from xyserve.outputs import RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.server.async_engine import AsyncLLM
from xyserve.server.context import Ctx
from xyserve.server.errors import APIError, stream_error
from xyserve.server.params import sampling_params
from xyserve.server.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    unix_time,
)
from xyserve.server.render import ChoiceState, completion_logprobs, usage
from xyserve.server.request_stream import RequestStream
from xyserve.server.sse import DONE, OnDone, advance, sse, sse_error
from xyserve.server.streams import merge

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, raw: Request, ctx: Ctx) -> Any:
    t0 = time.monotonic()
    ctx.check_model(body.model)
    if body.echo and body.logprobs is not None:
        raise APIError("echo with logprobs (prompt logprobs) is not supported", param="echo")
    params = await sampling_params(ctx.llm, body, {})
    prompts = body.prompts()
    if not prompts:
        raise APIError("prompt must not be empty", param="prompt")
    rid = f"cmpl-{uuid.uuid4().hex}"
    streams = await ctx.add_all(prompts, params, rid)
    try:
        echo = await asyncio.to_thread(_echo_texts, ctx.llm, prompts) if body.echo else None
    except BaseException:  # refused after admission: its requests must not run for nobody
        for s in streams:
            s.close()
        raise
    model_name = ctx.model_name
    if body.stream:
        gen = _completion_stream(
            streams, rid, model_name, params, body.include_usage, echo,
            lambda outs, err: ctx.log_request(rid, t0, outs, body.user, err),
        )  # fmt: skip
        return StreamingResponse(gen, media_type="text/event-stream")
    finals = await ctx.collect(raw, streams, rid, t0, body.user)
    choices = []
    for i, out in enumerate(finals):
        for c in out.outputs:
            lp = None
            if params.logprobs is not None:
                lp = completion_logprobs(c, 0, ChoiceState())
            choices.append(
                CompletionChoice(
                    index=i * params.n + c.index,
                    text=(echo[i] if echo else "") + c.text,
                    logprobs=lp,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
            )
    return CompletionResponse(id=rid, model=model_name, choices=choices, usage=usage(finals))


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
    include_usage: bool,
    echo: list[str] | None = None,
    on_done: OnDone | None = None,
) -> AsyncIterator[str]:
    n = params.n
    states = [ChoiceState() for _ in range(len(streams) * n)]
    finals: list[RequestOutput | None] = [None] * len(streams)
    error = None
    created = unix_time()

    def chunk(choice: CompletionChoice) -> str:
        return sse(CompletionStreamResponse(id=rid, created=created, model=model, choices=[choice]))

    try:
        if echo:
            for i, text in enumerate(echo):
                for j in range(n):
                    yield chunk(CompletionChoice(index=i * n + j, text=text))
        async for i, out in merge(streams):
            finals[i] = out
            for c in out.outputs:
                st = states[i * n + c.index]
                step = advance(st, c, params.stop_strings)
                if step is None:
                    continue
                text, start = step
                lp = completion_logprobs(c, start, st) if params.logprobs is not None else None
                yield chunk(
                    CompletionChoice(
                        index=i * n + c.index,
                        text=text,
                        logprobs=lp,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                    )
                )
        if include_usage:
            u = usage(finals)
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

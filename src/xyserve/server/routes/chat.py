"""POST /v1/chat/completions: messages rendered with the chat template, whole or streamed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from xyserve.beam_search import BeamSearchParams
from xyserve.outputs import RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.server.beam import beam_params, beam_usage, requested_max_tokens, run_beam_search
from xyserve.server.context import Ctx
from xyserve.server.errors import APIError, stream_error
from xyserve.server.params import sampling_params
from xyserve.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatMessageOut,
    ChatStreamChoice,
    DeltaMessage,
    unix_time,
)
from xyserve.server.reasoning import ReasoningParser, ReasoningStream, reply_parts
from xyserve.server.render import (
    ChoiceState,
    TokenBytes,
    chat_logprobs,
    choice_usage,
    prompt_logprobs,
    usage,
)
from xyserve.server.request_stream import RequestStream
from xyserve.server.sse import DONE, OnDone, advance, sse, sse_error
from xyserve.server.tools import (
    ParsedReply,
    ToolMode,
    ToolStream,
    constraint_schema,
    finish_reason,
    keeps_special_tokens,
    parse_reply,
    refused_tool,
    template_tools,
    tool_mode,
)

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, raw: Request, ctx: Ctx) -> Any:
    t0 = time.monotonic()
    ctx.check_model(body.model)
    both = body.max_tokens is not None and body.max_completion_tokens is not None
    if both and body.max_tokens != body.max_completion_tokens:
        raise APIError(
            "max_tokens and max_completion_tokens differ; give max_completion_tokens alone",
            param="max_tokens",
        )
    renames = {}
    if body.max_completion_tokens is not None:
        renames["max_tokens"] = "max_completion_tokens"
    renames["logprobs"] = "top_logprobs"
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.stream and body.prompt_logprobs is not None:  # vLLM refuses them too
        raise APIError("prompt_logprobs are not available with stream", param="prompt_logprobs")
    beam = beam_params(body)
    if not body.include_reasoning and ctx.reasoning_parser is None:
        msg = "include_reasoning applies with --reasoning-parser only (no reasoning is read)"
        raise APIError(msg, param="include_reasoning")
    opts = ctx.opts
    mode = tool_mode(body, opts.tool_call_parser, opts.enable_auto_tool_choice)
    params = await sampling_params(ctx.llm, body, renames)
    # auto calls whose marker is a special token are read with special tokens kept (as vLLM's
    # mistral parser does); a skip_special_tokens the client gave stands
    if mode.kind == "auto" and "skip_special_tokens" not in body.model_fields_set:
        if keeps_special_tokens(mode, ctx.llm.engine.tokenizer):  # two short encodes
            params.skip_special_tokens = False
    if mode.constrained:  # the reply is held to the calls' schema
        if params.structured is not None:
            msg = "a tool_choice that forces calls takes no other structured-output constraint"
            raise APIError(msg, param="tool_choice")
        schema = constraint_schema(body, mode)
        compile_schema = ctx.llm.engine.intake.compile_grammar
        try:
            params.structured = await asyncio.to_thread(compile_schema, "json_schema", schema)
        except ValueError as e:
            msg = await asyncio.to_thread(refused_tool, body, mode, compile_schema)
            raise APIError(f"tools: {msg or e}", param="tools") from None
    prompt = await ctx.render_chat(
        body.messages, body.add_generation_prompt, body.continue_final_message,
        template_tools(body), body.chat_template_kwargs,
    )  # fmt: skip
    if beam is not None:
        return await _beam_chat(body, raw, ctx, beam, prompt)
    # echo: the reply starts with the last message when it is the assistant's, as in vLLM
    last = body.messages[-1]
    echo = last.text() if body.echo and last.role == "assistant" else ""
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    # The template already holds any special tokens (BOS); by default don't add them twice.
    renames["prompt"] = "messages"
    streams = await ctx.add_all(
        [prompt], params, rid, add_special_tokens=body.add_special_tokens, renames=renames,
        priority=body.priority,
    )  # fmt: skip
    k = body.top_logprobs or 0
    tok = ctx.llm.engine.tokenizer
    token_bytes = tok.token_bytes if tok is not None else None
    model_name = ctx.model_name
    # a reply held to a grammar (structured outputs, forced calls) has no thinking to read
    think = None if params.structured is not None else ctx.reasoning_parser
    if body.stream:
        gen = _chat_stream(
            streams[0], rid, model_name, params, k, body, mode, echo, think,
            lambda outs, err: ctx.log_request(rid, t0, outs, body.user, err), token_bytes,
        )  # fmt: skip
        return StreamingResponse(gen, media_type="text/event-stream")
    (out,) = await ctx.collect(raw, streams, rid, t0, body.user)
    choices = []
    for c in out.outputs:
        reasoning, text = reply_parts(think, c.text, body.include_reasoning)
        reply = parse_reply(mode, text) if text is not None else ParsedReply(None)
        content = echo + reply.content if reply.content is not None else (echo or None)
        choices.append(
            ChatCompletionChoice(
                index=c.index,
                message=ChatMessageOut(
                    reasoning=reasoning, content=content, tool_calls=reply.calls
                ),
                logprobs=chat_logprobs(c, 0, k, body.return_tokens_as_token_ids, token_bytes)
                if params.logprobs is not None
                else None,
                finish_reason=finish_reason(mode, reply, c.finish_reason),
                stop_reason=c.stop_reason,
            )
        )
    return ChatCompletionResponse(
        id=rid,
        model=model_name,
        choices=choices,
        usage=usage([out]),
        prompt_logprobs=prompt_logprobs(out) if body.prompt_logprobs is not None else None,
    )


async def _beam_chat(
    body: ChatCompletionRequest, raw: Request, ctx: Ctx, beam: BeamSearchParams, prompt: str
) -> ChatCompletionResponse:
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    renames = {"prompt": "messages"}
    if body.max_completion_tokens is not None:
        renames["max_tokens"] = "max_completion_tokens"
    (out,) = await run_beam_search(
        ctx, raw, [prompt], beam, rid, body.priority, body.add_special_tokens, renames,
        to_context_end=requested_max_tokens(body) is None,
    )  # fmt: skip
    # A beam is a reply like any other: --reasoning-parser reads its thinking (as vLLM's).
    think = ctx.reasoning_parser
    choices = []
    for j, s in enumerate(out.sequences):
        reasoning, content = reply_parts(think, s.text or "", body.include_reasoning)
        message = ChatMessageOut(reasoning=reasoning, content=content)
        choices.append(
            ChatCompletionChoice(index=j, message=message, finish_reason=s.finish_reason)
        )
    return ChatCompletionResponse(
        id=rid, model=ctx.model_name, choices=choices, usage=beam_usage([out])
    )


async def _chat_stream(
    stream: RequestStream,
    rid: str,
    model: str,
    params: SamplingParams,
    k: int,
    body: ChatCompletionRequest,
    mode: ToolMode,
    echo: str = "",
    think: ReasoningParser | None = None,
    on_done: OnDone | None = None,
    token_bytes: TokenBytes | None = None,
) -> AsyncIterator[str]:
    states = [ChoiceState() for _ in range(params.n)]
    calls = [ToolStream(mode) for _ in range(params.n)]
    thoughts = [ReasoningStream(think) if think else None for _ in range(params.n)]
    # Per choice: its first token whose logprobs have not gone out. A step that has nothing
    # to send (a "required" reply's text, held until its calls are whole; text held back
    # for a stop string) sends no chunk: its tokens' logprobs go with the next chunk, the
    # one that carries what those tokens said.
    lp_from = [0] * params.n
    final: RequestOutput | None = None
    error = None
    created = unix_time()
    prompt_len = len(stream.prompt_token_ids)

    def chunk(choice: ChatStreamChoice) -> str:
        u = choice_usage(prompt_len, states[choice.index]) if body.continuous_usage else None
        return sse(
            ChatCompletionStreamResponse(
                id=rid, created=created, model=model, choices=[choice], usage=u
            )
        )

    try:
        for j in range(params.n):
            yield chunk(ChatStreamChoice(index=j, delta=DeltaMessage(role="assistant", content="")))
            if echo:
                yield chunk(ChatStreamChoice(index=j, delta=DeltaMessage(content=echo)))
        async for out in stream:
            final = out
            for c in out.outputs:
                step = advance(states[c.index], c, params.stop_strings)
                if step is None:
                    continue
                text, _ = step
                done = c.finish_reason is not None
                reasoning = None
                if thoughts[c.index] is not None:
                    reasoning, text = thoughts[c.index].feed(text, done)
                    reasoning = (reasoning or None) if body.include_reasoning else None
                tools = calls[c.index]
                content, tool_deltas = tools.feed(text, done)
                reason = c.finish_reason
                if not content and not tool_deltas and not reasoning and reason is None:
                    continue
                if reason is not None:
                    reason = tools.finish_reason(reason)
                lp = None
                if params.logprobs is not None:
                    lp = chat_logprobs(
                        c, lp_from[c.index], k, body.return_tokens_as_token_ids, token_bytes
                    )
                    lp_from[c.index] = len(c.token_ids)
                yield chunk(
                    ChatStreamChoice(
                        index=c.index,
                        delta=DeltaMessage(
                            reasoning=reasoning, content=content, tool_calls=tool_deltas
                        ),
                        logprobs=lp,
                        finish_reason=reason,
                        stop_reason=c.stop_reason,
                    )
                )
        if body.include_usage:
            u = usage([final])
            yield sse(
                ChatCompletionStreamResponse(
                    id=rid, created=created, model=model, choices=[], usage=u
                )
            )
    except Exception as e:
        error = stream_error(e).info.message
        yield sse_error(e)
    finally:
        stream.close()
        if on_done is not None:
            on_done([final], error)
    yield DONE

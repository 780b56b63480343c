"""The OpenAI-compatible HTTP API (FastAPI) over an AsyncLLM.

Every client error becomes the OpenAI error body ``{"error": {message, type, param, code}}``
with status 400 (404 for an unknown model), so OpenAI clients raise their usual exceptions and
one bad request never disturbs the others.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from xyserve.outputs import CompletionOutput, Logprob, RequestOutput
from xyserve.sampling_params import SamplingParams, SamplingParamsError
from xyserve.server.async_engine import AsyncLLM, EngineDeadError, RequestStream
from xyserve.server.metrics import ServerMetrics
from xyserve.server.protocol import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatLogprobEntry,
    ChatMessageOut,
    ChatStreamChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    UsageInfo,
)

log = logging.getLogger("xyserve.server")
T = TypeVar("T")


class APIError(Exception):
    """An error that the client caused (or may retry), rendered as OpenAI's error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.info = (
            status,
            ErrorInfo(message=message, type=type, param=param, code=code),
        )


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=err.info).model_dump(), status_code=err.status)


def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending field as ``param``."""
    msgs, param = [], None
    for e in exc.errors():
        # Union branches add type tags ("str", "list[int]") to the location: not fields.
        loc = [str(x) for x in e.get("loc", ()) if x != "body" and not _is_type_tag(x)]
        if e.get("type") == "json_invalid":
            loc = []
        where = ".".join(loc)
        if param is None and where:
            param = where
        msg = f"{where}: {e.get('msg')}" if where else str(e.get("msg"))
        if msg not in msgs:
            msgs.append(msg)
    return APIError("; ".join(msgs) or "invalid request", param=param)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "tuple"}


def _is_type_tag(x: object) -> bool:
    return isinstance(x, str) and ("[" in x or x in _TYPE_TAGS)


# ---- streaming helpers -------------------------------------------------------------------


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave the outputs of several requests as they come, tagged with their index."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                q.put_nowait((i, out))
        except Exception as e:
            q.put_nowait((i, e))
        finally:
            q.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await q.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


async def _collect(streams: list[RequestStream]) -> list[RequestOutput]:
    """The final output of each request (non-streaming responses)."""
    final: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for i, out in _merge(streams):
            final[i] = out
    finally:  # cancelled (client gone) or failed: abort whatever still runs
        for s in streams:
            s.close()
    assert all(f is not None for f in final)
    return final  # type: ignore[return-value]


async def _cancel_on_disconnect(raw: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it (aborting its requests) if the client goes away first.

    Starlette only notices disconnects while streaming, so a long non-streaming generation
    would otherwise run on for nobody.
    """
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await raw.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise APIError("client disconnected", status=499, type="client_disconnected")
    return task.result()


@dataclass
class _ChoiceState:
    text_len: int = 0
    num_tokens: int = 0
    text_offset: int = 0
    done: bool = False


def _text_delta(st: _ChoiceState, c: CompletionOutput, stops: list[str]) -> str:
    """New text since the last chunk.

    While the sequence runs, a trailing partial UTF-8 character and any tail that may begin a
    stop string are held back: the engine cuts the stop string off the text later, and what
    was streamed cannot be taken back.
    """
    text = c.text
    if c.finish_reason is None:
        text = text.rstrip("\ufffd")
        hold = 0
        for s in stops:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        text = text[: len(text) - hold]
    if len(text) <= st.text_len:
        return ""
    delta = text[st.text_len :]
    st.text_len = len(text)
    return delta


def _sse(model: Any) -> str:
    return f"data: {model.model_dump_json()}\n\n"


def _sse_error(err: Exception) -> str:
    kind = "invalid_request_error" if isinstance(err, ValueError) else "internal_error"
    info = ErrorInfo(message=str(err), type=kind)
    return f"data: {ErrorResponse(error=info).model_dump_json()}\n\n"


def _usage(outs: list[RequestOutput | None]) -> UsageInfo:
    p = sum(len(o.prompt_token_ids) for o in outs if o is not None)
    c = sum(len(x.token_ids) for o in outs if o is not None for x in o.outputs)
    return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


# ---- logprobs ----------------------------------------------------------------------------


def _token_str(tid: int, lp: Logprob | None) -> str:
    if lp is not None and lp.decoded_token is not None:
        return lp.decoded_token
    return f"token_id:{tid}"


def _ranked(entry: dict[int, Logprob]) -> list[tuple[int, Logprob]]:
    return sorted(entry.items(), key=lambda kv: (kv[1].rank or 1 << 30, -kv[1].logprob))


def _completion_logprobs(c: CompletionOutput, start: int, st: _ChoiceState) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for tid, entry in zip(c.token_ids[start:], (c.logprobs or [])[start:]):
        tok = _token_str(tid, entry.get(tid))
        out.tokens.append(tok)
        out.token_logprobs.append(entry[tid].logprob if tid in entry else None)
        out.top_logprobs.append({_token_str(t, lp): lp.logprob for t, lp in _ranked(entry)})
        out.text_offset.append(st.text_offset)
        st.text_offset += len(tok)
    return out


def _chat_logprobs(c: CompletionOutput, start: int, k: int) -> ChatChoiceLogprobs:
    content = []
    for tid, entry in zip(c.token_ids[start:], (c.logprobs or [])[start:]):
        tok = _token_str(tid, entry.get(tid))
        top = [
            dict(
                token=_token_str(t, lp), logprob=lp.logprob, bytes=list(_token_str(t, lp).encode())
            )
            for t, lp in _ranked(entry)
            if lp.rank is not None and lp.rank <= k
        ][:k]
        lp = entry[tid].logprob if tid in entry else float("-inf")
        content.append(
            ChatLogprobEntry(token=tok, logprob=lp, bytes=list(tok.encode()), top_logprobs=top)
        )
    return ChatChoiceLogprobs(content=content)


# ---- the app -----------------------------------------------------------------------------


def create_app(llm: AsyncLLM, *, shutdown_engine: bool = True) -> FastAPI:
    """An app serving ``llm``; it owns a metrics registry and starts the engine thread."""
    metrics = ServerMetrics()
    llm.stats_hook = metrics.on_step

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        llm.start()
        try:
            yield
        finally:
            if shutdown_engine:
                await asyncio.to_thread(llm.shutdown)

    app = FastAPI(title="xyserve", lifespan=lifespan)
    app.state.llm = llm
    app.state.metrics = metrics
    model_name = llm.model_name

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return _error_response(APIError(str(exc.detail), exc.status_code, kind))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(APIError(f"internal error: {exc}", 500, "internal_error"))

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(
                f"The model `{name}` does not exist.",
                status=404,
                type="NotFoundError",
                param="model",
                code="model_not_found",
            )

    def sampling_params(make: Callable[[], SamplingParams], renames: dict[str, str]) -> Any:
        try:
            return make()
        except SamplingParamsError as e:
            raise APIError(str(e), param=renames.get(e.param, e.param)) from None

    async def add_all(
        prompts: list[Any], params: SamplingParams, rid: str, add_special_tokens: bool = True
    ) -> list[RequestStream]:
        """Add every prompt's request or none: an add error is the client's 400."""
        streams: list[RequestStream] = []
        try:
            for i, prompt in enumerate(prompts):
                sub = rid if len(prompts) == 1 else f"{rid}-{i}"
                streams.append(
                    await llm.add_request(
                        prompt, params, sub, add_special_tokens=add_special_tokens
                    )
                )
        except BaseException as e:
            for s in streams:
                s.close()
            if isinstance(e, EngineDeadError):
                raise APIError(str(e), 503, "internal_error") from None
            if isinstance(e, ValueError):
                code = "context_length_exceeded" if "context length" in str(e) else None
                raise APIError(str(e), code=code) from None
            raise
        return streams

    # ---- routes ---------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        if not llm.is_alive:
            raise APIError("the engine is not running", 503, "internal_error")
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> ModelList:
        root = str(getattr(llm.engine, "model_path", "")) or None
        card = ModelCard(id=model_name, root=root, max_model_len=llm.engine.max_model_len)
        return ModelList(data=[card])

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, raw: Request) -> Any:
        check_model(body.model)
        if body.echo or body.suffix:
            raise APIError("echo and suffix are not supported", param="echo")
        params = sampling_params(body.to_sampling_params, {})
        prompts = body.prompts()
        if not prompts:
            raise APIError("prompt must not be empty", param="prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        streams = await add_all(prompts, params, rid)
        if body.stream:
            gen = _completion_stream(streams, rid, model_name, params, body.include_usage)
            return StreamingResponse(gen, media_type="text/event-stream")
        finals = await _cancel_on_disconnect(raw, _collect(streams))
        choices = []
        for i, out in enumerate(finals):
            for c in out.outputs:
                lp = None
                if params.logprobs is not None:
                    lp = _completion_logprobs(c, 0, _ChoiceState())
                choices.append(
                    CompletionChoice(
                        index=i * params.n + c.index,
                        text=c.text,
                        logprobs=lp,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                    )
                )
        return CompletionResponse(id=rid, model=model_name, choices=choices, usage=_usage(finals))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Any:
        check_model(body.model)
        renames = {}
        if body.max_completion_tokens is not None:
            renames["max_tokens"] = "max_completion_tokens"
        renames["logprobs"] = "top_logprobs"
        params = sampling_params(body.to_sampling_params, renames)
        tok = llm.engine.tokenizer
        if tok is None:
            raise APIError("chat needs a tokenizer (skip_tokenizer_init is set)")
        try:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            prompt = tok.apply_chat_template(messages, body.add_generation_prompt)
        except Exception as e:
            raise APIError(f"cannot apply the chat template: {e}", param="messages") from None
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        # The template already holds any special tokens (BOS); don't add them twice.
        streams = await add_all([prompt], params, rid, add_special_tokens=False)
        k = body.top_logprobs or 0
        if body.stream:
            gen = _chat_stream(streams[0], rid, model_name, params, k, body.include_usage)
            return StreamingResponse(gen, media_type="text/event-stream")
        (out,) = await _cancel_on_disconnect(raw, _collect(streams))
        choices = [
            ChatCompletionChoice(
                index=c.index,
                message=ChatMessageOut(content=c.text),
                logprobs=_chat_logprobs(c, 0, k) if params.logprobs is not None else None,
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
            )
            for c in out.outputs
        ]
        return ChatCompletionResponse(
            id=rid, model=model_name, choices=choices, usage=_usage([out])
        )

    return app


async def _completion_stream(
    streams: list[RequestStream],
    rid: str,
    model: str,
    params: SamplingParams,
    include_usage: bool,
) -> AsyncIterator[str]:
    n = params.n
    states = [_ChoiceState() for _ in range(len(streams) * n)]
    finals: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for i, out in _merge(streams):
            finals[i] = out
            for c in out.outputs:
                st = states[i * n + c.index]
                if st.done:
                    continue
                start = st.num_tokens
                text = _text_delta(st, c, params.stop_strings)
                if not text and len(c.token_ids) == start and c.finish_reason is None:
                    continue
                lp = None
                if params.logprobs is not None:
                    lp = _completion_logprobs(c, start, st)
                st.num_tokens = len(c.token_ids)
                st.done = c.finish_reason is not None
                choice = CompletionChoice(
                    index=i * n + c.index,
                    text=text,
                    logprobs=lp,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
                yield _sse(CompletionStreamResponse(id=rid, model=model, choices=[choice]))
        if include_usage:
            usage = _usage(finals)
            yield _sse(CompletionStreamResponse(id=rid, model=model, choices=[], usage=usage))
    except Exception as e:
        log.exception("completion stream failed")
        yield _sse_error(e)
    finally:
        for s in streams:
            s.close()
    yield "data: [DONE]\n\n"


async def _chat_stream(
    stream: RequestStream,
    rid: str,
    model: str,
    params: SamplingParams,
    k: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    states = [_ChoiceState() for _ in range(params.n)]
    final: RequestOutput | None = None

    def chunk(choice: ChatStreamChoice) -> str:
        return _sse(ChatCompletionStreamResponse(id=rid, model=model, choices=[choice]))

    try:
        for j in range(params.n):
            yield chunk(ChatStreamChoice(index=j, delta=DeltaMessage(role="assistant", content="")))
        async for out in stream:
            final = out
            for c in out.outputs:
                st = states[c.index]
                if st.done:
                    continue
                start = st.num_tokens
                text = _text_delta(st, c, params.stop_strings)
                if not text and len(c.token_ids) == start and c.finish_reason is None:
                    continue
                lp = _chat_logprobs(c, start, k) if params.logprobs is not None else None
                st.num_tokens = len(c.token_ids)
                st.done = c.finish_reason is not None
                delta = DeltaMessage(content=text) if text else DeltaMessage()
                yield chunk(
                    ChatStreamChoice(
                        index=c.index,
                        delta=delta,
                        logprobs=lp,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                    )
                )
        if include_usage:
            usage = _usage([final])
            yield _sse(ChatCompletionStreamResponse(id=rid, model=model, choices=[], usage=usage))
    except Exception as e:
        log.exception("chat stream failed")
        yield _sse_error(e)
    finally:
        stream.close()
    yield "data: [DONE]\n\n"

"""The OpenAI-compatible HTTP API (FastAPI) over an AsyncLLM.

Every client error becomes the OpenAI error body ``{"error": {message, type, param, code}}``
with status 400 (401 without the API key, 404 for an unknown model, 413 for a body over the
limit, 503 past the waiting limit), so OpenAI clients raise their usual exceptions. Requests
are validated whole before any part is admitted, and one bad request never disturbs others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

import xyserve
from xyserve.outputs import CompletionOutput, Logprob, RequestOutput
from xyserve.sampling_params import SamplingParams, SamplingParamsError
from xyserve.server.async_engine import (
    AsyncLLM,
    EngineDeadError,
    RequestFailedError,
    RequestStream,
    RequestTimeoutError,
)
from xyserve.server.metrics import ServerMetrics
from xyserve.server.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    InternalErrorMiddleware,
)
from xyserve.server.options import ServerOptions
from xyserve.server.protocol import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    ChatLogprobEntry,
    ChatMessage,
    ChatMessageOut,
    ChatStreamChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    DetokenizeRequest,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.info = (
            status,
            ErrorInfo(message=message, type=type, param=param, code=code),
        )
        self.headers = headers


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=err.info).model_dump(), status_code=err.status, headers=err.headers
    )


def _stream_error(e: BaseException) -> APIError:
    """The error a request's stream raised, as the client should see it."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, RequestTimeoutError):
        return APIError(str(e), 504, "timeout_error", code="request_timeout")
    if isinstance(e, RequestFailedError):
        return APIError(f"the request failed: {e}", 500, "internal_error")
    if isinstance(e, EngineDeadError):
        return APIError(str(e), 503, "internal_error")
    return APIError(f"internal error: {e}", 500, "internal_error")


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
    info = _stream_error(err).info
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


# Roles a request may send (OpenAI's, less the tool roles: tool calling is not implemented).
CHAT_ROLES = ("system", "developer", "user", "assistant")


def _chat_messages(body_messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as the template takes them; APIError naming the first bad message."""
    messages = []
    for i, m in enumerate(body_messages):
        if m.role in ("tool", "function") or m.tool_calls or m.tool_call_id is not None:
            raise APIError("tool calling is not supported", param=f"messages.{i}.role")
        if m.role not in CHAT_ROLES:
            raise APIError(
                f"unknown role {m.role!r}; roles are {', '.join(CHAT_ROLES)}",
                param=f"messages.{i}.role",
            )
        if m.content is None:
            raise APIError("content is required", param=f"messages.{i}.content")
        try:
            text = m.text()
        except ValueError as e:
            raise APIError(str(e), param=f"messages.{i}.content") from None
        msg: dict[str, Any] = {"role": m.role, "content": text}
        if m.name is not None:
            msg["name"] = m.name
        messages.append(msg)
    return messages


def _render_chat(
    tok: Any, messages: list[dict], add_generation_prompt: bool, template: str | None
) -> str:
    if template is None:
        return tok.apply_chat_template(messages, add_generation_prompt)
    return tok.hf.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def create_app(
    llm: AsyncLLM, *, shutdown_engine: bool = True, options: ServerOptions | None = None
) -> FastAPI:
    """An app serving ``llm``; it owns a metrics registry and starts the engine thread."""
    opts = options or ServerOptions()
    metrics = ServerMetrics()
    llm.stats_hook = metrics.on_step
    config = getattr(llm.engine, "config", None)
    max_body = getattr(config, "max_request_body_bytes", 4 << 20)
    max_waiting = getattr(config, "max_waiting_requests", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        llm.start()
        try:
            yield
        finally:
            if shutdown_engine:
                await asyncio.to_thread(llm.shutdown)

    app = FastAPI(title="xyserve", version=xyserve.__version__, lifespan=lifespan)
    app.state.llm = llm
    app.state.metrics = metrics
    model_name = llm.model_name
    # add_middleware puts each outside the previous: CORS, API key, body limit, 500s, routes.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body)
    if opts.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=opts.api_key)
    if opts.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=opts.allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )

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

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(
                f"The model `{name}` does not exist.",
                status=404,
                type="NotFoundError",
                param="model",
                code="model_not_found",
            )

    def check_admission() -> None:
        if max_waiting is not None and llm.num_waiting >= max_waiting:
            raise APIError(
                f"the server is busy ({max_waiting} requests waiting); retry later",
                503,
                "server_busy",
                headers={"Retry-After": "1"},
            )

    async def sampling_params(body: Any, renames: dict[str, str]) -> SamplingParams:
        """The request's SamplingParams, its grammar compiled; a 400 for any refused field."""
        for name in body.refused_fields():
            msg = f"{name} is not supported"
            if name == "best_of":
                msg = "best_of is not supported (as in vLLM V1); use n"
            raise APIError(msg, param=name)
        try:
            params = body.to_sampling_params()
        except SamplingParamsError as e:
            raise APIError(str(e), param=renames.get(e.param, e.param)) from None
        try:
            constraint = body.constraint()
        except ValueError as e:
            raise APIError(str(e), param="response_format") from None
        if constraint is not None:
            field, kind, value = constraint
            try:
                params.structured = await asyncio.to_thread(
                    llm.engine.intake.compile_grammar, kind, value
                )
            except ValueError as e:
                raise APIError(str(e), param=field) from None
        return params

    async def add_all(
        prompts: list[Any], params: SamplingParams, rid: str, add_special_tokens: bool = True
    ) -> list[RequestStream]:
        """Add every prompt's request or none: an add error is the client's 400."""
        check_admission()
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
                raise APIError(str(e), param=getattr(e, "param", None), code=code) from None
            raise
        return streams

    def log_request(rid: str, t0: float, outs: list[Any], user: str | None, error: Any) -> None:
        if opts.disable_log_requests:
            return
        done = [o for o in outs if o is not None]
        n_prompt = sum(len(o.prompt_token_ids) for o in done)
        n_out = sum(len(c.token_ids) for o in done for c in o.outputs)
        reasons = sorted({str(c.finish_reason) for o in done for c in o.outputs})
        log.info(
            "request %s: prompt_tokens=%d completion_tokens=%d time=%.3fs finish=%s%s%s",
            rid,
            n_prompt,
            n_out,
            time.monotonic() - t0,
            ",".join(reasons) or "-",
            f" user={user}" if user else "",
            f" error={error}" if error is not None else "",
        )

    async def collect(raw: Request, streams: list[RequestStream], rid: str, t0: float, user):  # noqa: ANN001, ANN202
        try:
            finals = await _cancel_on_disconnect(raw, _collect(streams))
        except Exception as e:
            err = _stream_error(e)
            log_request(rid, t0, [], user, err.info.message)
            raise err from None
        log_request(rid, t0, finals, user, None)
        return finals

    def card() -> ModelCard:
        root = str(getattr(llm.engine, "model_path", "")) or None
        return ModelCard(id=model_name, root=root, max_model_len=llm.engine.max_model_len)

    def tokenizer() -> Any:
        tok = llm.engine.tokenizer
        if tok is None:
            raise APIError("this server has no tokenizer (skip_tokenizer_init is set)")
        return tok

    async def render_chat(messages: list[ChatMessage], add_generation_prompt: bool) -> str:
        """The prompt text of chat messages (validated first), rendered off the event loop."""
        tok = tokenizer()
        msgs = _chat_messages(messages)
        try:
            return await asyncio.to_thread(
                _render_chat, tok, msgs, add_generation_prompt, opts.chat_template
            )
        except Exception as e:
            raise APIError(f"cannot apply the chat template: {e}", param="messages") from None

    # ---- routes ---------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        if not llm.is_alive:
            raise APIError("the engine is not running", 503, "internal_error")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": xyserve.__version__}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> ModelCard:
        check_model(model_id)
        return card()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        check_model(body.model)
        tokenizer()  # a 400 without one
        if body.messages is not None:
            text = await render_chat(body.messages, body.add_generation_prompt)
            add_special = False if body.add_special_tokens is None else body.add_special_tokens
        elif body.prompt is not None:
            text = body.prompt
            add_special = True if body.add_special_tokens is None else body.add_special_tokens
        else:
            raise APIError("give prompt or messages", param="prompt")
        try:
            ids = await asyncio.to_thread(llm.engine.intake.tokenize, text, add_special)
        except ValueError as e:
            raise APIError(str(e), param="prompt") from None
        return {"count": len(ids), "max_model_len": llm.engine.max_model_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        check_model(body.model)
        tok = tokenizer()
        vocab = llm.engine.model.cfg.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise APIError(f"token ids must be in [0, {vocab})", param="tokens")
        text = await asyncio.to_thread(tok.decode, body.tokens, False)
        return {"prompt": text}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, raw: Request) -> Any:
        t0 = time.monotonic()
        check_model(body.model)
        if body.echo and body.logprobs is not None:
            raise APIError("echo with logprobs (prompt logprobs) is not supported", param="echo")
        params = await sampling_params(body, {})
        prompts = body.prompts()
        if not prompts:
            raise APIError("prompt must not be empty", param="prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        streams = await add_all(prompts, params, rid)
        echo = await asyncio.to_thread(_echo_texts, llm, prompts) if body.echo else None
        if body.stream:
            gen = _completion_stream(
                streams, rid, model_name, params, body.include_usage, echo,
                lambda outs, err: log_request(rid, t0, outs, body.user, err),
            )  # fmt: skip
            return StreamingResponse(gen, media_type="text/event-stream")
        finals = await collect(raw, streams, rid, t0, body.user)
        choices = []
        for i, out in enumerate(finals):
            for c in out.outputs:
                lp = None
                if params.logprobs is not None:
                    lp = _completion_logprobs(c, 0, _ChoiceState())
                choices.append(
                    CompletionChoice(
                        index=i * params.n + c.index,
                        text=(echo[i] if echo else "") + c.text,
                        logprobs=lp,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                    )
                )
        return CompletionResponse(id=rid, model=model_name, choices=choices, usage=_usage(finals))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Any:
        t0 = time.monotonic()
        check_model(body.model)
        renames = {}
        if body.max_completion_tokens is not None:
            renames["max_tokens"] = "max_completion_tokens"
        renames["logprobs"] = "top_logprobs"
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError("top_logprobs needs logprobs: true", param="top_logprobs")
        params = await sampling_params(body, renames)
        prompt = await render_chat(body.messages, body.add_generation_prompt)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        # The template already holds any special tokens (BOS); by default don't add them twice.
        streams = await add_all([prompt], params, rid, add_special_tokens=body.add_special_tokens)
        k = body.top_logprobs or 0
        if body.stream:
            gen = _chat_stream(
                streams[0], rid, model_name, params, k, body.include_usage,
                lambda outs, err: log_request(rid, t0, outs, body.user, err),
            )  # fmt: skip
            return StreamingResponse(gen, media_type="text/event-stream")
        (out,) = await collect(raw, streams, rid, t0, body.user)
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


OnDone = Callable[[list[Any], Any], None]


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
    states = [_ChoiceState() for _ in range(len(streams) * n)]
    finals: list[RequestOutput | None] = [None] * len(streams)
    error = None
    try:
        if echo:
            for i, text in enumerate(echo):
                for j in range(n):
                    choice = CompletionChoice(index=i * n + j, text=text)
                    yield _sse(CompletionStreamResponse(id=rid, model=model, choices=[choice]))
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
        error = _stream_error(e).info.message
        yield _sse_error(e)
    finally:
        for s in streams:
            s.close()
        if on_done is not None:
            on_done(finals, error)
    yield "data: [DONE]\n\n"


async def _chat_stream(
    stream: RequestStream,
    rid: str,
    model: str,
    params: SamplingParams,
    k: int,
    include_usage: bool,
    on_done: OnDone | None = None,
) -> AsyncIterator[str]:
    states = [_ChoiceState() for _ in range(params.n)]
    final: RequestOutput | None = None
    error = None

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
        error = _stream_error(e).info.message
        yield _sse_error(e)
    finally:
        stream.close()
        if on_done is not None:
            on_done([final], error)
    yield "data: [DONE]\n\n"

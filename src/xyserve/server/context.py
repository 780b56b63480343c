"""What the routes of one app share: the engine, the server options, and the steps common to
the generation routes (model check, all-or-nothing adds, request logging)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from xyserve.outputs import RequestOutput
from xyserve.server.async_engine import (
    AsyncLLM,
    EngineBusyError,
    EngineDeadError,
)
from xyserve.server.chat_prompt import chat_messages, render_chat
from xyserve.server.errors import APIError, admission_error, stream_error
from xyserve.server.metrics import ServerMetrics
from xyserve.server.options import ServerOptions
from xyserve.server.protocol import ChatMessage, ModelCard
from xyserve.server.reasoning import PARSERS as REASONING
from xyserve.server.reasoning import ReasoningParser
from xyserve.server.request_stream import RequestStream
from xyserve.server.streams import cancel_on_disconnect, final_outputs
from xyserve.tokenizer import ChatTemplateError, checked_template_kwargs

log = logging.getLogger("xyserve.server")


@dataclass
class ServerContext:
    llm: AsyncLLM
    opts: ServerOptions
    metrics: ServerMetrics

    @property
    def model_name(self) -> str:
        return self.llm.model_name

    @property
    def model_names(self) -> list[str]:
        """Every name the server answers to (``--served-model-name`` takes several, as vLLM's);
        responses carry the first."""
        return list(getattr(self.llm.engine, "served_model_names", None) or [self.model_name])

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.model_names:
            raise APIError(
                f"The model `{name}` does not exist.",
                status=404,
                type="NotFoundError",
                param="model",
                code="model_not_found",
            )

    def card(self, name: str | None = None) -> ModelCard:
        engine = self.llm.engine
        root = str(getattr(engine, "model_path", "")) or None
        return ModelCard(id=name or self.model_name, root=root, max_model_len=engine.max_model_len)

    def cards(self) -> list[ModelCard]:
        """One card per served name, as vLLM's /v1/models lists them."""
        return [self.card(name) for name in self.model_names]

    @property
    def reasoning_parser(self) -> ReasoningParser | None:
        """``--reasoning-parser``'s parser, or None."""
        name = self.opts.reasoning_parser
        return REASONING[name] if name is not None else None

    def tokenizer(self) -> Any:
        tok = self.llm.engine.tokenizer
        if tok is None:
            raise APIError("this server has no tokenizer (skip_tokenizer_init is set)")
        return tok

    async def render_chat(
        self,
        messages: list[ChatMessage],
        add_generation_prompt: bool,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        template_kwargs: dict | None = None,
    ) -> str:
        """The prompt text of chat messages (validated first), rendered off the event loop."""
        tok = self.tokenizer()
        if continue_final_message and add_generation_prompt:
            raise APIError(
                "continue_final_message needs add_generation_prompt: false",
                param="continue_final_message",
            )
        try:
            checked_template_kwargs(template_kwargs)
        except ValueError as e:
            raise APIError(str(e), param="chat_template_kwargs") from None
        msgs = chat_messages(messages)
        template = self.opts.chat_template
        try:
            return await asyncio.to_thread(
                render_chat,
                tok,
                msgs,
                add_generation_prompt,
                template,
                continue_final_message,
                tools,
                template_kwargs,
            )
        except ChatTemplateError as e:  # says so already, in LLM.chat's words
            raise APIError(str(e), param="messages") from None
        except Exception as e:
            raise APIError(f"cannot apply the chat template: {e}", param="messages") from None

    async def add_all(
        self,
        prompts: list[Any],
        params: Any,
        rid: str,
        add_special_tokens: bool = True,
        renames: dict[str, str] | None = None,
        priority: int = 0,
    ) -> list[RequestStream]:
        """Add every prompt's request or none (the engine thread admits them together, under
        the waiting limit): a validation error is the client's 400, the limit a 503.

        ``renames`` maps the engine's name of a field to the request field that set it (chat:
        ``prompt`` is the messages), so that the 400 names what the client sent."""
        rids = [rid] if len(prompts) == 1 else [f"{rid}-{i}" for i in range(len(prompts))]
        try:
            return await self.llm.add_requests(
                prompts, params, rids, add_special_tokens=add_special_tokens, priority=priority
            )
        except ValueError as e:
            raise admission_error(e, renames) from None
        except (EngineBusyError, EngineDeadError) as e:
            raise stream_error(e) from None

    def log_request(
        self, rid: str, t0: float, outs: list[Any], user: str | None, error: Any
    ) -> None:
        """One log line per request (unless ``--disable-log-requests``)."""
        if self.opts.disable_log_requests:
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
            f" user={_loggable(user)}" if user else "",
            f" error={error}" if error is not None else "",
        )

    async def collect(
        self, raw: Request, streams: list[RequestStream], rid: str, t0: float, user: str | None
    ) -> list[RequestOutput]:
        """The final outputs of a non-streaming response, logged; its error as an APIError."""
        try:
            finals = await cancel_on_disconnect(raw, final_outputs(streams))
        except Exception as e:
            err = stream_error(e)
            self.log_request(rid, t0, [], user, err.info.message)
            raise err from None
        self.log_request(rid, t0, finals, user, None)
        return finals


def _loggable(text: str) -> str:
    """Client text for a log line, its line breaks and other unprintable characters escaped
    (as ``repr`` writes them): a ``user`` of ``"x\nrequest ..."`` must not forge a line."""
    return repr(text)[1:-1]


async def server_context(request: Request) -> ServerContext:
    """The app's ServerContext, as a route dependency (async: no thread-pool hop)."""
    return request.app.state.ctx


Ctx = Annotated[ServerContext, Depends(server_context)]

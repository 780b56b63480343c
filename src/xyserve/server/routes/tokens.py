"""vLLM's /tokenize and /detokenize."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from xyserve.server.context import Ctx
from xyserve.server.errors import APIError
from xyserve.server.protocol import DetokenizeRequest, TokenizeRequest

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, ctx: Ctx) -> dict[str, Any]:
    ctx.check_model(body.model)
    ctx.tokenizer()  # a 400 without one
    if body.messages is not None and body.prompt is not None:
        raise APIError("give prompt or messages, not both", param="prompt")
    for name in ("add_generation_prompt", "continue_final_message", "chat_template_kwargs"):
        if body.messages is None and name in body.model_fields_set:
            raise APIError(f"{name} applies to messages only", param=name)
    if body.messages is not None:
        text = await ctx.render_chat(
            body.messages,
            body.add_generation_prompt,
            body.continue_final_message,
            template_kwargs=body.chat_template_kwargs,
        )
        add_special = False if body.add_special_tokens is None else body.add_special_tokens
    elif body.prompt is not None:
        text = body.prompt
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
    else:
        raise APIError("give prompt or messages", param="prompt")
    engine = ctx.llm.engine
    try:
        ids = await asyncio.to_thread(engine.intake.tokenize, text, add_special)
    except ValueError as e:
        raise APIError(str(e), param="prompt") from None
    return {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, ctx: Ctx) -> dict[str, Any]:
    ctx.check_model(body.model)
    tok = ctx.tokenizer()
    vocab = ctx.llm.engine.model.cfg.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise APIError(f"token ids must be in [0, {vocab})", param="tokens")
    text = await asyncio.to_thread(tok.decode, body.tokens, False)
    return {"prompt": text}

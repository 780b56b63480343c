"""A request's body as SamplingParams: every field honoured or refused with a 400 naming it."""

from __future__ import annotations

import asyncio

from xyserve.sampling_params import SamplingParams, SamplingParamsError
from xyserve.server.async_engine import AsyncLLM
from xyserve.server.errors import APIError, field_error
from xyserve.server.protocol import BACKENDS, ChatCompletionRequest, CompletionRequest


async def sampling_params(
    llm: AsyncLLM, body: CompletionRequest | ChatCompletionRequest, renames: dict[str, str]
) -> SamplingParams:
    """The request's SamplingParams, its grammar compiled (off the event loop).

    ``renames`` maps a SamplingParams name to the request field that set it, so that the 400
    names the field the client sent (``max_completion_tokens`` for ``max_tokens``, say).
    """
    for name in body.refused_fields():
        msg = f"{name} is not supported"
        if name == "best_of":
            msg = "best_of is not supported (as in vLLM V1); use n"
        raise APIError(msg, param=name)
    if body.stream_options is not None and not body.stream:
        raise APIError("stream_options is only allowed with stream: true", param="stream_options")
    if body.stream_options is not None and not body.include_usage:
        if body.stream_options.continuous_usage_stats:
            msg = "stream_options.continuous_usage_stats needs include_usage: true"
            raise APIError(msg, param="stream_options")
    backend = body.guided_decoding_backend
    if backend is not None and backend not in BACKENDS:
        msg = (
            f"guided_decoding_backend {backend!r} is not available: structured outputs use "
            f"llguidance ({' or '.join(repr(b) for b in BACKENDS)})"
        )
        raise APIError(msg, param="guided_decoding_backend")
    wants_logprobs = body.logprobs is not None and body.logprobs is not False
    if body.return_tokens_as_token_ids and not wants_logprobs:
        msg = "return_tokens_as_token_ids names the tokens of logprobs: it needs logprobs"
        raise APIError(msg, param="return_tokens_as_token_ids")
    try:
        defaults = getattr(llm.engine, "default_sampling_params", None)
        params = body.to_sampling_params(defaults)
    except SamplingParamsError as e:
        raise field_error(e, renames) from None
    try:
        constraint = body.constraint()
    except ValueError as e:
        raise APIError(str(e), param=getattr(e, "param", "response_format")) from None
    if constraint is not None:
        field, kind, value = constraint
        try:
            params.structured = await asyncio.to_thread(
                llm.engine.intake.compile_grammar, kind, value
            )
        except ValueError as e:
            raise APIError(str(e), param=field) from None
    return params

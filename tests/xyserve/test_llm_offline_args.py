"""The offline API's arguments as a vLLM user passes them: each is honoured or refused by
name before anything runs, never accepted and ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from xyserve import LLM


@pytest.fixture(scope="module")
def llm(tiny_llama: Path) -> LLM:
    return LLM(str(tiny_llama), max_num_batched_tokens=64, cpu_fused_decode="off")


@pytest.mark.parametrize(
    "arg,value",
    [("request_timeout_s", 1.0), ("max_waiting_requests", 1), ("max_request_body_bytes", 10)],
)
def test_llm_refuses_engine_args_only_the_server_applies(tiny_llama, arg, value):
    """These request limits are applied by the HTTP server alone (its admission, body size and
    timeout): ``LLM(..., request_timeout_s=1.0)`` was accepted and no request ever timed out."""
    with pytest.raises(TypeError, match=arg):
        LLM(str(tiny_llama), cpu_fused_decode="off", **{arg: value})

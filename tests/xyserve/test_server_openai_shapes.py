"""Request and response shapes where OpenAI clients expect what OpenAI and vLLM do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server

from xyserve.config import EngineConfig

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name=MODEL,
        max_model_len=512,
        max_num_seqs=16,
        max_num_batched_tokens=256,
        device="cpu",
    )
    with run_server(config) as srv:
        yield srv


def _post(server: Server, path: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=payload, timeout=60)


def test_text_parts_are_joined_by_newlines_as_in_vllm(server: Server) -> None:
    """vLLM renders a message whose content is a list of text parts as the parts joined by
    "\\n"; joined by nothing, two words would run together and the prompt would differ."""
    parts = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello"}]
    as_parts = _post(server, "/tokenize", {"messages": [{"role": "user", "content": parts}]})
    as_text = _post(server, "/tokenize", {"messages": [{"role": "user", "content": "Say\nhello"}]})
    assert as_parts.status_code == as_text.status_code == 200
    assert as_parts.json()["tokens"] == as_text.json()["tokens"]
    r = _post(
        server,
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 1},
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == as_text.json()["count"]


def test_a_text_part_without_text_is_refused(server: Server) -> None:
    """OpenAI's text part requires ``text``: one without it is a 400, not an empty string."""
    msg = {"role": "user", "content": [{"type": "text"}]}
    r = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": [msg]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith("messages.0.content")
    assert "messages.0.content.0.text: Field required" in err["message"]

"""The server with speculation on: a verify step's several tokens stream in order."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import uvicorn
from server_harness import metric

from xyserve import LLM, SamplingParams
from xyserve.config import EngineConfig
from xyserve.server.app import create_app
from xyserve.server.async_engine import AsyncLLM


@contextmanager
def _serving(config: EngineConfig):
    llm = AsyncLLM.from_config(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(create_app(llm), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t_end = time.monotonic() + 30
    while not srv.started and time.monotonic() < t_end:
        time.sleep(0.02)
    try:
        yield llm, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()


def test_speculative_run_streams_in_order_and_is_counted(tiny_llama: Path) -> None:
    # The target as its own draft: nearly every proposal is accepted, so steps emit 4 tokens.
    spec = {"method": "draft_model", "num_speculative_tokens": 3, "model": str(tiny_llama)}
    prompt = "Hello world! Serving"
    plain = LLM(str(tiny_llama), disable_progress_bar=True)
    want = plain.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    config = EngineConfig(model=str(tiny_llama), served_model_name="t", speculative_config=spec)
    with _serving(config) as (llm, url):
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        kw = dict(model="t", prompt=prompt, max_tokens=20, temperature=0.0)
        chunks = list(client.completions.create(stream=True, extra_body={"ignore_eos": True}, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == want[0].outputs[0].text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        stats = llm.engine.spec.stats
        assert stats.num_accepted_tokens >= 10 and stats.num_drafts < 20
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        for name, labels, value in (
            ("xyserve:spec_decode_num_drafts_total", {}, stats.num_drafts),
            ("xyserve:spec_decode_num_draft_tokens_total", {}, stats.num_draft_tokens),
            ("xyserve:spec_decode_num_accepted_tokens_total", {}, stats.num_accepted_tokens),
            (
                "xyserve:spec_decode_num_accepted_tokens_per_pos_total",
                {"position": "0"},
                stats.accepted_per_pos[0],
            ),
        ):
            assert metric(metrics, name, model_name="t", engine="0", **labels) == value

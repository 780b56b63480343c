"""A real xyserve server on a loopback port, in a thread, for the server tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import openai
import uvicorn

from xyserve.config import EngineConfig
from xyserve.server.app import create_app
from xyserve.server.async_engine import AsyncLLM
from xyserve.server.options import ServerOptions
from xyserve.tokenizer import Tokenizer


@dataclass
class Server:
    url: str
    llm: AsyncLLM
    tokenizer: Tokenizer

    @property
    def engine(self):  # noqa: ANN201 - LLMEngine, imported lazily by AsyncLLM
        return self.llm.engine

    def client(self, api_key: str = "x") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Until no request runs, waits or holds KV blocks (the engine thread frees them)."""
        deadline = time.monotonic() + timeout
        eng = self.engine
        while time.monotonic() < deadline:
            if (
                eng.num_running == 0
                and eng.num_waiting == 0
                and not eng.kv.req_blocks
                and not eng.groups
            ):
                return
            time.sleep(0.02)
        raise AssertionError(
            f"engine not idle: running={eng.num_running} waiting={eng.num_waiting} "
            f"holding={list(eng.kv.req_blocks)} groups={list(eng.groups)}"
        )

    @contextmanager
    def slow_steps(self, seconds: float = 0.005) -> Iterator[None]:
        """Every engine step takes ``seconds`` longer, so a test that must catch a request
        still running (a timeout, a disconnect) does not depend on how fast the model runs."""
        eng = self.engine
        step = eng.step

        def slow():  # noqa: ANN202 - what LLMEngine.step returns
            time.sleep(seconds)
            return step()

        eng.step = slow
        try:
            yield
        finally:
            del eng.step  # the class's method again

    def assert_clean(self) -> None:
        """Nothing left behind: no request, sequence or K/V block."""
        self.wait_idle()
        self.engine.kv.check_no_leak()
        assert not self.engine.scheduler.requests and not self.engine._child_to_group


@contextmanager
def run_server(config: EngineConfig, options: ServerOptions | None = None) -> Iterator[Server]:
    llm = AsyncLLM.from_config(config)
    app = create_app(llm, options=options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", llm, Tokenizer(config.model))
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive()
    assert not llm.is_alive  # the lifespan stopped the engine thread


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` as /metrics exposes it (``..._total``, ``..._count``) whose
    labels include ``labels``: the sum when several series match; asserts one does."""
    from prometheus_client.parser import text_string_to_metric_families

    found = [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert found, (name, labels)
    return sum(found)


def sse_events(url: str, payload: dict, timeout: float = 60) -> list[dict]:
    """The JSON events of ``payload`` POSTed to ``url`` with ``stream`` on, without the final
    ``data: [DONE]``; a status other than 200 fails the test."""
    with httpx.stream("POST", url, json={**payload, "stream": True}, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        return [json.loads(x[6:]) for x in resp.iter_lines() if x.startswith("data: {")]

"""When the engine thread dies (an exception escapes its step loop), nothing waits forever:
every request running, waiting or still in the inbox is answered with an error, ``/health``
reports 503 and new requests get a 503 at once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_harness import run_server

from xyserve.config import EngineConfig

LONG = {"prompt": "Hello", "max_tokens": 400, "ignore_eos": True}
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 400, "ignore_eos": True}


def _wait_for(cond, what: str, timeout: float = 30) -> None:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


class _BadOutputs:
    """A step result the loop cannot read: the failure escapes the loop itself, not the step."""

    def __bool__(self) -> bool:
        return True

    def __iter__(self):  # noqa: ANN204
        raise RuntimeError("injected bad step output")


@pytest.mark.parametrize("failure", ["step raises", "loop fails"])
def test_a_dead_engine_answers_every_request_and_reports_unhealthy(
    tiny_llama: Path, failure: str
) -> None:
    config = EngineConfig(model=str(tiny_llama), device="cpu", max_num_seqs=2)
    with run_server(config) as srv:
        eng = srv.engine
        real_step = eng.step
        armed, held, release = threading.Event(), threading.Event(), threading.Event()

        def failing_step():  # noqa: ANN202 - the engine's step, made to fail once armed
            if armed.is_set():
                held.set()
                release.wait(30)
                if failure == "step raises":
                    raise RuntimeError("injected step failure")
                return _BadOutputs()
            return real_step()

        eng.step = failing_step

        async def main() -> tuple[list, list, httpx.Response, list]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:

                async def stream(path: str, payload: dict) -> tuple[int, list[str]]:
                    body = {**payload, "stream": True}
                    async with client.stream("POST", path, json=body) as r:
                        return r.status_code, [x async for x in r.aiter_lines() if x]

                def start(path: str, payload: dict, streaming: bool) -> asyncio.Task:
                    if streaming:
                        return asyncio.create_task(stream(path, payload))
                    return asyncio.create_task(client.post(path, json=payload))

                kinds = [("/v1/completions", LONG), ("/v1/chat/completions", CHAT)]
                # Two run (max_num_seqs=2) and two wait, streaming and not.
                first = [start(p, b, s) for p, b in kinds for s in (True, False)]
                await asyncio.to_thread(
                    _wait_for,
                    lambda: eng.num_running == 2 and eng.num_waiting == 2,
                    "the four requests were not admitted",
                )
                armed.set()
                assert await asyncio.to_thread(held.wait, 30)  # the engine is in the bad step
                # Two more land in the inbox while the step runs.
                inbox = [start("/v1/completions", LONG, s) for s in (True, False)]
                await asyncio.to_thread(
                    _wait_for, lambda: len(srv.llm._inbox) == 2, "the adds did not reach the inbox"
                )
                release.set()
                done = await asyncio.wait_for(asyncio.gather(*first, *inbox), 60)
                health = await client.get("/health", timeout=10)
                after = [
                    await client.post(
                        "/v1/completions", json={**LONG, "max_tokens": 2}, timeout=10
                    ),
                    await client.post("/v1/chat/completions", json=CHAT, timeout=10),
                    await stream("/v1/completions", LONG),
                ]
                return done[:4], done[4:], health, after

        try:
            first, inbox, health, after = asyncio.run(main())
        finally:
            release.set()

    assert health.status_code == 503
    for res in first + inbox:
        if isinstance(res, tuple):  # a stream
            status, lines = res
            if status == 200:  # it had started: an error event, then [DONE]
                assert lines[-1] == "data: [DONE]"
                err = json.loads(lines[-2].removeprefix("data: "))["error"]
                assert err["type"] == "internal_error"
                assert "engine failed" in err["message"] and "injected" in err["message"], err
                continue
            err = json.loads(lines[0])["error"]
        else:
            status, err = res.status_code, res.json()["error"]
        assert status == 500, (status, err)
        assert "engine failed" in err["message"] and "injected" in err["message"], err
    for res in after:
        status, err = (
            (res[0], json.loads(res[1][0])["error"])
            if isinstance(res, tuple)
            else (res.status_code, res.json()["error"])
        )
        assert status == 503, (status, err)
        assert "engine" in err["message"]

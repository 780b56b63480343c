"""``--max-waiting-requests`` counts one unit: sequences (prompts x ``n``) waiting in the engine,
checked where the engine thread admits them. A request that can never fit is a 400 naming its
field; one that does not fit now is a 503 with Retry-After; two concurrent requests cannot both
pass when only one fits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server

from xyserve.config import EngineConfig

LIMIT = 2
CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama), device="cpu", max_num_seqs=1, max_waiting_requests=LIMIT
    )
    with run_server(config) as srv:
        yield srv


@pytest.mark.parametrize(
    "path, payload, param",
    [
        ("/v1/completions", {"prompt": "Hello", "n": LIMIT + 1}, "n"),
        ("/v1/completions", {"prompt": ["a", "b"], "n": LIMIT}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b", "c"]}, "prompt"),
        ("/v1/completions", {"prompt": [[5, 6], [7, 8], [9]], "stream": True}, "prompt"),
        ("/v1/chat/completions", {"messages": CHAT, "n": LIMIT + 1}, "n"),
    ],
)
def test_a_request_that_can_never_fit_is_a_400(
    server: Server, path: str, payload: dict, param: str
) -> None:
    r = httpx.post(f"{server.url}{path}", json={**payload, "max_tokens": 2}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert f"at most {LIMIT}" in err["message"] and "--max-waiting-requests" in err["message"]
    server.assert_clean()  # nothing of it was admitted


def test_a_request_of_exactly_the_limit_is_served(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 2}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == LIMIT
    server.assert_clean()


def test_two_concurrent_requests_cannot_both_pass_when_only_one_fits(server: Server) -> None:
    """Each of two requests of ``n=2`` fits alone, but not both: one is served, the other gets a
    503, whatever the order in which they arrive (the early check refuses the second if the
    first is already on its way; the engine thread's check, if both passed it at once)."""
    real_step = server.engine.step
    gate, held = threading.Event(), threading.Event()
    calls = 0

    def gated_step():  # noqa: ANN202 - the engine's step; from the second on, held at the gate
        nonlocal calls
        calls += 1
        if calls > 1:  # the long request ran its first step: it is running
            held.set()
            gate.wait(30)
        return real_step()

    server.engine.step = gated_step
    long = {"prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "stream": True}
    fanout = {"prompt": "Hello", "max_tokens": 2, "n": 2}

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            async with client.stream("POST", "/v1/completions", json=long):
                # It holds the only running slot while the engine thread is held.
                assert await asyncio.to_thread(held.wait, 30)
                both = [
                    asyncio.create_task(client.post("/v1/completions", json=fanout))
                    for _ in range(2)
                ]
                deadline = time.monotonic() + 30
                while len(server.llm._inbox) + sum(t.done() for t in both) < 2:
                    assert time.monotonic() < deadline, "the adds never reached the inbox"
                    await asyncio.sleep(0.005)
                gate.set()
            # The long stream is closed (aborted): the admitted request runs next.
            return list(await asyncio.wait_for(asyncio.gather(*both), 60))

    try:
        responses = asyncio.run(main())
    finally:
        gate.set()
        del server.engine.step  # the class's step again
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 503], [r.text for r in responses]
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    err = busy.json()["error"]
    assert err["type"] == "server_busy" and "sequences" in err["message"]
    server.assert_clean()

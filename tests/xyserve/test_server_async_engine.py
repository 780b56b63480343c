"""AsyncLLM's engine thread: what one request's client does cannot stop it for the others."""

from __future__ import annotations

import asyncio
import threading
import time

from xyserve.outputs import CompletionOutput, RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.server.async_engine import AsyncLLM, _Add


class OneStepEngine:
    """A stand-in engine: every request finishes with one token at the next step."""

    config = None
    num_waiting = 0

    def __init__(self) -> None:
        self.running: list[str] = []
        self.aborted: list[str] = []

    def add_request(self, prompt, params, request_id, **_) -> None:  # noqa: ANN001
        self.running.append(request_id)

    def abort_request(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        if request_id in self.running:
            self.running.remove(request_id)
            return True
        return False

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> list[RequestOutput]:
        done, self.running = self.running, []
        out = CompletionOutput(0, "x", [7], None, None, finish_reason="length")
        return [RequestOutput(rid, None, [1], [out], finished=True) for rid in done]


def test_an_add_whose_event_loop_closed_does_not_stop_the_engine() -> None:
    """A client's loop can close while its add waits in the inbox (asyncio.run around a
    cancelled generate, say): the engine thread drops that request and serves the next."""
    engine = OneStepEngine()
    llm = AsyncLLM(engine)
    llm._prepare = lambda prompt, params, add_special: {"prompt_token_ids": prompt}
    llm.start()
    try:
        gone = asyncio.new_event_loop()
        fut = gone.create_future()
        gone.close()
        queue: asyncio.Queue = asyncio.Queue()
        llm._post("add", _Add("orphan", [1], SamplingParams(), True, gone, queue, fut))

        async def one() -> list[RequestOutput]:
            return [out async for out in llm.generate([1, 2], SamplingParams(), "next")]

        outs = asyncio.run(asyncio.wait_for(one(), 10))
        assert outs[-1].finished and outs[-1].request_id == "next"
        assert llm.is_alive and llm.dead_error is None
        assert "orphan" in engine.aborted  # nobody listens to it: aborted, not run
    finally:
        llm.shutdown()


class ManyStepEngine(OneStepEngine):
    """A stand-in engine: a request grows by one token a step for ``steps`` steps; each output
    is cumulative (a fresh list of every token so far), as the real engine's are."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.tokens: dict[str, list[int]] = {}

    def add_request(self, prompt, params, request_id, **_) -> None:  # noqa: ANN001
        super().add_request(prompt, params, request_id)
        self.tokens[request_id] = []

    def step(self) -> list[RequestOutput]:
        outs = []
        for rid in list(self.running):
            ids = self.tokens[rid]
            ids.append(len(ids))
            done = len(ids) == self.steps
            c = CompletionOutput(0, "", list(ids), None, None, "length" if done else None)
            outs.append(RequestOutput(rid, None, [1], [c], finished=done))
            if done:
                self.running.remove(rid)
        return outs


def test_a_client_that_stops_reading_holds_one_output_not_every_steps() -> None:
    """Outputs are cumulative: queued ones the client has not read are replaced by the newest,
    so a stalled stream's memory stays at one output instead of growing with the square of its
    length."""
    engine = ManyStepEngine(steps=40)
    llm = AsyncLLM(engine)
    llm._prepare = lambda prompt, params, add_special: {"prompt_token_ids": prompt}
    llm.start()

    async def stalled() -> tuple[int, RequestOutput]:
        stream = await llm.add_request([1], SamplingParams(), "slow")
        while engine.has_unfinished_requests() or not stream._queue.qsize():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last delivery callback runs
        held = stream._queue.qsize()
        return held, await stream.__anext__()

    try:
        held, out = asyncio.run(asyncio.wait_for(stalled(), 10))
    finally:
        llm.shutdown()
    assert out.finished and out.outputs[0].token_ids == list(range(40))
    assert held == 1


def test_a_request_whose_event_loop_closed_is_aborted_not_run_for_nobody() -> None:
    engine = ManyStepEngine(steps=1000)
    gate, real_step = threading.Event(), engine.step
    engine.step = lambda: gate.wait(10) and real_step()
    llm = AsyncLLM(engine)
    llm._prepare = lambda prompt, params, add_special: {"prompt_token_ids": prompt}
    llm.start()
    try:
        asyncio.run(llm.add_request([1], SamplingParams(), "left"))  # its loop closes unread
        gate.set()
        deadline = time.monotonic() + 10
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "left" in engine.aborted and len(engine.tokens["left"]) < 1000
        assert llm.is_alive
    finally:
        gate.set()
        llm.shutdown()

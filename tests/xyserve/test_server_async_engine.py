"""AsyncLLM's engine thread: what one request's client does cannot stop it for the others."""

from __future__ import annotations

import asyncio

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

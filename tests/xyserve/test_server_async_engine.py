"""AsyncLLM's engine thread: what one request's client does cannot stop it for the others, adds
are all or nothing, and a thread that dies answers every request."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from xyserve.outputs import CompletionOutput, RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.server.async_engine import (
    AsyncLLM,
    EngineBusyError,
    EngineDeadError,
    EngineFailedError,
    _Add,
)


class OneStepEngine:
    """A stand-in engine: every request finishes with one token at the next step."""

    config = None
    num_waiting = 0

    def __init__(self) -> None:
        self.running: list[str] = []
        self.aborted: list[str] = []
        self.withdrawn: list[str] = []

    def add_request(self, prompt, params, request_id, **_) -> None:  # noqa: ANN001
        self.running.append(request_id)

    def abort_request(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        if request_id in self.running:
            self.running.remove(request_id)
            return True
        return False

    def withdraw_request(self, request_id: str) -> None:
        self.withdrawn.append(request_id)
        self.running.remove(request_id)

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
        add = _Add(
            ["orphan"], [[1]], SamplingParams(), True, 0, gone, [queue], fut, time.monotonic()
        )
        llm._post("add", add)

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


def test_an_add_posted_after_the_engine_died_is_refused_not_left_waiting() -> None:
    """The thread can die between an add's liveness check and its post to the inbox (the add
    tokenizes in between): that add must still be answered, with EngineDeadError."""
    engine = OneStepEngine()

    def broken_step() -> list[RequestOutput]:
        raise RuntimeError("injected step failure")

    engine.step = broken_step
    llm = AsyncLLM(engine)
    hold = threading.Event()

    def prepare(prompt, params, add_special):  # noqa: ANN001, ANN202
        if prompt == [2]:
            hold.wait(10)  # the late add: checked, not yet posted
        return {"prompt_token_ids": prompt}

    llm._prepare = prepare

    async def main() -> None:
        late = asyncio.create_task(llm.add_request([2], SamplingParams(), "late"))
        await asyncio.sleep(0.05)  # it passed the check and is tokenizing
        victim = await llm.add_request([1], SamplingParams(), "victim")
        with pytest.raises(EngineFailedError, match="injected step failure"):
            await asyncio.wait_for(victim.__anext__(), 10)
        await asyncio.to_thread(llm._thread.join, 10)
        assert not llm.is_alive and isinstance(llm.dead_error, RuntimeError)
        hold.set()
        with pytest.raises(EngineDeadError) as late_error:
            await asyncio.wait_for(late, 10)
        assert not isinstance(late_error.value, EngineFailedError)  # it was never in flight
        with pytest.raises(EngineDeadError):  # and at once from now on
            await asyncio.wait_for(llm.add_request([3], SamplingParams(), "new"), 1)

    try:
        asyncio.run(main())
    finally:
        hold.set()
        llm.shutdown()


class FailingAddEngine(OneStepEngine):
    """A stand-in engine whose add refuses the request named ``bad``."""

    def add_request(self, prompt, params, request_id, **_) -> None:  # noqa: ANN001
        if request_id == "bad":
            raise ValueError("refused")
        super().add_request(prompt, params, request_id)


def test_a_multi_prompt_add_is_all_or_nothing() -> None:
    engine = FailingAddEngine()
    gate, real_step = threading.Event(), engine.step
    engine.step = lambda: gate.wait(10) and real_step()
    llm = AsyncLLM(engine)
    llm._prepare = lambda prompt, params, add_special: {"prompt_token_ids": prompt}

    async def main() -> None:
        with pytest.raises(ValueError, match="refused"):
            await llm.add_requests([[1], [2], [3]], SamplingParams(), ["a", "bad", "c"])

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
        # "a" was taken back (not an abort: it never ran), "c" never came in
        assert engine.withdrawn == ["a"] and not engine.aborted and not engine.running
    finally:
        gate.set()
        llm.shutdown()


class WaitingEngine(OneStepEngine):
    """A stand-in engine whose requests all stay waiting (its steps schedule nothing)."""

    @property
    def num_waiting(self) -> int:
        return len(self.running)

    def step(self) -> list[RequestOutput]:
        return []


def test_the_waiting_limit_is_checked_where_the_engine_thread_admits() -> None:
    """Two adds that each fit alone pass the early check together (both tokenize at once),
    then reach the engine thread: it admits one and refuses the other, all of its prompts."""
    engine = WaitingEngine()
    llm = AsyncLLM(engine)
    llm.max_waiting = 2
    both_checked = threading.Barrier(2, timeout=10)

    def prepare(prompt, params, add_special):  # noqa: ANN001, ANN202
        if prompt == [1]:
            both_checked.wait()  # the first prompt of each add: both passed the early check
        return {"prompt_token_ids": prompt}

    llm._prepare = prepare

    async def main() -> list:
        return await asyncio.gather(
            llm.add_requests([[1], [2]], SamplingParams(), ["a0", "a1"]),
            llm.add_requests([[1], [2]], SamplingParams(), ["b0", "b1"]),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(asyncio.wait_for(main(), 10))
        busy = [r for r in results if isinstance(r, EngineBusyError)]
        assert len(busy) == 1 and "2 sequences wait" in str(busy[0]), results
        assert sorted(engine.running) in (["a0", "a1"], ["b0", "b1"])
        with pytest.raises(EngineBusyError):  # now the early check refuses at once
            asyncio.run(llm.add_request([3], SamplingParams(), "c"))
        with pytest.raises(ValueError, match="can never be admitted") as never:
            asyncio.run(llm.add_request([3], SamplingParams(n=3), "d"))
        assert never.value.param == "n"
    finally:
        llm.shutdown()


def test_adds_failed_at_shutdown_do_not_count_as_waiting_after_a_restart() -> None:
    """An add that lands in the inbox as the thread shuts down is refused; it must not go on
    counting against the waiting limit once the engine is started again."""
    llm = AsyncLLM(OneStepEngine())
    llm.max_waiting = 1
    hold = threading.Event()

    def prepare(prompt, params, add_special):  # noqa: ANN001, ANN202
        if prompt == [1]:
            hold.wait(10)  # checked and started, not yet posted
        return {"prompt_token_ids": prompt}

    llm._prepare = prepare

    async def main() -> list[int]:
        late = asyncio.create_task(llm.add_request([1], SamplingParams(), "late"))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(llm.shutdown)
        hold.set()
        with pytest.raises(EngineDeadError, match="shutting down"):
            await asyncio.wait_for(late, 10)
        assert llm.num_waiting == 0
        stream = await asyncio.wait_for(llm.add_request([2], SamplingParams(), "next"), 10)
        return [out.outputs[0].token_ids async for out in stream]

    try:
        assert asyncio.run(asyncio.wait_for(main(), 20)) == [[7]]
    finally:
        hold.set()
        llm.shutdown()


class ArrivalEngine(OneStepEngine):
    """A stand-in engine that records each request's ``arrival_time``."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, float] = {}

    def add_request(self, prompt, params, request_id, arrival_time=None, **_) -> None:  # noqa: ANN001
        self.arrivals[request_id] = arrival_time
        super().add_request(prompt, params, request_id)


def test_a_requests_arrival_is_when_it_came_not_when_the_engine_thread_took_it() -> None:
    """A request that came while the engine thread ran a step got its arrival time when the
    thread took it from the inbox, after the step: its time to first token and e2e latency
    left out the wait (a 0.9 s first token read 0.5 s on /metrics)."""
    engine = ArrivalEngine()
    in_step, gate, real_step = threading.Event(), threading.Event(), engine.step

    def step() -> list[RequestOutput]:
        in_step.set()
        gate.wait(10)
        return real_step()

    engine.step = step
    llm = AsyncLLM(engine)
    llm._prepare = lambda prompt, params, add_special: {"prompt_token_ids": prompt}

    async def main() -> float:
        await llm.add_request([1], SamplingParams(), "a")
        assert await asyncio.to_thread(in_step.wait, 10)  # the engine thread is in a step
        b = asyncio.ensure_future(llm.add_request([2], SamplingParams(), "b"))
        await asyncio.sleep(0.2)
        released = time.monotonic()
        gate.set()
        await b
        return released

    try:
        released = asyncio.run(asyncio.wait_for(main(), 10))
        assert engine.arrivals["b"] < released - 0.1
    finally:
        gate.set()
        llm.shutdown()

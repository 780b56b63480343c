"""AsyncLLM: the synchronous LLMEngine driven by one background thread, fed from asyncio.

The engine is not thread-safe, so exactly one thread (the engine thread) touches it: it drains
a thread-safe inbox of add/abort commands, runs ``step()`` and hands each request's cumulative
output to that request's asyncio queue with ``loop.call_soon_threadsafe``. Torch releases the
GIL inside the forward pass, so the event loop keeps serving HTTP while a step runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from xyserve.config import EngineConfig
from xyserve.outputs import RequestOutput
from xyserve.sampling_params import SamplingParams

log = logging.getLogger("xyserve.server")

Prompt = str | list[int] | dict


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served."""


class RequestFailedError(RuntimeError):
    """The engine failed this request inside a step (the others went on)."""


class RequestTimeoutError(RuntimeError):
    """The request ran past its time limit and was aborted."""


@dataclass
class _Add:
    request_id: str
    prompt: Prompt
    params: SamplingParams
    add_special_tokens: bool
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    future: asyncio.Future


@dataclass
class _Sink:
    """Where the engine thread delivers one request's outputs (engine-thread owned)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    first_token_seen: bool = False  # its time to first token was reported


@dataclass
class StepReport:
    """What one engine step did, for the stats hook."""

    outputs: list[RequestOutput] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # ids of the requests it finished
    # Time to first token of each request whose first token this step delivered: reported
    # once per request, here, because a later output (one failing the request, say) can carry
    # the same first and last token times as the step that made the first token.
    ttfts: list[float] = field(default_factory=list)


class RequestStream:
    """Async iterator over one request's cumulative outputs; closing it early aborts it.

    Outputs are cumulative, so when the consumer lags, only the newest is kept and returned.
    """

    def __init__(
        self,
        request_id: str,
        queue: asyncio.Queue,
        llm: AsyncLLM,
        deadline: float | None = None,
    ) -> None:
        self.request_id = request_id
        self._queue = queue
        self._llm = llm
        self._deadline = deadline  # loop.time() past which the request is aborted
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        if self._deadline is None:
            item = await self._queue.get()
        else:
            left = self._deadline - asyncio.get_running_loop().time()
            try:
                item = await asyncio.wait_for(self._queue.get(), max(left, 0.0))
            except asyncio.TimeoutError:
                self.close()
                raise RequestTimeoutError("the request ran past its time limit") from None
        while not isinstance(item, BaseException) and not self._queue.empty():
            item = self._queue.get_nowait()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def close(self) -> None:
        """Abort the request in the engine unless it already finished. Idempotent, sync."""
        if not self.finished:
            self.finished = True
            self._llm.abort(self.request_id)


StatsHook = Callable[[Any, StepReport], None]


class AsyncLLM:
    """An ``LLMEngine`` in a background thread, with an asyncio-facing ``generate``."""

    def __init__(self, engine: Any, stats_hook: StatsHook | None = None) -> None:
        self.engine = engine
        self.stats_hook = stats_hook
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._sinks: dict[str, _Sink] = {}  # touched by the engine thread only
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dead_error: BaseException | None = None
        # Adds posted (written by the event loop only) and taken by the engine thread (written
        # by it only): each counter has one writer, so their difference needs no lock.
        self._adds_posted = 0
        self._adds_taken = 0
        self.request_timeout_s: float | None = getattr(
            getattr(engine, "config", None), "request_timeout_s", None
        )

    @property
    def num_waiting(self) -> int:
        """Requests queued (in the engine or on their way to it); read without a lock."""
        return self.engine.num_waiting + max(0, self._adds_posted - self._adds_taken)

    @classmethod
    def from_config(cls, config: EngineConfig, stats_hook: StatsHook | None = None) -> AsyncLLM:
        from xyserve.engine.engine import LLMEngine

        return cls(LLMEngine(config), stats_hook)

    # ---- lifecycle --------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_error is None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(
                    target=self._run, name="xyserve-engine", daemon=True
                )
                self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop = True
        self._wake.set()
        thread.join(timeout)

    # ---- the asyncio side -------------------------------------------------------------
    async def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        *,
        add_special_tokens: bool = True,
    ) -> RequestStream:
        """Add a request; returns once the engine accepted it, or raises its add error.

        Text is tokenized and the request validated here, in a worker thread, so a big prompt
        never stalls the engine loop and a bad request never reaches the engine.
        """
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.dead_error}")
        self.start()
        loop = asyncio.get_running_loop()
        rid = request_id or uuid.uuid4().hex
        prompt = await asyncio.to_thread(self._prepare, prompt, params, add_special_tokens)
        queue: asyncio.Queue = asyncio.Queue()
        fut = loop.create_future()
        self._adds_posted += 1
        self._post("add", _Add(rid, prompt, params, add_special_tokens, loop, queue, fut))
        try:
            await fut
        except asyncio.CancelledError:
            self.abort(rid)  # the add may still land; the abort follows it in the inbox
            raise
        deadline = None
        if self.request_timeout_s is not None:
            deadline = loop.time() + self.request_timeout_s
        return RequestStream(rid, queue, self, deadline)

    def _prepare(self, prompt: Prompt, params: SamplingParams, add_special_tokens: bool) -> dict:
        """The prompt as {prompt, prompt_token_ids}, validated against the model."""
        text, ids = self.engine.intake.prompt_ids(prompt, add_special_tokens)
        self.engine.intake.validate(ids, params)
        return {"prompt": text, "prompt_token_ids": ids}

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        *,
        add_special_tokens: bool = True,
    ) -> AsyncIterator[RequestOutput]:
        """Yield cumulative outputs until finished; closing or cancelling it aborts the request."""
        stream = await self.add_request(
            prompt, params, request_id, add_special_tokens=add_special_tokens
        )
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Thread-safe and non-blocking, so it can run in a ``finally`` of a cancelled task."""
        self._post("abort", request_id)

    def _post(self, kind: str, item: Any) -> None:
        self._inbox.append((kind, item))
        self._wake.set()

    # ---- the engine thread ------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop:
                self._drain_inbox()
                if self._stop:
                    break
                if not engine.has_unfinished_requests():
                    self._report(StepReport())
                    self._wake.wait()
                    self._wake.clear()
                    continue
                try:
                    outputs = engine.step()
                except Exception as e:  # fail the requests in flight, keep serving others
                    log.exception("engine step failed")
                    self._fail_all(e)
                    continue
                self._report(self._deliver(outputs))
                if not outputs and not self._inbox:
                    # Nothing was schedulable (e.g. all waiting on memory): don't spin.
                    self._wake.wait(0.005)
                    self._wake.clear()
        except BaseException as e:  # pragma: no cover - a bug in the loop itself
            log.exception("engine thread died")
            self.dead_error = e
        finally:
            self._fail_all(self.dead_error or EngineDeadError("the server is shutting down"))

    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "add":
                self._adds_taken += 1
                self._do_add(item)
            else:
                self._sinks.pop(item, None)
                self.engine.abort_request(item)

    def _do_add(self, a: _Add) -> None:
        try:
            self.engine.add_request(
                a.prompt,
                a.params,
                a.request_id,
                arrival_time=time.monotonic(),
                add_special_tokens=a.add_special_tokens,
            )
        except Exception as e:
            _call_soon(a.loop, _resolve, a.future, e)
            return
        self._sinks[a.request_id] = _Sink(a.loop, a.queue)
        if not _call_soon(a.loop, _resolve, a.future, None):  # its client's loop is gone
            self._sinks.pop(a.request_id, None)
            self.engine.abort_request(a.request_id)

    def _deliver(self, outputs: list[RequestOutput]) -> StepReport:
        """Hand outputs to their queues, batched into one callback per event loop."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        rids: dict[asyncio.AbstractEventLoop, list[str]] = {}
        report = StepReport(outputs)
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if out.finished:
                report.finished.append(out.request_id)
                self._sinks.pop(out.request_id, None)
            if sink is None:
                continue
            m = out.metrics
            if not sink.first_token_seen and m is not None and m.first_token_time is not None:
                sink.first_token_seen = True
                report.ttfts.append(m.first_token_time - m.arrival_time)
            item = RequestFailedError(out.error) if out.error is not None else out
            batches.setdefault(sink.loop, []).append((sink.queue, item))
            rids.setdefault(sink.loop, []).append(out.request_id)
        for loop, items in batches.items():
            if not _call_soon(loop, _put_all, items):  # the loop closed: nobody reads these
                for rid in rids[loop]:
                    if self._sinks.pop(rid, None) is not None:
                        self.engine.abort_request(rid)
        return report

    def _fail_all(self, error: BaseException) -> None:
        for rid, sink in list(self._sinks.items()):
            try:
                self.engine.abort_request(rid)
            except Exception:  # pragma: no cover
                log.exception("abort after failure")
            _call_soon(sink.loop, _put_all, [(sink.queue, error)])
        self._sinks.clear()
        # Adds still queued never reached the engine: fail them too.
        while self._stop and self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "add":
                _call_soon(item.loop, _resolve, item.future, error)

    def _report(self, report: StepReport) -> None:
        if self.stats_hook is not None:
            try:
                self.stats_hook(self.engine, report)
            except Exception:  # pragma: no cover - metrics must never stop serving
                log.exception("stats hook failed")


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> bool:
    """Schedule ``fn`` on ``loop``; False if the loop is closed (its requests are gone)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True


def _resolve(fut: asyncio.Future, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, out in items:
        if not isinstance(out, BaseException):
            # Outputs are cumulative: the newest replaces any its consumer has not taken yet
            # (the consumer would skip them anyway), so a client that stops reading holds one
            # output, not one per step, each a copy of every token so far.
            while not q.empty():
                q.get_nowait()
        q.put_nowait(out)

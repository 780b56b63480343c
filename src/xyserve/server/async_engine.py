"""AsyncLLM: the synchronous LLMEngine driven by one background thread, fed from asyncio.

The engine is not thread-safe, so exactly one thread (the engine thread) touches it: it drains
a thread-safe inbox of add/abort commands, runs ``step()`` and hands each request's cumulative
output to that request's asyncio queue with ``loop.call_soon_threadsafe``. Torch releases the
GIL inside the forward pass, so the event loop keeps serving HTTP while a step runs.

Admission happens on the engine thread: one add carries every prompt of a client request, and
the waiting limit (``max_waiting_requests``, counted in sequences: prompts x ``n``) is checked
there, right before the engine takes them, so two adds can never both pass when only one fits.

An exception that escapes the step loop is a bug (the engine fails a bad request inside the
step by itself): the engine's state is then unknown, so the thread stops for good. Every
request it holds or that waits in the inbox is failed with :class:`EngineFailedError`, and later
adds raise :class:`EngineDeadError` at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from xyserve.config import EngineConfig
from xyserve.engine.intake import RequestValidationError
from xyserve.outputs import RequestOutput
from xyserve.sampling_params import SamplingParams
from xyserve.server.request_stream import RequestStream

log = logging.getLogger("xyserve.server")

Prompt = str | list[int] | dict


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served."""


class EngineFailedError(EngineDeadError):
    """The engine thread died (a bug) while this request was in flight; it was not finished."""


class EngineBusyError(RuntimeError):
    """More sequences wait than ``max_waiting_requests`` allows; the client may retry later."""


class RequestFailedError(RuntimeError):
    """The engine failed this request inside a step (the others went on)."""


@dataclass
class _Add:
    """One client request's prompts, admitted together or not at all."""

    request_ids: list[str]
    prompts: list[Prompt]
    params: SamplingParams
    add_special_tokens: bool
    priority: int
    loop: asyncio.AbstractEventLoop
    queues: list[asyncio.Queue]
    future: asyncio.Future
    # time.monotonic() when the client's request reached add_requests: its arrival to the
    # metrics (time to first token, e2e latency), so that tokenizing it and waiting in the
    # inbox while the engine thread finishes a step count, as in vLLM's arrival_time
    arrival_time: float

    @property
    def num_seqs(self) -> int:
        return len(self.prompts) * self.params.n


@dataclass
class _Sink:
    """Where the engine thread delivers one request's outputs (engine-thread owned)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLM:
    """An ``LLMEngine`` in a background thread, with an asyncio-facing ``generate``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._sinks: dict[str, _Sink] = {}  # touched by the engine thread only
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dead_error: BaseException | None = None
        # Sequences posted in adds (written by the event loop only) and taken by the engine
        # thread (written by it only): each counter has one writer, so no lock is needed.
        self._seqs_posted = 0
        self._seqs_taken = 0
        # Sequences of adds failed in the inbox, never taken (shutdown, death): either thread
        # may fail the inbox, so this one is written under its lock.
        self._seqs_dropped = 0
        self._dropped_lock = threading.Lock()
        config = getattr(engine, "config", None)
        self.request_timeout_s: float | None = getattr(config, "request_timeout_s", None)
        # Past this many sequences waiting in the engine, adds are refused (EngineBusyError).
        self.max_waiting: int | None = getattr(config, "max_waiting_requests", None)

    @property
    def num_waiting(self) -> int:
        """Sequences queued (in the engine or on their way to it); read without a lock."""
        in_inbox = self._seqs_posted - self._seqs_taken - self._seqs_dropped
        return self.engine.num_waiting + max(0, in_inbox)

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncLLM:
        from xyserve.engine.engine import LLMEngine

        return cls(LLMEngine(config))

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
        priority: int = 0,
    ) -> RequestStream:
        """Add a request; returns once the engine accepted it, or raises its add error."""
        rid = request_id or uuid.uuid4().hex
        (stream,) = await self.add_requests(
            [prompt], params, [rid], add_special_tokens=add_special_tokens, priority=priority
        )
        return stream

    async def add_requests(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        request_ids: list[str],
        *,
        add_special_tokens: bool = True,
        priority: int = 0,
    ) -> list[RequestStream]:
        """Add one request per prompt, all or none; returns once the engine took them all.

        Text is tokenized and every prompt validated here, in a worker thread, so a big prompt
        never stalls the engine loop and a bad request never reaches the engine. Raises
        ``RequestValidationError`` (the client's error, ``param`` naming the field),
        :class:`EngineBusyError` past the waiting limit, :class:`EngineDeadError` when the
        engine thread has stopped.
        """
        if len(prompts) != len(request_ids):
            raise ValueError("one request id per prompt")
        arrival_time = time.monotonic()
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.dead_error}")
        need = len(prompts) * params.n
        self._check_waiting(need, len(prompts), params.n)
        self.start()
        loop = asyncio.get_running_loop()
        prepared = await asyncio.to_thread(
            lambda: [self._prepare(p, params, add_special_tokens) for p in prompts]
        )
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in prompts]
        fut = loop.create_future()
        self._seqs_posted += need
        self._post(
            "add",
            _Add(
                list(request_ids),
                prepared,
                params,
                add_special_tokens,
                priority,
                loop,
                queues,
                fut,
                arrival_time,
            ),
        )
        if self.dead_error is not None or self._stop:
            # The thread may have ended (died, or shut down) after the checks above and failed
            # the inbox for the last time before this add landed: nobody else would answer it.
            why = self.dead_error or "the server is shutting down"
            self._fail_inbox(EngineDeadError(f"the engine has stopped: {why}"))
        try:
            await fut
        except asyncio.CancelledError:
            for rid in request_ids:  # the add may still land; the aborts follow it in the inbox
                self.abort(rid)
            raise
        deadline = None
        if self.request_timeout_s is not None:
            deadline = loop.time() + self.request_timeout_s
        return [
            RequestStream(r, q, self, deadline, p["prompt_token_ids"])
            for r, q, p in zip(request_ids, queues, prepared)
        ]

    def _check_waiting(self, need: int, num_prompts: int, n: int) -> None:
        """Refuse a request the waiting limit can never admit (the client's 400), and, early
        and without a lock, one that cannot fit now: counting the adds still in the inbox, so
        a 503 comes at once even while the engine thread is busy in a long step. The engine
        thread checks again, exactly, when it takes the add; this early look can only refuse
        sooner (and, if an add ahead of it is refused in the end, one that would have fit)."""
        limit = self.max_waiting
        if limit is None:
            return
        if need > limit:
            where = f"n={n}" if num_prompts == 1 else f"{num_prompts} prompts x n={n}"
            raise RequestValidationError(
                f"this request has {need} sequences ({where}) but at most {limit} may wait "
                "(--max-waiting-requests): it can never be admitted",
                param="n" if n > limit else "prompt",
            )
        waiting = self.num_waiting
        if waiting + need > limit:
            raise _busy(waiting, need, limit)

    def _prepare(self, prompt: Prompt, params: SamplingParams, add_special_tokens: bool) -> dict:
        """The prompt as {prompt, prompt_token_ids}, validated against the model."""
        text, ids = self.engine.intake.prompt_ids(prompt, add_special_tokens)
        text, ids = self.engine.intake.truncated(text, ids, params)
        self.engine.intake.validate(ids, params)
        return {"prompt": text, "prompt_token_ids": ids}

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        *,
        add_special_tokens: bool = True,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Yield cumulative outputs until finished; closing or cancelling it aborts the request."""
        stream = await self.add_request(
            prompt, params, request_id, add_special_tokens=add_special_tokens, priority=priority
        )
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Thread-safe and non-blocking, so it can run in a ``finally`` of a cancelled task."""
        if self.dead_error is None:  # a dead thread holds nothing, and would never read it
            self._post("abort", request_id)

    def _post(self, kind: str, item: Any) -> None:
        self._inbox.append((kind, item))
        self._wake.set()

    # ---- the engine thread ------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        error: BaseException = EngineDeadError("the server is shutting down")
        try:
            while not self._stop:
                self._drain_inbox()
                if self._stop:
                    break
                if not engine.has_unfinished_requests():
                    self._wake.wait()
                    self._wake.clear()
                    continue
                # The engine fails a request's own errors inside the step; an exception that
                # escapes it is an engine bug, after which its state is unknown: stop below.
                outputs = engine.step()
                self._deliver(outputs)
                if not outputs and not self._inbox:
                    # Nothing was schedulable (e.g. all waiting on memory): don't spin.
                    self._wake.wait(0.005)
                    self._wake.clear()
        except BaseException as e:
            log.exception("the engine thread died; every request in flight is failed")
            error = EngineFailedError(
                f"the engine failed ({type(e).__name__}: {e}) and stopped; this request was "
                "not finished"
            )
            self.dead_error = e  # set before the last drain of the inbox (see add_requests)
        finally:
            self._fail_all(error)

    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "add":
                self._seqs_taken += item.num_seqs
                self._do_add(item)
            else:
                self._sinks.pop(item, None)
                self.engine.abort_request(item)

    def _do_add(self, a: _Add) -> None:
        """Admit every request of ``a`` or none: the waiting limit is checked here, where
        admission happens, so concurrent adds are checked one after the other."""
        limit = self.max_waiting
        waiting = self.engine.num_waiting
        if limit is not None and waiting + a.num_seqs > limit:
            _call_soon(a.loop, _resolve, a.future, _busy(waiting, a.num_seqs, limit))
            return
        added: list[str] = []
        try:
            for rid, prompt in zip(a.request_ids, a.prompts):
                self.engine.add_request(
                    prompt,
                    a.params,
                    rid,
                    arrival_time=a.arrival_time,
                    add_special_tokens=a.add_special_tokens,
                    priority=a.priority,
                )
                added.append(rid)
        except Exception as e:
            for rid in added:  # all or none: the others were never admitted
                self.engine.withdraw_request(rid)
            _call_soon(a.loop, _resolve, a.future, e)
            return
        for rid, queue in zip(a.request_ids, a.queues):
            self._sinks[rid] = _Sink(a.loop, queue)
        if not _call_soon(a.loop, _resolve, a.future, None):  # its client's loop is gone
            for rid in a.request_ids:
                self._sinks.pop(rid, None)
                self.engine.abort_request(rid)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand outputs to their queues, batched into one callback per event loop."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        rids: dict[asyncio.AbstractEventLoop, list[str]] = {}
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if out.finished:
                self._sinks.pop(out.request_id, None)
            if sink is None:
                continue
            item = RequestFailedError(out.error) if out.error is not None else out
            batches.setdefault(sink.loop, []).append((sink.queue, item))
            rids.setdefault(sink.loop, []).append(out.request_id)
        for loop, items in batches.items():
            if not _call_soon(loop, _put_all, items):  # the loop closed: nobody reads these
                for rid in rids[loop]:
                    if self._sinks.pop(rid, None) is not None:
                        self.engine.abort_request(rid)

    def _fail_all(self, error: BaseException) -> None:
        """The thread is ending: fail every request it holds, then every add in the inbox."""
        for rid, sink in list(self._sinks.items()):
            try:
                self.engine.abort_request(rid)
            except Exception:  # the engine may be broken: its requests are answered anyway
                log.exception("abort after failure")
            _call_soon(sink.loop, _put_all, [(sink.queue, error)])
        self._sinks.clear()
        self._fail_inbox(error)

    def _fail_inbox(self, error: BaseException) -> None:
        """Fail the adds still queued (they never reached the engine); any thread may call it,
        since each item is popped once."""
        while True:
            try:
                kind, item = self._inbox.popleft()
            except IndexError:
                return
            if kind == "add":
                with self._dropped_lock:
                    self._seqs_dropped += item.num_seqs
                _call_soon(item.loop, _resolve, item.future, error)


def _busy(waiting: int, need: int, limit: int) -> EngineBusyError:
    return EngineBusyError(
        f"the server is busy: {waiting} sequences wait, this request adds {need}, and at most "
        f"{limit} may wait (--max-waiting-requests); retry later"
    )


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

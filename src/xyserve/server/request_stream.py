"""RequestStream: one request's outputs as an async iterator, read by the route that serves it.

The engine thread puts each request's cumulative outputs (or the error that ended it) on that
request's asyncio queue; the stream reads them, enforces the request's time limit, and aborts
the request when it is closed before the end.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from xyserve.outputs import RequestOutput

if TYPE_CHECKING:
    from xyserve.server.async_engine import AsyncLLM


class RequestTimeoutError(RuntimeError):
    """The request ran past its time limit and was aborted."""


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
        prompt_token_ids: list[int] | None = None,
    ) -> None:
        self.request_id = request_id
        # the admitted prompt, known before any output (a stream's first chunks' usage)
        self.prompt_token_ids = prompt_token_ids or []
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

"""Consuming request streams in a handler: merged, collected, cancelled when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request

from xyserve.outputs import RequestOutput
from xyserve.server.errors import APIError
from xyserve.server.request_stream import RequestStream

T = TypeVar("T")


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave the outputs of several requests as they come, tagged with their index."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                q.put_nowait((i, out))
        except Exception as e:
            q.put_nowait((i, e))
        finally:
            q.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await q.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


async def final_outputs(streams: list[RequestStream]) -> list[RequestOutput]:
    """The final output of each request (non-streaming responses)."""
    final: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for i, out in merge(streams):
            final[i] = out
    finally:  # cancelled (client gone) or failed: abort whatever still runs
        for s in streams:
            s.close()
    assert all(f is not None for f in final)
    return final  # type: ignore[return-value]


async def cancel_on_disconnect(raw: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it (aborting its requests) if the client goes away first.

    Starlette only notices disconnects while streaming, so a long non-streaming generation
    would otherwise run on for nobody.
    """
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await raw.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise APIError("client disconnected", status=499, type="client_disconnected")
    return task.result()

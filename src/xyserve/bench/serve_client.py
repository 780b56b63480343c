"""The streaming client of ``bench serve``: one request = one asyncio task over HTTP (httpx).

Each request goes to ``/v1/completions`` with its prompt as token ids, ``max_tokens`` equal to
its output length, ``ignore_eos`` and ``stream``. The client asks for ``logprobs: 0`` so that
every chunk lists the tokens it carries: a chunk with k tokens is k tokens arriving at once.
A peer that sends no logprobs is counted one token per non-empty chunk.

Measures come from chunk arrival times alone (:func:`measure`), so they can be checked
exactly against a fake server with a fake clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from xyserve.bench.serve_workload import BenchRequest

Clock = Callable[[], float]


@dataclass
class RequestResult:
    """What the client saw of one request."""

    prompt_len: int
    output_len: int  # requested
    start: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival time, tokens)
    end: float = 0.0
    error: str | None = None
    usage_tokens: int | None = None  # completion_tokens of the usage chunk, if any
    disconnected: bool = False  # the client closed the stream on purpose (--disconnect-fraction)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disconnected

    @property
    def num_tokens(self) -> int:
        return sum(k for _, k in self.chunks)


@dataclass(frozen=True)
class Measures:
    ttft: float
    tbts: list[float]  # one per token after the first: 0 for tokens sharing a chunk
    tpot: float | None  # (last token - first token) / (tokens - 1); None for one token
    e2e: float
    num_tokens: int


def measure(start: float, chunks: list[tuple[float, int]], end: float) -> Measures:
    """Per-request latencies from chunk arrivals ``(time, k tokens)`` and the stream's end."""
    arrivals = [t for t, k in chunks for _ in range(k)]
    if not arrivals:
        raise ValueError("no token arrived")
    tbts = [b - a for a, b in zip(arrivals, arrivals[1:])]
    n = len(arrivals)
    tpot = (arrivals[-1] - arrivals[0]) / (n - 1) if n > 1 else None
    return Measures(arrivals[0] - start, tbts, tpot, end - start, n)


def _chunk_tokens(choice: dict[str, Any]) -> int:
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("tokens"), list):
        return len(lp["tokens"])
    return 1 if choice.get("text") else 0


def _error_text(status: int, body: bytes) -> str:
    try:
        msg = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = body[:200].decode(errors="replace")
    return f"HTTP {status}: {msg}"


async def send(
    client: httpx.AsyncClient,
    url: str,
    model: str | None,
    req: BenchRequest,
    clock: Clock = time.perf_counter,
    use_logprobs: bool = True,
    disconnect_after: int | None = None,
    prompt: str | None = None,
    ignore_eos: bool = True,
    timeout_s: float | None = None,
) -> RequestResult:
    """Stream one completion; any failure is recorded in ``error``, never raised. ``prompt``:
    the prompt as text, for a server that takes no token ids (default: ``req.prompt_ids``).
    ``ignore_eos`` False: the body leaves out vLLM's ``ignore_eos``, for a server that refuses
    it (a stream that then ends early at an end-of-sequence token is a failure, as any short
    stream). ``timeout_s``: the whole request's deadline, from send to the stream's end (None:
    no deadline); past it the request fails as timed out.

    With ``disconnect_after = k`` the client closes the connection once k tokens arrived, as
    a user who leaves mid-stream; the result is marked ``disconnected``, not failed.
    """
    body: dict[str, Any] = {
        "prompt": req.prompt_ids if prompt is None else prompt,
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    if model:
        body["model"] = model
    if use_logprobs:
        body["logprobs"] = 0
    res = RequestResult(len(req.prompt_ids), req.output_len, start=clock())

    async def stream() -> None:
        """Read the answer into ``res``; an early return leaves ``error`` or ``disconnected``."""
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                res.error = _error_text(resp.status_code, await resp.aread())
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = clock()
                msg = json.loads(data)
                if not isinstance(msg, dict):  # "data: 5", "data: null": not an event
                    raise ValueError(f"an event that is not a JSON object: {data[:80]!r}")
                if "error" in msg:
                    err = msg["error"]
                    text = err.get("message", err) if isinstance(err, dict) else err
                    res.error = f"stream error: {text}"
                    return
                if msg.get("usage"):
                    res.usage_tokens = msg["usage"].get("completion_tokens")
                k = sum(_chunk_tokens(c) for c in msg.get("choices") or [])
                if k:
                    res.chunks.append((now, k))
                if disconnect_after is not None and res.num_tokens >= disconnect_after:
                    res.disconnected = True
                    return

    try:
        # httpx's timeout bounds each read only: a server that keeps sending (comments,
        # empty events, a token now and then) would hold the request, and the run, for ever
        await asyncio.wait_for(stream(), timeout_s)
    except asyncio.TimeoutError:
        res.error = f"timed out: no complete answer within {timeout_s:g} s (--request-timeout)"
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        # a malformed event fails this request only: raised, it ended the whole run
        res.error = f"malformed stream: {e}"
    finally:
        res.end = clock()
    if res.error is not None:
        return res
    if res.disconnected:
        return res
    if not res.chunks:
        res.error = "the stream ended without a token"
    else:
        got = res.usage_tokens if res.usage_tokens is not None else res.num_tokens
        if got != req.output_len:
            res.error = f"got {got} tokens, asked for {req.output_len}"
    return res

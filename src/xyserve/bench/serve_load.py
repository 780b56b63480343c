"""Drive one load against one endpoint: open-loop arrivals or closed-loop concurrency.

Open loop: request ``i`` is sent at ``arrivals[i]`` seconds after the start, whatever the
server's state (one asyncio task per request). Closed loop: ``concurrency`` requests are in
flight at all times; the next is sent when one finishes.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
from tqdm.auto import tqdm

from xyserve.bench.serve_client import RequestResult, send
from xyserve.bench.serve_server import EndpointError
from xyserve.bench.serve_workload import BenchRequest


def served_model(base_url: str) -> str | None:
    """The first model id of ``/v1/models``; raises EndpointError when unreachable."""
    try:
        r = httpx.get(f"{base_url}/v1/models", timeout=10.0)
    except httpx.HTTPError as e:
        raise EndpointError(f"cannot reach {base_url}: {type(e).__name__}: {e}") from None
    if r.status_code != 200:
        raise EndpointError(f"{base_url}/v1/models answered HTTP {r.status_code}")
    # another kind of server on that port answers something else: say so, not a traceback
    try:
        body = r.json()
    except ValueError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise EndpointError(
            f"{base_url}/v1/models is not an OpenAI-compatible model list: {r.text[:120]!r}"
        )
    return data[0].get("id") if data else None


def disconnect_plan(n: int, fraction: float, seed: int) -> list[int | None]:
    """For each request, after how many tokens the client leaves (None: it stays)."""
    if not 0 <= fraction <= 1:
        raise ValueError("the disconnect fraction must be in [0, 1]")
    rng = random.Random(seed + 7919)
    return [rng.randint(1, 4) if rng.random() < fraction else None for _ in range(n)]


async def run_load(
    base_url: str,
    model: str | None,
    requests: list[BenchRequest],
    arrivals: list[float] | None = None,
    concurrency: int | None = None,
    desc: str = "requests",
    progress: bool = True,
    timeout_s: float = 600.0,
    use_logprobs: bool = True,
    disconnects: list[int | None] | None = None,
    prompts: list[str] | None = None,
    ignore_eos: bool = True,
) -> list[RequestResult]:
    """Send every request; results are in request order, failures included. ``prompts``: each
    request's prompt as text, for a server that takes text only; ``ignore_eos``: see
    :func:`send`; ``timeout_s``: each request's deadline, from its send to its stream's end."""
    if (arrivals is None) == (concurrency is None):
        raise ValueError("give exactly one of arrivals (open loop) or concurrency (closed loop)")
    if arrivals is not None and len(arrivals) != len(requests):
        raise ValueError("one arrival time per request")
    if prompts is not None and len(prompts) != len(requests):
        raise ValueError("one prompt text per request")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    leave = disconnects or [None] * len(requests)
    url = f"{base_url}/v1/completions"
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    bar = tqdm(total=len(requests), desc=desc, disable=not progress, leave=False)
    results: list[RequestResult | None] = [None] * len(requests)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def one(i: int) -> None:
            text = None if prompts is None else prompts[i]
            results[i] = await send(
                client, url, model, requests[i], time.perf_counter, use_logprobs, leave[i],
                prompt=text, ignore_eos=ignore_eos, timeout_s=timeout_s,
            )  # fmt: skip
            bar.update(1)

        if arrivals is not None:
            t0 = time.perf_counter()

            async def at(i: int) -> None:
                delay = t0 + arrivals[i] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await one(i)

            await asyncio.gather(*(asyncio.create_task(at(i)) for i in range(len(requests))))
        else:
            nxt = iter(range(len(requests)))

            async def worker() -> None:
                for i in nxt:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    bar.close()
    return [r for r in results if r is not None]

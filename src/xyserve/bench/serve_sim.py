"""Replay a ``bench serve`` load through the real Scheduler and KV cache in simulated time.

On a shared machine, measured latencies move with other processes; the scheduling policy's
own effect is easier to see without them. Here every step takes ``a + b * tokens`` seconds
(a cost model measured on the target machine; see docs/perf.md) and nothing else costs time:
no attention growth with context, no HTTP or detokenisation. It decides nothing about
kernels; it compares policies and knobs under identical, noise-free steps. Arrivals,
requests and the measures (TTFT, TBT, goodput) are the same as in the real benchmark.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from xyserve.bench.serve_client import RequestResult
from xyserve.bench.serve_workload import BenchRequest
from xyserve.config import EngineConfig
from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.scheduler import Scheduler


@dataclass(frozen=True)
class StepCost:
    a_s: float  # fixed cost of a step
    b_s: float  # cost per token in the step

    def __call__(self, tokens: int) -> float:
        return self.a_s + self.b_s * tokens


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_scheduler(config: EngineConfig, max_model_len: int, clock: SimClock) -> Scheduler:
    blocks = config.num_kv_blocks or 4096
    kv = KVCacheManager(blocks, config.block_size, config.enable_prefix_caching)
    return Scheduler(
        kv,
        config.max_num_batched_tokens,
        config.max_num_seqs,
        max_model_len,
        policy=config.scheduler_policy,
        num_reserved_decode_tokens=config.num_reserved_decode_tokens,
        clock=clock,
        split_decode_rows=config.split_decode_rows(None),  # no fused decode call to follow
        **config.scheduler_knobs(),
    )


def simulate(
    config: EngineConfig,
    requests: list[BenchRequest],
    arrivals: list[float],
    cost: StepCost,
    max_model_len: int = 2048,
) -> list[RequestResult]:
    """Each request's chunk times as a streaming client with zero network delay would see."""
    if len(arrivals) != len(requests):
        raise ValueError("one arrival time per request")
    clock = SimClock()
    sched = make_scheduler(config, max_model_len, clock)
    results = [
        RequestResult(len(r.prompt_ids), r.output_len, start=t) for r, t in zip(requests, arrivals)
    ]
    pending = [(t, i) for i, t in enumerate(arrivals)]
    heapq.heapify(pending)
    live: dict[str, int] = {}
    while pending or sched.has_unfinished():
        while pending and pending[0][0] <= clock.t:
            _, i = heapq.heappop(pending)
            rid = f"r{i}"
            sched.add_request(Request(rid, list(requests[i].prompt_ids), requests[i].output_len))
            live[rid] = i
        if not sched.has_unfinished():
            clock.t = pending[0][0]
            continue
        out = sched.schedule()
        if out.is_empty:
            if not pending:
                raise RuntimeError("the scheduler cannot make progress (KV cache too small?)")
            clock.t = max(clock.t, pending[0][0])
            continue
        clock.t += cost(out.num_tokens)
        emitting = [st.request for st in out.stages if st.samples]  # before update moves them
        sched.update(out, {r.request_id: [7] for r in emitting})
        for r in emitting:
            if r.is_finished:
                continue
            res = results[live[r.request_id]]
            res.chunks.append((clock.t, 1))
            if r.num_output_tokens >= r.max_tokens:
                sched.finish_request(r.request_id, RequestStatus.FINISHED_LENGTH)
                res.end = clock.t
    sched.kv.check_no_leak()
    return results

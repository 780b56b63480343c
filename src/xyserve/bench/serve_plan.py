"""The loads of one ``bench serve`` run (rates, a dynamic-QPS trace, or a closed-loop
concurrency) and, per load, its requests and their send times, seeded."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from xyserve.bench import arrivals as arr
from xyserve.bench import serve_workload as wl


def loads(args: argparse.Namespace, work: wl.ServeWorkload) -> list[dict[str, Any]]:
    """One dict per run: label, offered rate, number of requests, arrival times or concurrency."""
    burst = args.burstiness if args.burstiness is not None else work.burstiness
    if args.concurrency is not None:
        return [
            dict(
                load=f"concurrency={args.concurrency}",
                rate=None,
                n=args.num_prompts,
                concurrency=args.concurrency,
                burst=None,
                trace=None,
            )
        ]
    if args.qps_trace is not None:
        trace = arr.load_trace(args.qps_trace)
        if args.burstiness is not None:  # the flag overrides the file's, as the workload's
            trace = dataclasses.replace(trace, burstiness=args.burstiness)
        n = args.num_prompts
        if args.duration is not None:
            n = max(args.min_prompts, round(trace.mean_rate * args.trace_scale * args.duration))
        return [
            dict(
                load=f"trace={trace.name} x{args.trace_scale:g}"
                + ("" if args.burstiness is None else f" burst={args.burstiness:g}"),
                rate=trace.mean_rate * args.trace_scale,
                n=n,
                concurrency=None,
                burst=None,
                trace=trace,
            )
        ]
    rates = args.sweep or [args.request_rate]
    out = []
    for r in rates:
        n = args.num_prompts
        if args.duration is not None and math.isfinite(r):
            n = max(args.min_prompts, round(r * args.duration))
        out.append(
            dict(
                load=f"rate={r:g} burst={burst:g}",
                rate=r,
                n=n,
                concurrency=None,
                burst=burst,
                trace=None,
            )
        )
    return out


def load_inputs(
    args: argparse.Namespace,
    work: wl.ServeWorkload,
    ld: dict[str, Any],
    k: int,
    vocab: int,
    max_len: int | None,
) -> tuple[list[wl.BenchRequest], list[float] | None]:
    """The requests of load ``k`` and their send times (None: closed loop); seeded."""
    reqs = wl.sample(work, ld["n"], vocab, seed=args.seed + k, max_model_len=max_len)
    if ld["trace"] is not None:
        return reqs, arr.trace_arrivals(ld["n"], ld["trace"], args.seed, args.trace_scale)
    if ld["rate"] is not None:
        return reqs, arr.gamma_arrivals(ld["n"], ld["rate"], ld["burst"], args.seed + k)
    return reqs, None

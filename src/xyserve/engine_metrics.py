"""The engine's metrics: vLLM V1's Prometheus metrics under the ``xyserve:`` prefix.

One registry per engine is the only record: the server's ``/metrics`` renders it, and
``LLM.get_metrics()`` reads it back as vLLM's ``vllm.v1.metrics.reader`` does (``Counter``,
``Gauge``, ``Histogram`` and ``Vector`` objects with ``name``, ``labels`` and values).

Every metric carries vLLM's ``model_name`` (the first served name) and ``engine`` ("0")
labels; names, types and buckets are those of vLLM's ``PrometheusStatLogger``
(vllm/v1/metrics/loggers.py), and the counting follows vLLM's ``IterationStats``
(vllm/v1/metrics/stats.py): each of a request's ``n`` samples counts as a request of its own
(prompt tokens, ``request_success``, per-request histograms), while ``request_params_n`` and
``request_max_num_generation_tokens`` are observed once for the whole request. A request
aborted by its client is not a finished request to these counters (it is counted in
``xyserve:request_aborted``, which vLLM does not have).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
)
from prometheus_client import (
    Counter as PromCounter,
)
from prometheus_client import (
    Gauge as PromGauge,
)
from prometheus_client import (
    Histogram as PromHistogram,
)

PREFIX = "xyserve:"
# vLLM's FinishReason strings (vllm/v1/engine/__init__.py): every label value exists from the
# start, at 0, as vLLM creates them.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's buckets of token counts)."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


# ---- LLM.get_metrics(): vLLM's reader shapes ---------------------------------------------------
@dataclass
class Metric:
    name: str
    labels: dict[str, str]


@dataclass
class Counter(Metric):
    value: int


@dataclass
class Gauge(Metric):
    value: float


@dataclass
class Histogram(Metric):
    """``buckets``: upper bound (the ``le`` label, ``+Inf`` included) -> cumulative count."""

    count: int
    sum: float
    buckets: dict[str, int]


@dataclass
class Vector(Metric):
    """One counter per position: ``spec_decode_num_accepted_tokens_per_pos`` only."""

    values: list[int]


class EngineMetrics:
    """The metrics of one engine, in a registry of its own (several engines may coexist)."""

    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        num_speculative_tokens: int | None = None,
        engine_index: int = 0,
    ) -> None:
        self.registry = r = CollectorRegistry()
        names = ["model_name", "engine"]
        values = [model_name, str(engine_index)]
        tokens = build_1_2_5_buckets(max_model_len)

        def counter(name: str, doc: str):
            return PromCounter(PREFIX + name, doc, names, registry=r).labels(*values)

        def gauge(name: str, doc: str):
            return PromGauge(PREFIX + name, doc, names, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets):
            return PromHistogram(PREFIX + name, doc, names, buckets=buckets, registry=r).labels(
                *values
            )

        # scheduler state (read when collected)
        self.num_requests_running = gauge(
            "num_requests_running", "Number of requests in model execution batches."
        )
        self.num_requests_waiting = gauge(
            "num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_cache_usage_perc = gauge(
            "kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.prefix_cache_hit_rate = gauge(
            "prefix_cache_hit_rate",
            "Prefix cache hits over queries since the start, in tokens (xyserve's own).",
        )
        # prefix cache, in tokens
        self.prefix_cache_queries = counter(
            "prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        # counters
        self.num_preemptions = counter(
            "num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "generation_tokens", "Number of generation tokens processed."
        )
        success = PromCounter(
            PREFIX + "request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=r,
        )
        self.request_success = {x: success.labels(*values, x) for x in FINISH_REASONS}
        self.request_aborted = counter(
            "request_aborted",
            "Requests aborted (client gone, timed out, or rejected after admission); "
            "xyserve's own.",
        )
        self.request_failed = counter(
            "request_failed",
            "Requests failed inside a step, the rest of the batch going on; xyserve's own.",
        )
        # histograms of counts
        self.request_prompt_tokens = histogram(
            "request_prompt_tokens", "Number of prefill tokens processed.", tokens
        )
        self.request_generation_tokens = histogram(
            "request_generation_tokens", "Number of generation tokens processed.", tokens
        )
        self.iteration_tokens = histogram(
            "iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKENS_BUCKETS,
        )
        self.request_max_num_generation_tokens = histogram(
            "request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            tokens,
        )
        self.request_params_n = histogram(
            "request_params_n", "Histogram of the n request parameter.", PARAMS_N_BUCKETS
        )
        self.request_params_max_tokens = histogram(
            "request_params_max_tokens", "Histogram of the max_tokens request parameter.", tokens
        )
        # histograms of time
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.request_time_per_output_token = histogram(
            "request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            TOKEN_LATENCY_BUCKETS,
        )
        lat = REQUEST_LATENCY_BUCKETS
        self.e2e_request_latency = histogram(
            "e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", lat
        )
        self.request_queue_time = histogram(
            "request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            lat,
        )
        self.request_inference_time = histogram(
            "request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            lat,
        )
        self.request_prefill_time = histogram(
            "request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            lat,
        )
        self.request_decode_time = histogram(
            "request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            lat,
        )
        # speculative decoding (vLLM's SpecDecodingProm), only when it is on
        self.spec_num_drafts = self.spec_num_draft_tokens = self.spec_num_accepted_tokens = None
        self.spec_accepted_per_pos: list = []
        if num_speculative_tokens is not None:
            self.spec_num_drafts = counter(
                "spec_decode_num_drafts", "Number of spec decoding drafts."
            )
            self.spec_num_draft_tokens = counter(
                "spec_decode_num_draft_tokens", "Number of draft tokens."
            )
            self.spec_num_accepted_tokens = counter(
                "spec_decode_num_accepted_tokens", "Number of accepted tokens."
            )
            per_pos = PromCounter(
                PREFIX + "spec_decode_num_accepted_tokens_per_pos",
                "Accepted tokens per draft position.",
                [*names, "position"],
                registry=r,
            )
            self.spec_accepted_per_pos = [
                per_pos.labels(*values, str(p)) for p in range(num_speculative_tokens)
            ]

    # ---- what the engine reports ------------------------------------------------------
    def bind_state(
        self,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_usage: Callable[[], float],
        prefix_hit_rate: Callable[[], float],
    ) -> None:
        """The gauges read the engine's state whenever they are collected."""
        self.num_requests_running.set_function(running)
        self.num_requests_waiting.set_function(waiting)
        self.kv_cache_usage_perc.set_function(kv_usage)
        self.prefix_cache_hit_rate.set_function(prefix_hit_rate)

    def observe_prefix_query(self, num_tokens: int, num_hits: int) -> None:
        self.prefix_cache_queries.inc(num_tokens)
        self.prefix_cache_hits.inc(num_hits)

    def observe_spec(self, num_draft: int, num_accepted: int) -> None:
        """One verify stage: ``num_draft`` proposals, the first ``num_accepted`` accepted."""
        self.spec_num_drafts.inc()
        self.spec_num_draft_tokens.inc(num_draft)
        self.spec_num_accepted_tokens.inc(num_accepted)
        for pos in range(num_accepted):
            self.spec_accepted_per_pos[pos].inc()

    # ---- reading ----------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> list[Metric]:
        """The registry as vLLM's ``get_metrics_snapshot`` gives it: counters by their name
        without ``_total``, the per-position counter as one ``Vector``."""
        out: list[Metric] = []
        for fam in self.registry.collect():
            if fam.type == "gauge":
                out += [Gauge(fam.name, s.labels, s.value) for s in fam.samples]
            elif fam.type == "counter":
                samples = [s for s in fam.samples if s.name == fam.name + "_total"]
                if fam.name == PREFIX + "spec_decode_num_accepted_tokens_per_pos":
                    if samples:
                        by_pos = {int(s.labels["position"]): int(s.value) for s in samples}
                        labels = {k: v for k, v in samples[0].labels.items() if k != "position"}
                        values = [by_pos.get(p, 0) for p in range(max(by_pos) + 1)]
                        out.append(Vector(fam.name, labels, values))
                else:
                    out += [Counter(fam.name, s.labels, int(s.value)) for s in samples]
            elif fam.type == "histogram":
                buckets: dict[str, int] = {}
                count, total, labels = 0, 0.0, {}
                for s in fam.samples:
                    if s.name == fam.name + "_bucket":
                        buckets[s.labels["le"]] = int(s.value)
                    elif s.name == fam.name + "_count":
                        count, labels = int(s.value), s.labels
                    elif s.name == fam.name + "_sum":
                        total = s.value
                out.append(Histogram(fam.name, labels, count, total, buckets))
        return out

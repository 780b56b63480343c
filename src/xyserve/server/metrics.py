"""Prometheus metrics of one server, in a registry of its own (so several apps can coexist)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from xyserve.server.async_engine import StepReport

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class ServerMetrics:
    """vLLM-style ``xyserve:`` metrics, updated by the engine thread after every step."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "xyserve:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "xyserve:time_per_output_token_seconds",
            "Mean time between output tokens of a finished request (after the first).",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "xyserve:e2e_request_latency_seconds",
            "Time from arrival to the last token of a finished request.",
            registry=r,
        )
        self.running = Gauge(
            "xyserve:num_requests_running", "Sequences being computed.", registry=r
        )
        self.waiting = Gauge(
            "xyserve:num_requests_waiting", "Sequences waiting to be scheduled.", registry=r
        )
        self.kv_usage = Gauge(
            "xyserve:kv_cache_usage_perc",
            "Fraction of KV blocks in use (1 = full).",
            registry=r,
        )
        self.prefix_hit_rate = Gauge(
            "xyserve:prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache over prompt tokens queried.",
            registry=r,
        )
        self.prompt_tokens = Counter(
            "xyserve:prompt_tokens", "Prefill tokens computed.", registry=r
        )
        self.generation_tokens = Counter(
            "xyserve:generation_tokens", "Tokens generated.", registry=r
        )
        self.request_success = Counter(
            "xyserve:request_success", "Requests finished (not aborted).", registry=r
        )
        self.preemptions = Counter(
            "xyserve:num_preemptions", "Sequences preempted (their K/V freed).", registry=r
        )
        self.request_aborted = Counter(
            "xyserve:request_aborted",
            "Requests aborted (client gone, timed out, or rejected after admission).",
            registry=r,
        )
        self.request_failed = Counter(
            "xyserve:request_failed",
            "Requests failed inside a step (the rest of the batch went on).",
            registry=r,
        )
        # Speculative decoding (vLLM's names), from the engine's SpecStats when speculation is on.
        self.spec = {
            "xyserve:spec_decode_num_drafts": Counter(
                "xyserve:spec_decode_num_drafts", "Verify stages run.", registry=r
            ),
            "xyserve:spec_decode_num_draft_tokens": Counter(
                "xyserve:spec_decode_num_draft_tokens", "Proposed tokens verified.", registry=r
            ),
            "xyserve:spec_decode_num_accepted_tokens": Counter(
                "xyserve:spec_decode_num_accepted_tokens", "Proposed tokens accepted.", registry=r
            ),
            "xyserve:spec_decode_num_accepted_tokens_per_pos": Counter(
                "xyserve:spec_decode_num_accepted_tokens_per_pos",
                "Proposed tokens accepted, by position in the proposal.",
                ["position"],
                registry=r,
            ),
        }
        self._last_spec: dict[tuple[str, tuple], float] = {}
        self._last_prompt = 0
        self._last_gen = 0
        self._last = {"preempt": 0, "abort": 0, "fail": 0}

    def on_step(self, engine: Any, report: StepReport) -> None:
        """The AsyncLLM stats hook: called from the engine thread only."""
        for ttft in report.ttfts:
            self.ttft.observe(ttft)
        for out in report.outputs:
            m = out.metrics
            if m is None or m.first_token_time is None:
                continue
            if out.finished and out.error is None:
                n = max((len(c.token_ids) for c in out.outputs), default=0)
                if n > 1 and m.last_token_time is not None:
                    self.tpot.observe((m.last_token_time - m.first_token_time) / (n - 1))
                if m.last_token_time is not None:
                    self.e2e.observe(m.last_token_time - m.arrival_time)
                self.request_success.inc()
        self.running.set(engine.num_running)
        self.waiting.set(engine.num_waiting)
        self.kv_usage.set(engine.kv.usage)
        self.prefix_hit_rate.set(engine.kv.prefix_hit_rate)
        p, g = engine.num_prompt_tokens, engine.num_generation_tokens
        if p > self._last_prompt:
            self.prompt_tokens.inc(p - self._last_prompt)
        if g > self._last_gen:
            self.generation_tokens.inc(g - self._last_gen)
        self._last_prompt, self._last_gen = p, g
        now = {
            "preempt": engine.scheduler.num_preemptions,
            "abort": engine.num_aborted_requests,
            "fail": engine.num_failed_requests,
        }
        for key, counter in (
            ("preempt", self.preemptions),
            ("abort", self.request_aborted),
            ("fail", self.request_failed),
        ):
            if now[key] > self._last[key]:
                counter.inc(now[key] - self._last[key])
        self._last = now
        spec = getattr(engine, "spec", None)
        if spec is not None:
            for name, labels, value in spec.stats.prometheus():
                key = (name, tuple(sorted(labels.items())))
                delta = value - self._last_spec.get(key, 0.0)
                if delta > 0:
                    counter = self.spec[name]
                    (counter.labels(**labels) if labels else counter).inc(delta)
                self._last_spec[key] = value

    def render(self) -> bytes:
        return generate_latest(self.registry)

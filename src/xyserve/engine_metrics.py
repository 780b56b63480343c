"""``LLM.get_metrics()``: the engine's counters as objects with ``name`` and ``value``, as vLLM.

vLLM returns ``Counter``/``Gauge``/``Vector`` objects from ``vllm.v1.metrics.reader``; these are
the same shapes. Names carry the ``xyserve:`` prefix where vLLM's carry ``vllm:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counter:
    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Gauge:
    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Vector:
    """One value per position (e.g. accepted speculative tokens at each draft position)."""

    name: str
    values: list[float]
    labels: dict[str, str] = field(default_factory=dict)


def engine_metrics(engine) -> list[Counter | Gauge | Vector]:
    out: list[Counter | Gauge | Vector] = [
        Counter("xyserve:prompt_tokens", float(engine.num_prompt_tokens)),
        Counter("xyserve:generation_tokens", float(engine.num_generation_tokens)),
        Gauge("xyserve:num_requests_running", float(engine.num_running)),
        Gauge("xyserve:num_requests_waiting", float(engine.num_waiting)),
    ]
    spec = getattr(engine, "spec", None)
    if spec is not None:
        s = spec.stats
        out += [
            Counter("xyserve:spec_decode_num_drafts", float(s.num_drafts)),
            Counter("xyserve:spec_decode_num_draft_tokens", float(s.num_draft_tokens)),
            Counter("xyserve:spec_decode_num_accepted_tokens", float(s.num_accepted_tokens)),
            Vector(
                "xyserve:spec_decode_num_accepted_tokens_per_pos",
                [float(n) for n in s.accepted_per_pos],
            ),
        ]
    return out

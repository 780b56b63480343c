"""``/metrics``: the engine's Prometheus registry (xyserve.engine_metrics), rendered."""

from __future__ import annotations

from xyserve.engine_metrics import EngineMetrics


class ServerMetrics:
    """vLLM-style ``xyserve:`` metrics of the engine a server runs. The engine updates them
    as it works; each engine has a registry of its own, so several apps can coexist."""

    def __init__(self, engine_metrics: EngineMetrics) -> None:
        self.engine_metrics = engine_metrics
        self.registry = engine_metrics.registry

    def render(self) -> bytes:
        return self.engine_metrics.render()

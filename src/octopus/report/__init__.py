"""Results: metrics, the lower bound, Chrome/Perfetto traces and plots."""

from octopus.report.metrics import lower_bound, summarize

__all__ = ["lower_bound", "summarize"]

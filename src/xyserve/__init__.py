"""XY-Serve: an LLM serving engine for dynamic workloads (token-wise hybrid P/D/V scheduling)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "SamplingParams",
    "RequestOutput",
    "CompletionOutput",
    "EngineConfig",
    "BeamSearchParams",
]


def __getattr__(name: str):
    # Lazy imports keep `import xyserve.engine` (the scheduling core) free of torch.
    if name == "LLM":
        from xyserve.llm import LLM

        return LLM
    if name == "SamplingParams":
        from xyserve.sampling_params import SamplingParams

        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        from xyserve import outputs

        return getattr(outputs, name)
    if name == "BeamSearchParams":
        from xyserve.beam_search import BeamSearchParams

        return BeamSearchParams
    if name == "EngineConfig":
        from xyserve.config import EngineConfig

        return EngineConfig
    raise AttributeError(name)

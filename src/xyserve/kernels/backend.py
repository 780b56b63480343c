"""The backend interfaces that the model calls, and the registry that picks one by name.

Attention follows FlashInfer's plan/run split: ``plan`` runs once per step on the token table
(e.g. to build a task table), ``run`` once per layer.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from xyserve.plan.attention_metadata import AttentionMetadata


class AttentionBackend(Protocol):
    name: str

    def plan(
        self, meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int, head_dim: int
    ) -> Any: ...

    def run(
        self,
        plan: Any,
        q: torch.Tensor,  # [T, Hq, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor: ...  # [T, Hq, D]


class GemmBackend(Protocol):
    name: str

    def plan(self, num_tokens: int) -> Any: ...

    def linear(
        self, plan: Any, op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``x @ weight.T + bias`` in a fresh tensor (the model adds residuals into it in place)."""
        ...


class TorchGemm:
    """``torch.nn.functional.linear`` on the real rows: the vendor-GEMM baseline."""

    name = "torch"

    def plan(self, num_tokens: int) -> None:
        return None

    def linear(self, plan, op, x, weight, bias):
        return torch.nn.functional.linear(x, weight, bias)


_ATTENTION: dict[str, str] = {
    "sdpa": "xyserve.kernels.attention.per_stage:PerStageSDPA",
    "meta": "xyserve.kernels.attention.meta.backend:MetaAttention",
    "reference": "xyserve.kernels.attention.reference:ReferenceAttention",
}
_GEMM: dict[str, str] = {
    "torch": "xyserve.kernels.backend:TorchGemm",
    "smooth": "xyserve.kernels.gemm.smooth:SmoothGemm",
}


def _load(spec: str):
    import importlib

    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def attention_backend_names() -> list[str]:
    return sorted(_ATTENTION)


def gemm_backend_names() -> list[str]:
    return sorted(_GEMM)


def get_attention_backend(name: str, **kwargs) -> AttentionBackend:
    if name not in _ATTENTION:
        raise ValueError(f"unknown attention_backend {name!r}; choose one of {sorted(_ATTENTION)}")
    return _load(_ATTENTION[name])(**kwargs)


def get_gemm_backend(name: str, **kwargs) -> GemmBackend:
    if name not in _GEMM:
        raise ValueError(f"unknown gemm_backend {name!r}; choose one of {sorted(_GEMM)}")
    return _load(_GEMM[name])(**kwargs)

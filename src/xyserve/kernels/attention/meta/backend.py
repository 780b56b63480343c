"""The ``meta`` attention backend: Triton on CUDA tensors, the CPU path otherwise."""

from __future__ import annotations

import torch

from xyserve.kernels.attention.meta.cpu import Workspace, run_cpu
from xyserve.kernels.cpu import decode as cpu_decode
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.meta_attention import MetaAttentionPlan, advance_plan, build_plan
from xyserve.plan.triton_attention import (
    StaticTritonPlan,
    TritonAttentionPlan,
    build_triton_plan,
)


class MetaAttention:
    """The ``meta`` attention backend: Triton on CUDA tensors, the CPU path otherwise."""

    name = "meta"

    def __init__(
        self,
        num_workers: int | None = None,
        kv_chunk: int = 512,
        kv_chunk_bytes: int = 64 << 20,
        group_ratio: float = 0.75,
        dtype: torch.dtype = torch.float32,
        decode_kernel: bool = True,
        allow_tf32: bool = False,
    ) -> None:
        self.num_workers = num_workers
        self.allow_tf32 = allow_tf32  # Triton path: float32 dots in TF32 when set
        self.decode_kernel = decode_kernel
        self.kv_chunk = kv_chunk
        self.kv_chunk_bytes = kv_chunk_bytes
        self.group_ratio = group_ratio
        self.dtype = dtype
        self.workspace = Workspace()

    def warmup(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Build the CPU decode kernel at engine start, not inside the first request's step."""
        self.dtype = dtype
        if torch.device(device).type == "cpu" and self.decode_kernel:
            if cpu_decode.available(dtype):
                cpu_decode.warmup(dtype)

    def triton(self, device: torch.device) -> bool:
        """Whether steps on ``device`` run the Triton kernel (else the CPU path)."""
        return device.type == "cuda"

    def plan(
        self, meta: AttentionMetadata, num_q_heads: int, num_kv_heads: int, head_dim: int
    ) -> MetaAttentionPlan | TritonAttentionPlan:
        if self.triton(meta.slot_mapping.device):
            return build_triton_plan(
                meta,
                num_q_heads,
                num_kv_heads,
                head_dim,
                self.num_workers,
                allow_tf32=self.allow_tf32,
            )
        workers = self.num_workers or torch.get_num_threads()
        return build_plan(
            meta,
            num_q_heads,
            num_kv_heads,
            head_dim,
            num_workers=workers,
            kv_chunk=self.kv_chunk,
            kv_chunk_bytes=self.kv_chunk_bytes,
            group_ratio=self.group_ratio,
            dtype=self.dtype,
            decode_kernel=self.decode_kernel and cpu_decode.available(self.dtype),
        )

    def static_plan(
        self,
        meta: AttentionMetadata,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
    ) -> StaticTritonPlan | None:
        """Fixed buffers for the Triton plans of steps replayed in one CUDA graph (see
        ``plan.triton_attention.StaticTritonPlan``); None where steps run the CPU path, whose
        plans are built per step."""
        if not self.triton(meta.slot_mapping.device):
            return None
        return StaticTritonPlan.allocate(
            meta,
            num_q_heads,
            num_kv_heads,
            head_dim,
            capacity,
            self.num_workers,
            allow_tf32=self.allow_tf32,
        )

    def advance(
        self, plan: MetaAttentionPlan | TritonAttentionPlan, meta: AttentionMetadata
    ) -> MetaAttentionPlan | None:
        """``plan`` patched for ``meta``, the next step of the same decode batch (see
        ``plan.meta_attention.advance_plan``), or None: the caller then calls ``plan``."""
        if not isinstance(plan, MetaAttentionPlan):
            return None
        if plan.num_workers != max(1, self.num_workers or torch.get_num_threads()):
            return None
        return advance_plan(plan, meta)

    def run(
        self, plan: MetaAttentionPlan | TritonAttentionPlan, q, k_cache, v_cache, scale: float
    ) -> torch.Tensor:
        if self.triton(q.device):
            from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention

            return triton_meta_attention(plan, q, k_cache, v_cache, scale)
        return run_cpu(plan, q, k_cache, v_cache, scale, self.workspace)

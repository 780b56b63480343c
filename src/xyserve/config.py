"""One EngineConfig: every engine argument, with vLLM's names where they exist."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class EngineConfig:
    model: str | None = None  # local HF directory or a bundled name; None: the bundled default
    tokenizer: str | None = None  # defaults to the model directory
    max_num_batched_tokens: int = 512  # the token budget of one step
    max_num_seqs: int = 64
    block_size: int = 16
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    seed: int = 0
    num_kv_blocks: int | None = None  # overrides kv_cache_memory_bytes
    kv_cache_memory_bytes: int = 1 << 30
    scheduler_policy: str = "hybrid"  # hybrid | baseline
    # Budget tokens kept for decode/verify work whenever some waits (default: a quarter).
    num_reserved_decode_tokens: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    # meta/smooth are the defaults: measured at least as fast as sdpa/torch on the dev CPU
    # (xyserve bench kernels); sdpa/torch stay available as the per-stage/vendor baselines.
    attention_backend: str = "meta"  # meta | sdpa | reference
    gemm_backend: str = "smooth"  # smooth | torch
    # CUDA float32: the meta/smooth Triton kernels' dots may use TF32 (off: exact float32). Torch's
    # own ops follow torch.backends.cuda.matmul.allow_tf32, which the engine leaves as it is.
    allow_tf32: bool = False
    served_model_name: str | None = None
    skip_tokenizer_init: bool = False
    disable_progress_bar: bool = False

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be at least 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        if self.scheduler_policy not in ("hybrid", "baseline"):
            raise ValueError(
                f"scheduler_policy must be 'hybrid' or 'baseline', got {self.scheduler_policy!r}"
            )
        if self.num_reserved_decode_tokens is None:
            self.num_reserved_decode_tokens = max(1, self.max_num_batched_tokens // 4)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

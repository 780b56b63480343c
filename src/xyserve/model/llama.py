"""The Llama-family forward (Llama, Mistral, Qwen2 with biased QKV, Qwen3 with q/k norm).

The model runs once over the flat token batch of a step, whatever its P/D/V mix. Linear layers
go through the step's GEMM backend (op names: qkv, o_proj, gate_up, down, lm_head), attention
through the step's attention backend, which reads the paged cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xyserve.kernels import ops
from xyserve.model.config import ModelConfig
from xyserve.model.rope import RotaryEmbedding


@dataclass
class StepContext:
    """What every layer of one step shares: positions, cache slots and the backends' plans."""

    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T]
    attn_backend: Any
    attn_plan: Any
    gemm_backend: Any
    gemm_plan: Any


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 Hkv) D, hidden]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor  # [2 I, hidden]
    down: torch.Tensor
    qk_norm: tuple[torch.Tensor, torch.Tensor] | None  # per-head q and k RMSNorm (Qwen3)


class LlamaModel:
    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], device, dtype):
        self.cfg = cfg
        self.device = device
        self.dtype = dtype

        def w(name: str) -> torch.Tensor:
            return weights[name].to(device=device, dtype=dtype)

        def opt(name: str) -> torch.Tensor | None:
            return w(name) if name in weights else None

        self.embed = w("model.embed_tokens.weight")
        self.norm = w("model.norm.weight")
        self.lm_head = (
            w("lm_head.weight")
            if "lm_head.weight" in weights and not cfg.tie_word_embeddings
            else self.embed
        )
        self.layers: list[LayerWeights] = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            bias = None
            if cfg.attention_bias:
                bias = torch.cat([w(a + "q_proj.bias"), w(a + "k_proj.bias"), w(a + "v_proj.bias")])
            self.layers.append(
                LayerWeights(
                    input_norm=w(p + "input_layernorm.weight"),
                    post_norm=w(p + "post_attention_layernorm.weight"),
                    qkv=torch.cat(
                        [w(a + "q_proj.weight"), w(a + "k_proj.weight"), w(a + "v_proj.weight")]
                    ),
                    qkv_bias=bias,
                    o=w(a + "o_proj.weight"),
                    o_bias=opt(a + "o_proj.bias"),
                    gate_up=torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")]),
                    down=w(p + "mlp.down_proj.weight"),
                    qk_norm=(w(a + "q_norm.weight"), w(a + "k_norm.weight"))
                    if cfg.qk_norm
                    else None,
                )
            )
        self.rope = RotaryEmbedding(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, device
        )
        self.scale = cfg.head_dim**-0.5

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        ctx: StepContext,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        logits_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden states of the whole flat batch, then logits of ``logits_rows`` only."""
        cfg = self.cfg
        eps = cfg.rms_norm_eps
        gemm, gp, slots = ctx.gemm_backend, ctx.gemm_plan, ctx.slot_mapping
        h = self.embed[input_ids]
        rotary = ops.StepRotary(*self.rope.tables(ctx.positions, self.dtype))
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches):
            x = ops.rms_norm(h, layer.input_norm, eps)
            qkv = gemm.linear(gp, "qkv", x, layer.qkv, layer.qkv_bias)
            q = ops.rope_and_cache(qkv, rotary, slots, k_cache, v_cache, layer.qk_norm, eps)
            o = ctx.attn_backend.run(ctx.attn_plan, q, k_cache, v_cache, self.scale)
            h = gemm.linear(gp, "o_proj", o.flatten(1), layer.o, layer.o_bias).add_(h)
            x = ops.rms_norm(h, layer.post_norm, eps)
            act = ops.silu_mul(gemm.linear(gp, "gate_up", x, layer.gate_up, None))
            h = gemm.linear(gp, "down", act, layer.down, None).add_(h)
        h = ops.rms_norm(h[logits_rows], self.norm, eps)
        return gemm.linear(None, "lm_head", h, self.lm_head, None).float()

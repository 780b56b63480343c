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
from xyserve.model.config import ModelConfig, ModelLoadError
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

        hid, q_dim = cfg.hidden_size, cfg.num_heads * cfg.head_dim
        kv_dim, inter = cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size

        def w(name: str, *shape: int) -> torch.Tensor:
            """The tensor ``name``, checked against the shape the config implies: a config that
            disagrees with its weights is refused by name, not left to fail inside a step."""
            t = weights[name]
            if tuple(t.shape) != shape:
                raise ModelLoadError(
                    f"weight {name!r} has shape {tuple(t.shape)}, but config.json implies {shape}"
                )
            return t.to(device=device, dtype=dtype)

        def opt(name: str, *shape: int) -> torch.Tensor | None:
            return w(name, *shape) if name in weights else None

        self.embed = w("model.embed_tokens.weight", cfg.vocab_size, hid)
        self.norm = w("model.norm.weight", hid)
        if cfg.tie_word_embeddings:
            self.lm_head = self.embed
        else:  # untied: a missing lm_head is a missing weight (HF would not tie it either)
            self.lm_head = w("lm_head.weight", cfg.vocab_size, hid)
        self.layers: list[LayerWeights] = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            bias = None
            if cfg.attention_bias:
                bias = torch.cat(
                    [
                        w(a + "q_proj.bias", q_dim),
                        w(a + "k_proj.bias", kv_dim),
                        w(a + "v_proj.bias", kv_dim),
                    ]
                )
            qkv = [
                w(a + "q_proj.weight", q_dim, hid),
                w(a + "k_proj.weight", kv_dim, hid),
                w(a + "v_proj.weight", kv_dim, hid),
            ]
            gate_up = [
                w(p + "mlp.gate_proj.weight", inter, hid),
                w(p + "mlp.up_proj.weight", inter, hid),
            ]
            qk_norm = None
            if cfg.qk_norm:
                qk_norm = (
                    w(a + "q_norm.weight", cfg.head_dim),
                    w(a + "k_norm.weight", cfg.head_dim),
                )
            self.layers.append(
                LayerWeights(
                    input_norm=w(p + "input_layernorm.weight", hid),
                    post_norm=w(p + "post_attention_layernorm.weight", hid),
                    qkv=torch.cat(qkv),
                    qkv_bias=bias,
                    o=w(a + "o_proj.weight", hid, q_dim),
                    o_bias=opt(a + "o_proj.bias", hid),
                    gate_up=torch.cat(gate_up),
                    down=w(p + "mlp.down_proj.weight", hid, inter),
                    qk_norm=qk_norm,
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

"""An HF Llama checkpoint as an F32 (or BF16) GGUF file, for running llama.cpp on the same
weights.

    python -m xyserve.bench.peers.gguf_export MODEL_DIR OUT.gguf [--dtype bfloat16]

Only what ``bench offline`` needs: ``LlamaForCausalLM``-family checkpoints (Llama, Mistral
without sliding window) in float32, no RoPE scaling, written with the ``gguf`` package's writer
(the optional ``llama-cpp`` extra). llama.cpp's CPU path then computes in float32 like HF, so
with F32 K/V and flash attention off its greedy tokens equal HF's (``bench offline`` checks).
``dtype="bfloat16"`` writes the matrices as BF16 (rounded to nearest even, as torch rounds;
exact for a bfloat16 checkpoint) and keeps the norms F32, as llama.cpp's own converter does.

- Names: ``model.embed_tokens`` -> ``token_embd``, ``model.norm`` -> ``output_norm``,
  ``lm_head`` (or the tied embedding) -> ``output``, per layer ``input_layernorm`` ->
  ``blk.N.attn_norm``, ``post_attention_layernorm`` -> ``blk.N.ffn_norm``, ``q/k/v/o_proj`` ->
  ``attn_q/attn_k/attn_v/attn_output``, ``gate/up/down_proj`` -> ``ffn_gate/ffn_up/ffn_down``.
- RoPE: HF keeps q and k in the rotate-half layout and llama.cpp rotates interleaved pairs, so
  the rows of ``q_proj`` (per query head) and ``k_proj`` (per KV head) are permuted: rows seen
  as (heads, 2, head_dim / 2), the last two axes swapped.
- Tokenizer: a byte-level BPE ``tokenizer.json`` maps to llama.cpp's ``gpt2`` model (token
  list in id order, added tokens included, unused ids padded; special tokens CONTROL; merges
  as "a b"). A checkpoint without one (the bench's random-weight models, which run on token
  ids) gets a placeholder vocabulary: the 256 byte tokens, then ``<|xyN|>`` tokens, and one
  placeholder merge (llama.cpp loads no gpt2 vocabulary without merges).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from xyserve.model.loader import load_weights
from xyserve.tokenizer import byte_level_chars

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def rope_permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection from HF's rotate-half layout to llama.cpp's interleaved one."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def vocabulary(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their GGUF token types and the BPE merges."""
    normal, control = 1, 3  # gguf.TokenType.NORMAL, CONTROL
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        tokens = (byte_level_chars() + [f"<|xy{i}|>" for i in range(max(0, vocab_size - 256))])[
            :vocab_size
        ]
        # llama.cpp refuses a gpt2 vocabulary without merges: one placeholder merge of two
        # byte tokens (the bench feeds token ids, so it is never used)
        return tokens, [normal] * len(tokens), ["\u0120 \u0120"]
    data = json.loads(tok_file.read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(
            f"{tok_file}: only byte-level BPE tokenizers convert, not {model.get('type')}"
        )
    by_id: dict[int, tuple[str, int]] = {i: (t, normal) for t, i in model["vocab"].items()}
    for a in data.get("added_tokens", []):
        by_id[int(a["id"])] = (a["content"], control if a.get("special") else normal)
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        t, kind = by_id.get(i, (f"[PAD{i}]", 5))  # gguf.TokenType.UNUSED
        tokens.append(t)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


GGUF_DTYPES = ("float32", "bfloat16")


def export_gguf(model_dir: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write ``model_dir``'s checkpoint as a GGUF at ``out`` (matrices in ``dtype``: float32 or
    bfloat16); returns ``out``."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF export: dtype {dtype!r} is not one of {GGUF_DTYPES}")
    bf16 = dtype == "bfloat16"

    model_dir, out = Path(model_dir), Path(out)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{model_dir}: {arch} does not convert (only {ARCHITECTURES})")
    if why := unconvertible(cfg):
        raise ValueError(f"{model_dir}: {why} does not convert")
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    d = int(cfg.get("head_dim") or h // heads)
    layers, vocab = int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    weights = {k: v.to(torch.float32) for k, v in load_weights(model_dir).items()}
    left = sorted(
        k
        for k in set(weights) - _converted_names(layers) - {"lm_head.weight"}
        if not k.endswith("rotary_emb.inv_freq")  # a buffer older checkpoints saved
    )
    if left:
        # biases (attention_bias, mlp_bias), q/k norms...: a file without them computes
        # something else, so none is written
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        raise ValueError(f"{model_dir}: weights {left[:3]}{more} have no GGUF name here")

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_rope_dimension_count(d)
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(d)
    w.add_value_length(d)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)

    tokens, types, merges = vocabulary(model_dir, vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
        if isinstance(cfg.get(key), int):
            add(cfg[key])
    if isinstance(cfg.get("pad_token_id"), int):
        w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(_adds_bos(model_dir))

    def put(name: str, t: torch.Tensor) -> None:
        a = np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)
        if bf16 and a.ndim == 2:  # matrices; the norms' vectors stay F32
            qt = gguf.GGMLQuantizationType.BF16
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
        else:
            w.add_tensor(name, a)

    put("token_embd.weight", weights["model.embed_tokens.weight"])
    put("output_norm.weight", weights["model.norm.weight"])
    put("output.weight", weights.get("lm_head.weight", weights["model.embed_tokens.weight"]))
    for i in range(layers):
        for hf, gg in LAYER_NAMES.items():
            t = weights[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                t = rope_permute(t, heads)
            elif hf == "self_attn.k_proj":
                t = rope_permute(t, kv_heads)
            put(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def rope_theta(cfg: dict) -> float:
    """RoPE's base: ``rope_theta``, or where transformers 5 writes it, ``rope_parameters``."""
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
    return float(theta or 10000.0)


def unconvertible(cfg: dict) -> str | None:
    """What of ``cfg`` the llama GGUF written here cannot represent (None: nothing).

    llama.cpp's llama architecture runs SiLU, full causal attention and plain RoPE; a config
    asking for another activation, a sliding window or scaled RoPE would get a file that loads
    and computes another model, so it is refused instead.
    """
    if (act := cfg.get("hidden_act", "silu")) != "silu":
        return f"hidden_act {act!r}"
    for key in ("rope_scaling", "rope_parameters"):
        rope = cfg.get(key) or {}
        if (kind := rope.get("rope_type", rope.get("type", "default"))) != "default":
            return f"RoPE scaling ({key} type {kind!r})"
    arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    # Mistral slides every layer over sliding_window (HF's default 4096 where the key is
    # absent); a window as long as the context never cuts anything
    window = cfg.get("sliding_window", 4096) if arch == "MistralForCausalLM" else None
    if window is not None and int(window) < int(cfg.get("max_position_embeddings", 2048)):
        return f"a sliding window of {window} tokens"
    return None


def _converted_names(layers: int) -> set[str]:
    """The checkpoint's weight names that ``export_gguf`` writes (``lm_head`` aside)."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    return names | {f"model.layers.{i}.{hf}.weight" for i in range(layers) for hf in LAYER_NAMES}


def _adds_bos(model_dir: Path) -> bool:
    """Whether the HF tokenizer prepends a BOS (its ``add_bos_token``; false without one)."""
    f = model_dir / "tokenizer_config.json"
    if not f.is_file():
        return False
    return bool(json.loads(f.read_text()).get("add_bos_token", False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xyserve.bench.peers.gguf_export")
    ap.add_argument("model", help="HF checkpoint folder (config.json, safetensors)")
    ap.add_argument("out", help="the .gguf file to write")
    ap.add_argument("--dtype", default="float32", choices=GGUF_DTYPES, help="of the matrices")
    args = ap.parse_args(argv)
    if not Path(args.out).resolve().parent.is_dir():  # checked before the weights are read
        ap.error(f"{args.out}: no folder {Path(args.out).resolve().parent} to write it in")
    try:  # a checkpoint it cannot read or convert: said in one line, not a traceback
        print(export_gguf(args.model, args.out, args.dtype))
    except (OSError, ValueError) as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

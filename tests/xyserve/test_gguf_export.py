"""The HF -> F32 GGUF converter for the llama.cpp peer: RoPE layout, names, tokenizer, and (where
llama-cpp-python is installed) llama.cpp's logits against HF's on a tiny random Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xyserve.bench.peers import llama_cpp
from xyserve.bench.peers.gguf_export import LAYER_NAMES, export_gguf, rope_permute

gguf = pytest.importorskip("gguf")


def _rotate_half(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """HF's RoPE on [heads, d] (halves rotated together)."""
    d = x.shape[-1]
    ang = pos * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * c + torch.cat([-x2, x1], dim=-1) * s


def _interleaved(x: torch.Tensor, pos: int, base: float = 10000.0) -> torch.Tensor:
    """llama.cpp's RoPE on [heads, d] (adjacent pairs rotated)."""
    d = x.shape[-1]
    ang = pos * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * ang.cos() - b * ang.sin()
    out[..., 1::2] = b * ang.cos() + a * ang.sin()
    return out


def test_rope_permutation_keeps_every_attention_score():
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, d, h = 4, 2, 8, 16
    wq = torch.randn((heads * d, h), generator=gen, dtype=torch.float64)
    wk = torch.randn((kv_heads * d, h), generator=gen, dtype=torch.float64)
    x, y = (
        torch.randn(h, generator=gen, dtype=torch.float64),
        torch.randn(h, generator=gen, dtype=torch.float64),
    )
    q_hf = _rotate_half((wq @ x).view(heads, d), 5)
    k_hf = _rotate_half((wk @ y).view(kv_heads, d), 2)
    q_gg = _interleaved((rope_permute(wq, heads) @ x).view(heads, d), 5)
    k_gg = _interleaved((rope_permute(wk, kv_heads) @ y).view(kv_heads, d), 2)
    group = heads // kv_heads
    for r in range(heads):
        torch.testing.assert_close(q_gg[r] @ k_gg[r // group], q_hf[r] @ k_hf[r // group])
    assert not torch.equal(rope_permute(wq, heads), wq)  # the test would pass on no permutation


def test_export_names_shapes_and_tokenizer(tiny_llama, tmp_path):
    out = export_gguf(tiny_llama, tmp_path / "m.gguf")
    cfg = json.loads((tiny_llama / "config.json").read_text())
    r = gguf.GGUFReader(str(out))
    names = {t.name for t in r.tensors}
    layers = cfg["num_hidden_layers"]
    expect = {"token_embd.weight", "output_norm.weight", "output.weight"}
    expect |= {f"blk.{i}.{g}.weight" for i in range(layers) for g in LAYER_NAMES.values()}
    assert names == expect
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    from safetensors.torch import load_file

    hf = load_file(str(tiny_llama / "model.safetensors"))
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    torch.testing.assert_close(torch.from_numpy(emb.data.copy()), hf["model.embed_tokens.weight"])
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) >= cfg["vocab_size"]
    assert r.fields["general.architecture"].contents() == "llama"


def test_bfloat16_export_rounds_the_matrices_and_keeps_the_norms_float32(tiny_llama, tmp_path):
    out = export_gguf(tiny_llama, tmp_path / "m.gguf", "bfloat16")
    r = gguf.GGUFReader(str(out))
    kinds = {t.name: t.tensor_type for t in r.tensors}
    bf16, f32 = gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.F32
    assert kinds["output_norm.weight"] == kinds["blk.0.attn_norm.weight"] == f32
    assert kinds["token_embd.weight"] == kinds["blk.0.ffn_down.weight"] == bf16
    from safetensors.torch import load_file

    hf = load_file(str(tiny_llama / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    down = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    bits = torch.from_numpy(down.data.copy().view(np.int16)).view(torch.bfloat16)
    assert torch.equal(bits.reshape(hf.shape), hf.to(torch.bfloat16))  # torch's rounding
    with pytest.raises(ValueError, match="dtype"):
        export_gguf(tiny_llama, tmp_path / "x.gguf", "float16")


def test_refuses_what_it_cannot_convert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(ValueError, match="does not convert"):
        export_gguf(tmp_path, tmp_path / "m.gguf")


@pytest.mark.skipif(
    not llama_cpp.available(), reason="needs llama-cpp-python (the llama-cpp extra)"
)
def test_llama_cpp_logits_match_hf(tiny_llama, tmp_path):
    """F32 weights and K/V, flash attention off: llama.cpp's greedy tokens equal HF's."""
    from transformers import AutoModelForCausalLM

    from xyserve.bench.offline_systems import greedy_hf

    out = export_gguf(tiny_llama, tmp_path / "m.gguf")
    prompts = [[5, 17, 42, 9, 100, 7], [3, 3, 8]]
    llm = llama_cpp.LlamaCpp(out, len(prompts), 32, 1)
    try:
        got = llm.greedy(prompts, 8)
        llm.greedy([prompts[0]], 1)
        logits = torch.from_numpy(llm._logits(len(prompts[0]) - 1).copy())
    finally:
        llm.close()
    assert got == greedy_hf(tiny_llama, prompts, 8)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = m(torch.tensor([prompts[0]])).logits[0, -1]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def _random_llama(tmp_path, **overrides):
    """A random-weight Llama of a tiny config with ``overrides``, saved under ``tmp_path``."""
    from xyserve.bench.offline_workload import build_random_model

    cfg = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 260,
        "max_position_embeddings": 128,
        **overrides,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return build_random_model(tmp_path / "cfg.json", tmp_path / "model", 0)


def test_rope_theta_of_a_transformers_5_config_is_written(tmp_path):
    """transformers 5 saves ``rope_theta`` inside ``rope_parameters``: the file had the default
    base 10000 for a model of base 500000, a file that loads and computes another model."""
    model = _random_llama(tmp_path, rope_theta=500000.0)
    saved = json.loads((model / "config.json").read_text())
    assert "rope_theta" not in saved or saved["rope_theta"] is None  # where the bug came from
    r = gguf.GGUFReader(str(export_gguf(model, tmp_path / "m.gguf")))
    assert r.fields["llama.rope.freq_base"].contents() == 500000.0


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"attention_bias": True}, "bias"),  # were dropped: a file without the biases
        ({"mlp_bias": True}, "bias"),
    ],
)
def test_weights_it_cannot_name_are_refused(tmp_path, overrides, named):
    model = _random_llama(tmp_path, **overrides)
    with pytest.raises(ValueError, match=named):
        export_gguf(model, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
        (
            {"architectures": ["MistralForCausalLM"], "sliding_window": 64},
            "sliding window of 64",
        ),
        ({"architectures": ["MistralForCausalLM"]}, "sliding window of 4096"),  # HF's default
    ],
)
def test_configs_it_cannot_represent_are_refused(tmp_path, overrides, named):
    """Each was written as a plain Llama GGUF: another model under the same name."""
    model = _random_llama(tmp_path, max_position_embeddings=8192)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **overrides}))
    with pytest.raises(ValueError, match=named):
        export_gguf(model, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.skipif(
    not llama_cpp.available(), reason="needs llama-cpp-python (the llama-cpp extra)"
)
def test_llama_cpp_decodes_each_request_to_its_own_length(tmp_path, monkeypatch):
    """A wave was decoded to its longest request's length for every sequence, so llama.cpp was
    timed on tokens nobody asked for (the default workload's lengths differ); now each
    sequence stops at its own, with the same tokens as in a longer run."""
    out = export_gguf(_random_llama(tmp_path), tmp_path / "m.gguf")
    prompts = [[5, 17, 42, 9], [3, 3, 8]]
    llm = llama_cpp.LlamaCpp(out, 2, 32, 1)
    try:
        longer = llm.greedy(prompts, 6)
        got = llm.greedy(prompts, [2, 6])
    finally:
        llm.close()
    assert got == [longer[0][:2], longer[1]]

    decoded = []
    real = llama_cpp.LlamaCpp._decode
    monkeypatch.setattr(
        llama_cpp.LlamaCpp,
        "_decode",
        lambda self, items: (decoded.append(len(items)), real(self, items)),
    )
    llama_cpp.run_llama_cpp(out, prompts, [2, 6], 2, 1)
    warm_up = 4 + 1  # prompts[0][:4], then one more token
    assert sum(decoded) - warm_up == 4 + 3 + (2 - 1) + (6 - 1)  # prompts, then new tokens


def test_the_command_says_what_is_wrong_in_one_line(tmp_path, capsys):
    """A missing checkpoint, one it cannot convert, or a missing output folder: tracebacks."""
    from xyserve.bench.peers.gguf_export import main

    model = _random_llama(tmp_path, attention_bias=True)
    for argv, named in [
        ([str(tmp_path / "none"), str(tmp_path / "m.gguf")], "config.json"),
        ([str(model), str(tmp_path / "m.gguf")], "have no GGUF name"),
        ([str(model), str(tmp_path / "no" / "m.gguf")], "no folder"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and named in capsys.readouterr().err

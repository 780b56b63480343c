"""Checkpoint loading: shards, Llama-3 RoPE scaling, Mistral, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.model.config import ModelLoadError

from tiny_models import build_model


def hf_next_tokens(path, prompt, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "arch,kw",
    [
        (
            "llama",
            dict(
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
                num_key_value_heads=1,
            ),
        ),
        ("mistral", dict(sliding_window=None)),
    ],
)
def test_variants_match_hf(tmp_path, arch, kw):
    path = build_model(tmp_path / arch, arch, with_tokenizer=False, **kw)
    prompt = list(range(3, 203, 2))  # 100 tokens: past the original RoPE length
    want = hf_next_tokens(path, prompt, 5)
    llm = LLM(str(path), skip_tokenizer_init=True, max_num_batched_tokens=32)
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=5))
    assert out[0].outputs[0].token_ids == want


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    want = hf_next_tokens(path, [5, 6, 7], 4)
    llm = LLM(str(sharded), skip_tokenizer_init=True)
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0, max_tokens=4))
    assert out[0].outputs[0].token_ids == want


def test_unsupported_architecture_is_named(tmp_path):
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        LLM(str(path), skip_tokenizer_init=True)


def test_missing_files_are_named(tmp_path):
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLM(str(path), skip_tokenizer_init=True)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_model(tmp_path / "n", "llama", with_tokenizer=False)
        LLM(str(tmp_path / "n"))
    with pytest.raises((FileNotFoundError, ModelLoadError), match="nowhere"):
        LLM(str(tmp_path / "nowhere"))

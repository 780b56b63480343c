"""The bundled pair runs in xyserve with the same greedy tokens as in HF transformers."""

from __future__ import annotations

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.models import BUNDLED_MODELS, resolve_model

PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def __init__(self):", "for i in"]


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_matches_transformers(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    tok = AutoTokenizer.from_pretrained(str(path))
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    llm = LLM(name, max_num_batched_tokens=64)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        ids = torch.tensor([tok.encode(prompt)])
        assert out.prompt_token_ids == ids[0].tolist()
        with torch.no_grad():
            for _ in range(12):
                ids = torch.cat([ids, hf(ids).logits[:, -1:].argmax(-1)], dim=1)
        assert out.outputs[0].token_ids == ids[0, len(out.prompt_token_ids) :].tolist(), prompt


def test_default_model_is_the_bundled_target():
    llm = LLM(max_num_batched_tokens=32)
    assert llm.llm_engine.model_path == resolve_model(None)
    out = llm.generate("def add(a, b):", SamplingParams(temperature=0, max_tokens=8))
    assert out[0].outputs[0].token_ids

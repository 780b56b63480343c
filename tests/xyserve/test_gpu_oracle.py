"""On a CUDA GPU: the engine's greedy tokens and first-step logits against HF transformers.

float32 must match as on CPU (exact float32 dots: Triton's ``input_precision="ieee"``).
bfloat16 cannot match token for token. Its yardstick is HF transformers itself in bfloat16:
the engine's first-step logits may be at most twice as far from HF float32's as HF bfloat16's
are, and each greedy token must equal HF float32's unless HF's top-2 margin at that step is
within twice that error, after which the sequences may part (the rest of that prompt is not
compared). Each runs with untuned GEMM buckets on cuBLAS (the engine's default) and on
SmoothGEMM's Triton tiles. Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from test_oracle import make_prompts

from xyserve import LLM, SamplingParams

from tiny_models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MAX_NEW = 6


def hf_steps(model, prompts):
    """HF float32 greedy tokens, each step's top-2 margin, and the first-step logits."""
    toks, margins, firsts = [], [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device="cuda")
            out, marg = [], []
            for step in range(MAX_NEW):
                logits = model(ids).logits[0, -1].float()
                if step == 0:
                    firsts.append(logits.cpu())
                top = torch.topk(logits, 2)
                out.append(int(top.indices[0]))
                marg.append(float(top.values[0] - top.values[1]))
                ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
            toks.append(out)
            margins.append(marg)
    return toks, margins, firsts


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def gpu_oracle(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    kw = {"tie_word_embeddings": True} if request.param == "qwen2" else {}
    path = build_model(tmp_path_factory.mktemp(request.param), request.param, **kw)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval().cuda()
    prompts = make_prompts(model.config.vocab_size)
    toks, margins, firsts = hf_steps(model, prompts)
    half = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval().cuda()
    hf_bf16_err = max(
        float((a - b).abs().max()) for a, b in zip(hf_steps(half, prompts)[2], firsts)
    )
    return path, prompts, toks, margins, firsts, hf_bf16_err


def _run(path, prompts, dtype: str, first_logits):
    llm = LLM(
        str(path),
        device="cuda",
        dtype=dtype,
        block_size=16,
        max_num_batched_tokens=24,
        max_num_seqs=6,
        attention_backend="meta",
        gemm_backend="smooth",
    )
    eng = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    eng.kv.check_no_leak()
    return outs, [first_logits[tuple(p)] for p in prompts]


@pytest.fixture(params=["cublas", "triton"])
def gemm_tiles(request):
    if request.param == "triton":
        request.getfixturevalue("triton_gemm_tiles")
    return request.param


def test_float32_matches_hf_exactly(gpu_oracle, first_logits, gemm_tiles):
    path, prompts, toks, _, firsts, _ = gpu_oracle
    outs, got = _run(path, prompts, "float32", first_logits)
    for i, (o, ref) in enumerate(zip(outs, toks)):
        assert o.outputs[0].token_ids == ref, f"prompt {i}"
        torch.testing.assert_close(got[i].float().cpu(), firsts[i], atol=1e-4, rtol=0)


def test_bfloat16_agrees_except_at_near_ties(gpu_oracle, first_logits, gemm_tiles):
    path, prompts, toks, margins, firsts, hf_bf16_err = gpu_oracle
    outs, got = _run(path, prompts, "bfloat16", first_logits)
    worst = max(float((got[i].float().cpu() - firsts[i]).abs().max()) for i, o in enumerate(outs))
    assert worst <= 2 * hf_bf16_err, f"first-step logit error {worst}, HF bf16's {hf_bf16_err}"
    compared = 0
    for i, (o, ref) in enumerate(zip(outs, toks)):
        for j, (a, b) in enumerate(zip(o.outputs[0].token_ids, ref)):
            if a != b:
                assert margins[i][j] < 2 * max(worst, hf_bf16_err), f"prompt {i} step {j}"
                break
            compared += 1
    assert compared >= len(prompts) * MAX_NEW // 2  # most of the tokens were compared

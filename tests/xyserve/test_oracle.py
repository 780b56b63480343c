"""Engine greedy tokens and first-step logits equal HF transformers' on the same weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.kernels.backend import attention_backend_names, gemm_backend_names
from xyserve.kernels.cpu import prepacked
from xyserve.plan.gemm_table import TABLE_FILE, GemmConfig, GemmTable, buckets, model_shapes
from xyserve.plan.machine import machine_signature

from tiny_models import build_model

MAX_NEW = 6


def make_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(1, vocab) for _ in range(53)]  # ends inside a block
    prompts = []
    for i in range(18):
        if i % 3 == 0:  # a group sharing a long prefix, diverging at various tokens
            cut = rng.randrange(20, 53)
            tail = [rng.randrange(1, vocab) for _ in range(rng.randrange(1, 30))]
            prompts.append(shared[:cut] + tail)
        else:
            prompts.append([rng.randrange(1, vocab) for _ in range(rng.choice([1, 3, 17, 40, 90]))])
    prompts.append(list(shared))  # an exact repeat of a cached prompt
    return prompts


def hf_greedy(model, prompts):
    refs, firsts = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out = []
            for step in range(MAX_NEW):
                logits = model(ids).logits[0, -1]
                if step == 0:
                    firsts.append(logits.float())
                tok = int(logits.argmax())
                out.append(tok)
                ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
            refs.append(out)
    return refs, firsts


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def oracle(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    kw = {"tie_word_embeddings": True} if request.param == "qwen2" else {}
    if request.param == "qwen3":
        kw["head_dim"] = 24  # an explicit, non-default head size
    path = build_model(tmp_path_factory.mktemp(request.param), request.param, **kw)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    prompts = make_prompts(model.config.vocab_size)
    refs, firsts = hf_greedy(model, prompts)
    return path, prompts, refs, firsts


META_SMOOTH = dict(
    max_num_batched_tokens=24, max_num_seqs=6, attention_backend="meta", gemm_backend="smooth"
)
CONFIGS = {
    # Mixed P/D steps (a chunk beside decodes): split steps off, since under auto whether a
    # CPU engine splits depends on its fused decode call's calibrated row limit (a timing).
    "chunked": dict(max_num_batched_tokens=16, max_num_seqs=4, split_prefill_decode="off"),
    # ...and the same load in split steps: prefill work and decodes in turn, never together.
    "split-steps": dict(max_num_batched_tokens=16, max_num_seqs=4, split_prefill_decode="on"),
    "no-prefix-cache-sdpa-torch": dict(
        max_num_batched_tokens=64,
        enable_prefix_caching=False,
        attention_backend="sdpa",
        gemm_backend="torch",
    ),
    "preemption": dict(max_num_batched_tokens=64, num_kv_blocks=14, max_num_seqs=8),
    "baseline-policy": dict(scheduler_policy="baseline", max_num_batched_tokens=64),
    "meta-smooth": META_SMOOTH,
    # A tuned table that picks the swapped GEMM everywhere: activations then flow column-major.
    "meta-smooth-swap": {**META_SMOOTH, "table_impl": "swap"},
    # ...and the padded swap: column-major views with a padded row stride.
    "meta-smooth-swap8": {**META_SMOOTH, "table_impl": "swap8"},
    # ...and oneDNN on weights prepacked once (kernels.cpu.prepacked).
    "meta-smooth-dnnl": {**META_SMOOTH, "table_impl": "dnnl"},
}


def with_table(path: Path, tmp: Path, impl: str, budget: int, dtype: str = "float32") -> Path:
    """The model's files seen from a folder that also holds a ``dtype`` table choosing ``impl``."""
    for f in path.iterdir():
        (tmp / f.name).symlink_to(f)
    cfg = json.loads((path / "config.json").read_text())
    shapes = model_shapes(cfg)
    table = GemmTable(budget=budget, shapes=shapes, machine=machine_signature("cpu"), dtype=dtype)
    for op in shapes:
        for pm in buckets(budget):
            table.set(op, pm, GemmConfig(cpu_impl=impl))
    table.save(tmp / TABLE_FILE)
    return tmp


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_and_first_logits_match_hf(oracle, name, tmp_path, first_logits):
    path, prompts, refs, firsts = oracle
    cfg = dict(CONFIGS[name])
    impl = cfg.pop("table_impl", None)
    if impl is not None:
        path = with_table(path, tmp_path, impl, cfg["max_num_batched_tokens"])
    if (
        cfg.get("attention_backend", "sdpa") not in attention_backend_names()
        or cfg.get("gemm_backend", "torch") not in gemm_backend_names()
    ):
        pytest.fail(f"backend of config {name} is not registered")
    llm = LLM(str(path), block_size=16, **cfg)
    eng = llm.llm_engine
    # Per step: whether it carried prompt work and decodes (of requests that have an output
    # token already) together; a one-token prompt's first stage counts as prompt work.
    mixed: list[bool] = []
    schedule = eng.scheduler.schedule

    def decodes(st) -> bool:
        return st.request.num_output_tokens > 0 and st.context_len >= st.request.num_tokens - 1

    def spy():
        out = schedule()
        mixed.append(len({decodes(st) for st in out.stages}) == 2)
        return out

    eng.scheduler.schedule = spy
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for i, (o, ref) in enumerate(zip(outs, refs)):
        assert o.outputs[0].token_ids == ref, f"prompt {i} (len {len(prompts[i])})"
        got = first_logits[tuple(prompts[i])]
        torch.testing.assert_close(got, firsts[i], atol=1e-4, rtol=0)
    if name == "chunked":
        assert eng.kv.prefix_hit_rate > 0.05
        assert any(mixed)
    if name == "split-steps":
        assert mixed and not any(mixed)
    if name == "preemption":
        assert eng.scheduler.num_preemptions > 0
    eng.kv.check_no_leak()


# bfloat16: one bfloat16 rounding apart, the engine and HF may pick different tokens where the
# top two logits are that close, so the oracle is HF's bfloat16 logits along the engine's own
# tokens (``bench offline``'s check): each token the engine picked is within
# ``BF16_CHECK_REL_TOL`` of the row's largest |logit| of HF's best there.


BF16_CONFIGS = {
    "eager": (None, dict(cpu_fused_decode="off")),
    "eager-dnnl": ("dnnl", dict(cpu_fused_decode="off")),
    # one request at a time: every decode step is one row, which "on" sends to the fused call
    "fused": (None, dict(cpu_fused_decode="on", max_num_seqs=1)),
}


@pytest.mark.parametrize("name", list(BF16_CONFIGS))
def test_bfloat16_engine_follows_hf_bfloat16(oracle, name, tmp_path, first_logits):
    """``dtype="bfloat16"`` on the CPU against HF in bfloat16: the eager forward on oneDNN's
    bfloat16 GEMMs (AMX or AVX-512 BF16 where the CPU has them; ``dnnl``: on weights
    prepacked once), and decode steps in the fused call (float32 arithmetic on the bfloat16
    weights, bfloat16 K/V caches)."""
    from xyserve.bench.offline_systems import (
        BF16_CHECK_REL_TOL,
        first_off_greedy,
        hf_logits_along,
    )

    path, prompts, _, _ = oracle
    prompts = prompts[:8]
    impl, engine_args = BF16_CONFIGS[name]
    if impl is not None:
        path = with_table(path, tmp_path, impl, 64, dtype="bfloat16")
    llm = LLM(
        str(path),
        dtype="bfloat16",
        max_num_batched_tokens=64,
        skip_tokenizer_init=True,
        **engine_args,
    )
    if name == "fused":
        assert llm.llm_engine.runner.fused is not None
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    toks = [list(o.outputs[0].token_ids) for o in outs]
    logits = hf_logits_along(path, prompts, toks, torch.bfloat16)
    assert first_off_greedy(toks, logits, BF16_CHECK_REL_TOL, MAX_NEW, len(prompts)) is None
    for p, lg in zip(prompts, logits):  # and the first token's logits, within that tolerance
        tol = BF16_CHECK_REL_TOL * float(lg[0].abs().max())
        torch.testing.assert_close(first_logits[tuple(p)].float(), lg[0], atol=tol, rtol=0)
    if impl == "dnnl":  # the table applied: its weights were packed for oneDNN where the CPU
        # has native bfloat16 (elsewhere ``dnnl`` runs F.linear and packs nothing)
        packed = hasattr(llm.llm_engine.model.layers[0].qkv, "_xyserve_dnnl_packed")
        assert packed == prepacked.available(torch.bfloat16)
    llm.llm_engine.kv.check_no_leak()

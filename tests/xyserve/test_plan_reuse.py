"""Plan reuse across decode steps (``engine.step_inputs``): every patched step equals a fresh
build of the same step, through admissions, finishes, preemption, chunked prefill, prefix
caching and speculation (n-gram and a draft model, whose runner reuses its plans too), and the
outputs equal those of an engine that builds every step afresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.engine.runner import ModelRunner
from xyserve.engine.step_inputs import StepInputs
from xyserve.plan.meta_attention import MetaAttentionPlan

ENGINE = dict(
    skip_tokenizer_init=True,
    max_num_batched_tokens=24,  # prompts are chunked
    block_size=4,  # a new block every 4 decode steps
    num_kv_blocks=24,  # not everything fits: preemption
    enable_prefix_caching=True,
    cpu_fused_decode="off",  # the eager forward's plans are what is checked here
)


def _prompts() -> list[list[int]]:
    shared = [5, 6, 7, 8, 9, 10, 11]
    return [shared + [20 + i, 21, 22, 20 + i, 21] + [30 + i] * i for i in range(6)] + [[3, 4]]


def _params() -> list[SamplingParams]:
    # Different lengths: requests finish at different steps and the batch shrinks.
    return [SamplingParams(temperature=0, max_tokens=9 + 3 * i, ignore_eos=True) for i in range(7)]


def assert_same_inputs(got: StepInputs, want: StepInputs) -> None:
    for name in ("ids", "positions", "logit_rows"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.rows == want.rows
    gm, wm = got.meta, want.meta
    assert gm.table.rows == wm.table.rows
    for name in ("slot_mapping", "query_start_loc", "kv_lens", "block_tables"):
        assert torch.equal(getattr(gm, name), getattr(wm, name)), name
    assert len(gm.tree_masks) == len(wm.tree_masks)
    for a, b in zip(gm.tree_masks, wm.tree_masks):
        assert (a is None and b is None) or torch.equal(a, b)
    # SmoothGEMM's plan: its bucket (its memo of looked-up configs only grows as ops run).
    for name in ("num_tokens", "padded_m"):
        assert getattr(got.gemm_plan, name, None) == getattr(want.gemm_plan, name, None)
    gp, wp = got.attn_plan, want.attn_plan
    assert type(gp) is type(wp)
    if isinstance(wp, MetaAttentionPlan):
        assert gp.task_table() == wp.task_table()
        assert len(gp.packs) == len(wp.packs)
        assert (gp.decode is None) == (wp.decode is None)
        if wp.decode is not None:
            for name in ("q_rows", "kv_lens", "tables", "worker_offsets"):
                np.testing.assert_array_equal(getattr(gp.decode, name), getattr(wp.decode, name))
            assert torch.equal(gp.decode.rows, wp.decode.rows)
            assert gp.decode.total_keys == wp.decode.total_keys == int(wp.decode.kv_lens.sum())


def check_every_step(monkeypatch) -> dict[str, int]:
    """Compare every runner's inputs with a fresh build of the same step; count reuses."""
    counts = {"steps": 0, "reused": 0}
    real = ModelRunner.prepare

    def prepare(self, out, block_tables, table=None):
        last = self._last
        got = real(self, out, block_tables, table)
        want = self.build_inputs(out, self.build_table(out, block_tables))
        gp, lp = got.attn_plan, None if last is None else last.attn_plan
        if isinstance(gp, MetaAttentionPlan) and isinstance(lp, MetaAttentionPlan):
            if gp.decode is not None and gp.decode is lp.decode:  # patched, not rebuilt
                assert gp.tasks is None  # the step builds no task table (the run reads none)
        assert_same_inputs(got, want)
        counts["steps"] += 1
        counts["reused"] += last is not None and got.ids is last.ids
        return got

    monkeypatch.setattr(ModelRunner, "prepare", prepare)
    return counts


def _run(llm: LLM) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts()], _params(), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def fresh_outputs(tiny_llama) -> list[list[int]]:
    """Greedy outputs of an engine that builds every step's plans afresh."""
    llm = LLM(str(tiny_llama), **ENGINE)
    llm.llm_engine.runner.reuse_plans = False
    return _run(llm)


@pytest.mark.parametrize(
    "spec",
    [
        None,
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1},
        {"method": "draft_model", "model": "SELF", "num_speculative_tokens": 3},
    ],
    ids=["plain", "ngram", "draft"],
)
def test_reused_plans_equal_fresh_ones_and_outputs_stay(
    tiny_llama, fresh_outputs, monkeypatch, spec
):
    counts = check_every_step(monkeypatch)
    if spec is not None and spec.get("model") == "SELF":
        spec = {**spec, "model": str(tiny_llama)}
        # The draft through the engine's runner (a CPU float32 draft would run fused, with
        # no runner and no plans), so that its runner's reuse is checked as well.
        monkeypatch.setattr("xyserve.spec.draft_forward.unsupported", lambda model: "test")
    llm = LLM(str(tiny_llama), speculative_config=spec, **ENGINE)
    eng = llm.llm_engine
    assert _run(llm) == fresh_outputs
    assert eng.scheduler.num_preemptions > 0
    assert 0 < counts["reused"] < counts["steps"]
    eng.kv.check_no_leak()
    # New admissions into a running batch: the step after one is built afresh, and reuse
    # resumes once the batch is steady again.
    before = dict(counts)
    eng.add_request({"prompt_token_ids": [7, 8, 9]}, SamplingParams(temperature=0, max_tokens=12))
    for _ in range(4):
        eng.step()
    eng.add_request({"prompt_token_ids": [9, 9]}, SamplingParams(temperature=0, max_tokens=12))
    while eng.has_unfinished_requests():
        eng.step()
    assert counts["steps"] > before["steps"] and counts["reused"] > before["reused"]
    eng.kv.check_no_leak()


def test_a_failed_forward_is_no_base_for_the_next_step(tiny_llama, monkeypatch):
    llm = LLM(str(tiny_llama), skip_tokenizer_init=True, cpu_fused_decode="off")
    runner = llm.llm_engine.runner
    eng = llm.llm_engine
    eng.add_request({"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=8, ignore_eos=True))
    eng.step()
    eng.step()
    assert runner._last is not None
    real = runner.model.forward

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(runner.model, "forward", boom)
    with pytest.raises(RuntimeError):
        eng.step()
    assert runner._last is None
    monkeypatch.setattr(runner.model, "forward", real)

"""The CPU fused decode path (engine.runner_fused) against the eager forward and HF."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.config import EngineConfig
from xyserve.engine import runner_fused
from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request
from xyserve.engine.runner import ModelRunner
from xyserve.engine.scheduler import ScheduledStage, SchedulerOutput
from xyserve.model.loader import load_model

from tiny_models import build_model

BLOCK = 4  # small blocks: the decode rows cross block boundaries
NUM_BLOCKS = 32


@pytest.fixture(scope="module", params=["llama", "qwen2_bias_tied", "qwen3_qk_norm"])
def model_path(request, tmp_path_factory):
    arch, kw = {
        "llama": ("llama", {}),
        "qwen2_bias_tied": ("qwen2", {"tie_word_embeddings": True}),
        "qwen3_qk_norm": ("qwen3", {"head_dim": 24}),
    }[request.param]
    return build_model(tmp_path_factory.mktemp(request.param), arch, with_tokenizer=False, **kw)


def _runner(path, mode: str, dtype: torch.dtype = torch.float32) -> ModelRunner:
    model = load_model(path, torch.device("cpu"), dtype)
    return ModelRunner(model, NUM_BLOCKS, BLOCK, "meta", "torch", cpu_fused_decode=mode)


def _steps(runner: ModelRunner, prompts: list[list[int]], decode: list[list[int]]):
    """A prefill of every prompt (eager: more rows than the fast path takes), then decode
    steps of one token per request; each step's logits, and the requests."""
    kv = KVCacheManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=False)
    reqs = [Request(f"r{i}", list(p), max_tokens=64) for i, p in enumerate(prompts)]
    out = []
    plan = [[(r, len(p)) for r, p in zip(reqs, prompts)]]
    plan += [[(r, 1) for r in reqs] for _ in decode]
    for step, work in enumerate(plan):
        stages = []
        for i, (r, n) in enumerate(work):
            if step > 0:
                r.output_token_ids.append(decode[step - 1][i])
            assert kv.allocate(r, n)
            stages.append(ScheduledStage(r, n, 0, r.num_computed_tokens))
        tables = {r.request_id: kv.block_table(r.request_id) for r in reqs}
        res = runner.execute(SchedulerOutput(stages=stages), tables)
        out.append(torch.cat([res.logits[res.rows[r.request_id]] for r in reqs]).clone())
        for r, n in work:
            r.num_computed_tokens += n
    return out, reqs


def _decode_tokens(vocab: int, steps: int, batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, vocab, (steps, batch), generator=g).tolist()


def test_one_row_steps_equal_the_eager_forward_and_hf(model_path, monkeypatch):
    """Seven decode rows after a 3-token prompt cross two block boundaries (block 4)."""
    fused = _runner(model_path, "on")
    eager = _runner(model_path, "off")
    assert fused.fused is not None and eager.fused is None
    assert not fused.fused.weights.amx  # AMX panels are for bfloat16 engines only
    calls = []
    real = runner_fused.FusedDecode.run
    monkeypatch.setattr(
        runner_fused.FusedDecode, "run", lambda *a: calls.append(1) or real(*a), raising=True
    )
    vocab = fused.model.cfg.vocab_size
    prompt = [[5, 17, 2]]
    decode = _decode_tokens(vocab, 7, 1)
    got, reqs = _steps(fused, prompt, decode)
    want, _ = _steps(eager, prompt, decode)
    assert len(calls) == len(decode)  # every decode step took the fast path
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert g.argmax(-1).tolist() == w.argmax(-1).tolist()
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    with torch.no_grad():
        ref = hf.eval()(torch.tensor([reqs[0].prompt_token_ids + reqs[0].output_token_ids]))
    torch.testing.assert_close(got[-1][0], ref.logits[0, -1], rtol=1e-5, atol=1e-5)


def test_several_requests_in_one_fused_step(model_path):
    """The fast path's rows for a decode batch of three requests (with a max_rows that lets
    it take them) equal the eager forward's: each request's row reads its own block table."""
    fused = _runner(model_path, "on")
    fused.fused.max_rows = 3
    eager = _runner(model_path, "off")
    prompts = [[1, 2, 3, 4, 5], [9], [7, 7, 7, 7, 7, 7, 7, 7, 7]]
    decode = _decode_tokens(fused.model.cfg.vocab_size, 5, 3)
    got, _ = _steps(fused, prompts, decode)
    want, _ = _steps(eager, prompts, decode)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [(3, 3), (6, 2), (7, 1), (14, 2)])
def test_query_head_groups_of_every_size(tmp_path, heads):
    """Grouped-query attention in the fused call with groups of 1, 3 and 7 query heads per
    K/V head (one and two K/V heads), a head size of 16, against the eager forward over a
    decode batch of three requests (several rows of one request are a verify stage's case:
    ``test_verify_steps_equal_the_eager_forward``)."""
    num_heads, num_kv = heads
    path = build_model(
        tmp_path / "m", with_tokenizer=False, hidden_size=16 * num_heads, head_dim=16,
        num_attention_heads=num_heads, num_key_value_heads=num_kv,
    )  # fmt: skip
    fused = _runner(path, "on")
    fused.fused.max_rows = 3
    eager = _runner(path, "off")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]]
    decode = _decode_tokens(fused.model.cfg.vocab_size, 6, 3)
    got, _ = _steps(fused, prompts, decode)
    want, _ = _steps(eager, prompts, decode)
    for g, w in zip(got, want):  # logits up to ~10 here: float32 summation order apart
        torch.testing.assert_close(g, w, rtol=1e-5, atol=3e-5)


@pytest.mark.parametrize("batch", [3, 10])
def test_bfloat16_steps_follow_the_eager_bfloat16_forward(model_path, batch):
    """A bfloat16 model's fused steps: float32 arithmetic on its bfloat16 weights, its K/V
    caches bfloat16 (written rounded by the fused call, read back widened, and read by the
    eager prefill's and the fused steps' attention alike). Against the eager bfloat16 forward,
    which also rounds every activation to bfloat16: equal up to those roundings. On a host
    with AMX the linear layers are AMX panels (inputs rounded to bfloat16), read by the FMA
    tile in steps of 3 rows and by AMX tiles in steps of 10."""
    from xyserve.kernels.cpu import amx

    fused = _runner(model_path, "on", torch.bfloat16)
    assert fused.fused is not None and fused.fused.k_cache.dtype.name == "uint16"
    cfg = fused.model.cfg
    widths = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim)
    assert fused.fused.weights.amx == (amx.available() and all(n % 32 == 0 for n in widths))
    fused.fused.max_rows = batch
    calls: list[int] = []
    fused.fused.run = _counted(fused.fused.run, calls)
    eager = _runner(model_path, "off", torch.bfloat16)
    prompts = [[1, 2, 3, 4, 5], [9], [7, 7, 7, 7, 7, 7, 7, 7, 7]]
    prompts = (prompts + [[3 + i, 4] for i in range(batch)])[:batch]
    decode = _decode_tokens(fused.model.cfg.vocab_size, 5, batch)
    got, _ = _steps(fused, prompts, decode)
    want, _ = _steps(eager, prompts, decode)
    assert len(calls) == len(decode)
    for g, w in zip(got, want):
        scale = float(w.float().abs().max())
        torch.testing.assert_close(g.float(), w.float(), atol=2**-5 * scale, rtol=0)
    # the fused call wrote the runner's own bfloat16 caches, not a copy of them
    k = fused.kv_caches[0][0]
    assert k.dtype == torch.bfloat16
    assert np.shares_memory(fused.fused.k_cache, k.view(torch.int16).numpy())


def _counted(fn, calls: list[int]):
    def run(*args):
        calls.append(1)
        return fn(*args)

    return run


@pytest.mark.parametrize("parents", [None, (-1, -1, 0, 1, 2)])  # a chain of 4; a tree of 5
def test_verify_steps_equal_the_eager_forward(model_path, parents):
    """A verify stage (the last sampled token and the proposals) across a block boundary,
    beside a decode row of another request: a chain's rows are causal; a tree's nodes see the
    history, the real token and their ancestors, at their depth's position."""
    logits = {}
    for mode in ("on", "off"):
        runner = _runner(model_path, mode)
        calls: list[int] = []
        if runner.fused is not None:
            runner.fused.max_rows = 8
            runner.fused.run = _counted(runner.fused.run, calls)
        kv = KVCacheManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=False)
        a = Request("a", [5, 17, 2, 9, 11, 4], max_tokens=64)  # 6 tokens: verify from 6
        b = Request("b", [3, 8], max_tokens=64)
        for r in (a, b):
            assert kv.allocate(r, r.num_tokens)
        tables = {r.request_id: kv.block_table(r.request_id) for r in (a, b)}
        pre = [ScheduledStage(r, r.num_tokens, 0, 0) for r in (a, b)]
        runner.execute(SchedulerOutput(stages=pre), tables)
        a.num_computed_tokens, b.num_computed_tokens = 6, 2
        a.output_token_ids.append(21)
        b.output_token_ids.append(30)
        a.spec_token_ids = [40, 41, 42, 43] if parents is None else [40, 41, 42, 43, 44]
        a.spec_tree_parents = parents
        n = 1 + len(a.spec_token_ids)
        assert kv.allocate(a, n) and kv.allocate(b, 1)
        tables = {r.request_id: kv.block_table(r.request_id) for r in (a, b)}
        step = [ScheduledStage(a, n, n - 1, 6), ScheduledStage(b, 1, 0, 2)]
        calls.clear()  # (the prefill's 8 rows may have taken it too)
        res = runner.execute(SchedulerOutput(stages=step), tables)
        assert len(calls) == (mode == "on")  # the verify step took the fused call
        assert res.rows["a"].stop - res.rows["a"].start == n
        logits[mode] = res.logits.clone()
    torch.testing.assert_close(logits["on"], logits["off"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dtype,head_dim",
    [(torch.float32, 16), (torch.bfloat16, 16), (torch.float32, 64)],
    ids=["f32", "bf16", "f32-d64"],
)
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)], ids=["group1", "group3"])
@pytest.mark.parametrize(
    "proposals,parents", [(8, None), (11, None), (5, (-1, -1, 0, 1, 2))], ids=["k8", "k11", "tree"]
)
def test_verify_rows_over_whole_key_tiles(tmp_path, dtype, head_dim, heads, proposals, parents):
    """A verify stage after 37 keys in blocks of 16, beside a one-row decode: its queries per
    K/V head (from ``SCORE_TILE_QUERIES`` on; 36 with k = 11 and groups of 3, more than one
    tile's lanes) score keys 0-31 ``KEY_TILE`` at a time in the score tile and keys 32-36 one
    at a time; a tree's nodes also see their ancestors as extra keys. Against the eager
    forward, in float32 and with bfloat16 weights and caches (heads of 16: in bfloat16, the
    eager forward's rounding of every activation outgrows any useful bound with heads of 64),
    and with heads of 64 (a score tile's k over four vectors' worth) in float32, to 1e-4 of
    the largest logit: summed in other orders over 64-wide heads, the two paths part by up to
    about 3e-5 of it (before the score tile too), where a key or query taken wrongly is off
    by a tenth of it or more."""
    from xyserve.kernels.cpu import fused_forward as ff

    num_heads, num_kv = heads
    path = build_model(
        tmp_path / "m", with_tokenizer=False, hidden_size=head_dim * num_heads, head_dim=head_dim,
        num_attention_heads=num_heads, num_key_value_heads=num_kv,
    )  # fmt: skip
    block = 16
    assert block % ff.KEY_TILE == 0 and 37 // ff.KEY_TILE * ff.KEY_TILE == 32
    assert (1 + proposals) * (num_heads // num_kv) >= ff.SCORE_TILE_QUERIES
    logits = {}
    for mode in ("on", "off"):
        model = load_model(path, torch.device("cpu"), dtype)
        runner = ModelRunner(model, 16, block, "meta", "torch", cpu_fused_decode=mode)
        calls: list[int] = []
        if runner.fused is not None:
            runner.fused.max_rows = 16
            runner.fused.run = _counted(runner.fused.run, calls)
        kv = KVCacheManager(16, block, enable_prefix_caching=False)
        a = Request("a", [(7 * i) % 50 + 1 for i in range(37)], max_tokens=64)
        b = Request("b", [(3 * i) % 50 + 1 for i in range(20)], max_tokens=64)
        for r in (a, b):
            assert kv.allocate(r, r.num_tokens)
        tables = {r.request_id: kv.block_table(r.request_id) for r in (a, b)}
        pre = [ScheduledStage(r, r.num_tokens, 0, 0) for r in (a, b)]
        runner.execute(SchedulerOutput(stages=pre), tables)  # 57 rows: the eager forward
        a.num_computed_tokens, b.num_computed_tokens = 37, 20
        a.output_token_ids.append(21)
        b.output_token_ids.append(30)
        a.spec_token_ids = [40 + i for i in range(proposals)]
        a.spec_tree_parents = parents
        n = 1 + proposals
        assert kv.allocate(a, n) and kv.allocate(b, 1)
        tables = {r.request_id: kv.block_table(r.request_id) for r in (a, b)}
        step = [ScheduledStage(a, n, n - 1, 37), ScheduledStage(b, 1, 0, 20)]
        calls.clear()
        res = runner.execute(SchedulerOutput(stages=step), tables)
        assert len(calls) == (mode == "on")  # the verify step took the fused call
        logits[mode] = res.logits.float().clone()
    if dtype == torch.float32:
        scale = 1e-4 * float(logits["off"].abs().max()) if head_dim > 16 else 1e-5
        torch.testing.assert_close(logits["on"], logits["off"], rtol=1e-5, atol=scale)
    else:  # float32 arithmetic against the eager forward's bfloat16 activations
        scale = float(logits["off"].abs().max())
        torch.testing.assert_close(logits["on"], logits["off"], atol=2**-5 * scale, rtol=0)


def test_engine_greedy_tokens_equal_hf_and_the_eager_path(tiny_llama):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    prompts = [[3, 14, 15, 92, 65], [27, 18, 28, 18, 28, 45, 90, 45, 23]]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    outs = {}
    for mode in ("on", "off"):
        llm = LLM(str(tiny_llama), block_size=BLOCK, max_num_seqs=1, cpu_fused_decode=mode)
        assert (llm.llm_engine.runner.fused is not None) == (mode == "on")
        res = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        outs[mode] = [o.outputs[0].token_ids for o in res]
    assert outs["on"] == outs["off"]
    with torch.no_grad():
        for p, toks in zip(prompts, outs["on"]):
            ids = torch.tensor([p])
            for t in toks:
                assert int(hf(ids).logits[0, -1].argmax()) == t
                ids = torch.cat([ids, torch.tensor([[t]])], dim=1)


def test_auto_says_which_path_runs(tiny_llama, caplog):
    with caplog.at_level(logging.INFO, logger="xyserve"):
        runner = _runner(tiny_llama, "auto")
    lines = [r.getMessage() for r in caplog.records if "CPU fused decode" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("CPU fused decode: on" if runner.fused else "CPU fused decode: off")
    if runner.fused is not None:  # with the step sizes it takes, timed both ways
        assert f"steps of up to {runner.fused.max_rows} row" in lines[0]


def test_modes_are_checked_and_the_environment_sets_the_default(tiny_llama, monkeypatch):
    with pytest.raises(ValueError, match="cpu_fused_decode"):
        EngineConfig(cpu_fused_decode="yes")
    monkeypatch.setenv(runner_fused.ENV, "off")
    assert _runner(tiny_llama, None).fused is None
    assert _runner(tiny_llama, "on").fused is not None  # an explicit mode wins
    monkeypatch.setenv(runner_fused.ENV, "fast")
    with pytest.raises(ValueError, match=runner_fused.ENV):
        _runner(tiny_llama, None)


def test_a_model_the_kernel_cannot_run_is_refused_under_on_and_skipped_under_auto(tiny_llama):
    model = load_model(tiny_llama, torch.device("cpu"), torch.float16)
    with pytest.raises(ValueError, match="needs CPU float32 or bfloat16"):
        ModelRunner(model, NUM_BLOCKS, BLOCK, "reference", "torch", cpu_fused_decode="on")
    runner = ModelRunner(model, NUM_BLOCKS, BLOCK, "reference", "torch", cpu_fused_decode="auto")
    assert runner.fused is None


def test_a_position_past_the_rope_tables_is_left_to_the_eager_forward(tiny_llama):
    runner = _runner(tiny_llama, "on")
    limit = runner.fused.weights.cos.shape[0]
    r = Request("r", [1] * limit, max_tokens=4)
    inside = SchedulerOutput(stages=[ScheduledStage(r, 1, 0, limit - 1)])
    past = SchedulerOutput(stages=[ScheduledStage(r, 1, 0, limit)])
    assert runner.fused.takes(inside) and not runner.fused.takes(past)


@pytest.mark.parametrize("poison", [None, float("nan"), float("inf")])
def test_fused_steps_hand_over_their_argmax(model_path, monkeypatch, poison):
    """The step's argmax from the kernel rides along with the logits for the sampler and
    verify, equal to the logits' own; a non-finite logit leaves it out (torch's argmax rules
    decide those rows, in the sampler)."""
    runner = _runner(model_path, "on")
    runner.fused.max_rows = 3
    if poison is not None:
        real = runner_fused.ff.forward

        def forward(*args, **kwargs):
            logits, argmax = real(*args, **kwargs)
            logits[-1, 1] = poison
            return logits, argmax

        monkeypatch.setattr(runner_fused.ff, "forward", forward)
    results = []
    real_execute = runner.execute
    runner.execute = lambda *a: results.append(real_execute(*a)) or results[-1]
    _steps(runner, [[1, 2, 3, 4, 5], [9], [7, 7, 7]], _decode_tokens(50, 3, 3))
    decodes = results[1:]  # the prefill ran eagerly: no argmax there
    assert results[0].argmax is None and len(decodes) == 3
    for res in decodes:
        if poison is None:
            assert res.argmax.tolist() == res.logits.argmax(-1).tolist()
        else:
            assert res.argmax is None

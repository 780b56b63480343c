"""The fused draft forward (kernels.cpu.fused_forward) against the engine's runner and HF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request
from xyserve.engine.runner import ModelRunner
from xyserve.engine.scheduler import ScheduledStage, SchedulerOutput
from xyserve.model.loader import load_model
from xyserve.models import DEFAULT_DRAFT_MODEL, resolve_model
from xyserve.spec.draft_forward import FusedDraft, unsupported

BLOCK = 4  # small blocks: every request's rows cross block boundaries
NUM_BLOCKS = 32


def _passes(vocab: int) -> list[list[list[int]]]:
    """Per pass, per request, the new tokens: a catch-up of several rows, then one-token
    passes, then another catch-up (as after an accepted run)."""
    g = torch.Generator().manual_seed(1)

    def toks(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    return [[toks(7), toks(10)], [toks(1), toks(1)], [toks(1), toks(1)], [toks(3), toks(5)]]


def _run_both(path, compact: bool):
    model = load_model(path, torch.device("cpu"), torch.float32)
    assert unsupported(model) is None
    runner = ModelRunner(model, NUM_BLOCKS, BLOCK, "reference", "torch")
    fused = FusedDraft(model, NUM_BLOCKS, BLOCK, compact)
    # The bundled draft is a bfloat16 checkpoint: its linear layers are kept as bfloat16 bits
    # (exactly), unless told not to; the random float32 models keep float32.
    bf16 = compact and "draft" in str(path)
    assert fused.weights.lm_head.dtype == (np.uint16 if bf16 else np.float32)
    kv = KVCacheManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=False)
    reqs = [Request(f"r{i}", [], max_tokens=1) for i in range(2)]
    out = []
    for pass_tokens in _passes(model.cfg.vocab_size):
        stages = []
        b = fused.builder()
        for r, new in zip(reqs, pass_tokens):
            start = r.num_tokens
            r.prompt_token_ids = r.prompt_token_ids + new
            assert kv.allocate(r, len(new))
            stages.append(ScheduledStage(r, len(new), 0, start))
            b.causal(b.add_table(kv.block_table(r.request_id)), new, start)
        tables = {r.request_id: kv.block_table(r.request_id) for r in reqs}
        res = runner.execute(SchedulerOutput(stages=stages), tables)
        want = torch.cat([res.logits[res.rows[r.request_id]][-1:] for r in reqs])
        got, argmax = fused.run(b)
        out.append((want, got.clone(), argmax))
        for r in reqs:
            r.num_computed_tokens = r.num_tokens
    return model, reqs, out


@pytest.mark.parametrize(
    "which", ["draft", "draft_f32", "qwen2_bias", "qwen3_qk_norm", "head_dim_18"]
)
def test_fused_logits_equal_the_runner_and_hf(which, tiny_qwen2, tmp_path):
    from tiny_models import build_model

    path = {
        "draft": lambda: resolve_model(DEFAULT_DRAFT_MODEL),
        "draft_f32": lambda: resolve_model(DEFAULT_DRAFT_MODEL),
        "qwen2_bias": lambda: tiny_qwen2,
        "qwen3_qk_norm": lambda: build_model(tmp_path / "q3", "qwen3", with_tokenizer=False),
        # a head size no vector width divides: attention's value tiles leave a remainder
        "head_dim_18": lambda: build_model(
            tmp_path / "h18", with_tokenizer=False, hidden_size=72, head_dim=18
        ),
    }[which]()
    model, reqs, out = _run_both(path, compact=which != "draft_f32")
    for want, got, argmax in out:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert argmax == got.argmax(-1).tolist()
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    hf = hf.eval()
    for i, r in enumerate(reqs):  # the last pass's logits: the whole sequence through HF
        with torch.no_grad():
            ref = hf(torch.tensor([r.prompt_token_ids])).logits[0, -1]
        torch.testing.assert_close(out[-1][1][i], ref, rtol=1e-4, atol=1e-4)


def test_tree_rows_see_the_context_and_their_ancestors_only():
    """A node row with explicit ancestor slots gives the logits of the same tokens run as a
    plain causal sequence (its siblings, written in the same pass, are not seen)."""
    model = load_model(resolve_model(DEFAULT_DRAFT_MODEL), torch.device("cpu"), torch.float32)
    fused = FusedDraft(model, NUM_BLOCKS, BLOCK)
    kv = KVCacheManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=False)
    ctx, a, sib, c = [5, 9, 17, 33, 2, 8], 40, 41, 77
    r = Request("t", list(ctx), max_tokens=1)
    assert kv.allocate(r, len(ctx) + 3)
    table = kv.block_table("t")
    b = fused.builder()
    t = b.add_table(table)
    b.causal(t, ctx, 0)
    fused.run(b)
    n = len(ctx)
    s0, s1, s2 = (b.slot(table, n + i) for i in range(3))
    b = fused.builder()  # nodes a and sib at depth 0 (slots n, n+1), c under a (slot n+2)
    t = b.add_table(table)
    b.node(t, a, n, s0, n, [s0])
    b.node(t, sib, n, s1, n, [s1])
    fused.run(b)
    b = fused.builder()
    t = b.add_table(table)
    b.node(t, c, n + 1, s2, n, [s0, s2])
    got, _ = fused.run(b)
    plain = FusedDraft(model, NUM_BLOCKS, BLOCK)
    b = plain.builder()
    b.causal(b.add_table(table), [*ctx, a, c], 0)
    want, _ = plain.run(b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_parallel_compilation_equals_the_serial_one():
    from xyserve.kernels.cpu import fused_forward as ff

    model = load_model(resolve_model(DEFAULT_DRAFT_MODEL), torch.device("cpu"), torch.float32)
    outs = []
    for parallel in (False, True):
        fused = FusedDraft(model, NUM_BLOCKS, BLOCK)
        b = fused.builder()
        b.causal(b.add_table([3, 1, 4]), list(range(11)), 0)
        b.causal(b.add_table([0, 2]), [7, 8, 9, 10, 11, 12], 0)
        outs.append(ff.forward(fused.weights, fused.k_cache, fused.v_cache, b.rows(), parallel))
    torch.testing.assert_close(torch.from_numpy(outs[1][0]), torch.from_numpy(outs[0][0]))
    assert outs[0][1].tolist() == outs[1][1].tolist()


LINEAR_CALL = """
import sys

import numba
import numpy as np

from xyserve.kernels.cpu import fused_forward as ff

x, w = np.ones((2, 8), np.float32), np.ones((2, 8, 8), np.float32)  # two panels of 8 columns
out = np.empty((2, 12), np.float32)
(ff._linear_c_par if sys.argv[1] == "parallel" else ff._linear_c)(x, w, x[0, :0], out, False, 2)
try:
    numba.threading_layer()
    print("pool started")
except ValueError:
    print("no pool")
"""


def test_serial_compilation_is_not_loaded_from_the_parallel_ones_cache(tmp_path):
    """numba keys its on-disk cache on the function and the argument types, not on
    ``parallel``: the serial and parallel compilations of one function must be cached apart,
    or a process that ran the parallel one first makes every later process's serial path
    start numba's thread pool (behind ``use_cpu_threads``' back) and run threaded."""
    from numba_processes import run_script

    # the parallel one fills the cache first
    got = [run_script(tmp_path, LINEAR_CALL, v).strip() for v in ("parallel", "serial")]
    assert got == ["pool started", "no pool"]


def _proposer(**kw):
    from xyserve.model.config import ModelConfig
    from xyserve.spec.draft import DraftModelProposer

    path = resolve_model(DEFAULT_DRAFT_MODEL)
    cfg = ModelConfig.from_dir(path)
    cpu = torch.device("cpu")
    return DraftModelProposer(path, cfg, cpu, torch.float32, 64, BLOCK, "meta", "torch", **kw)


def _three_rounds(prop, caps, accepted) -> list:
    """Three proposal rounds for three greedy requests: round proposals and tree parents;
    between rounds request ``i`` takes ``accepted(i, proposal)`` and a token of "the target".
    The proposer's cache must be empty once they are released."""
    from xyserve import SamplingParams

    greedy = SamplingParams(temperature=0)
    reqs = [
        Request(f"r{i}", list(range(3 + i, 12 + 3 * i)), 50, sampling_params=greedy)
        for i in range(3)
    ]
    rounds = []
    for _ in range(3):
        out = prop.propose(reqs, {r.request_id: caps(i) for i, r in enumerate(reqs)})
        rounds.append((out, [r.spec_tree_parents for r in reqs]))
        for i, r in enumerate(reqs):
            r.output_token_ids += accepted(i, out[r.request_id]) + [7 + i]
    prop.release_except(set())
    prop.kv.check_no_leak()
    return rounds


def test_greedy_chains_in_one_call_equal_the_pass_by_pass_loop():
    """Proposals, and the draft cache they leave (seen through the next round's proposals after
    a partly accepted run), are the same with every pass in one call as pass by pass."""
    got = []
    for one_call in (True, False):
        prop = _proposer()
        assert prop.fused is not None and prop.runner is None
        prop.chains_in_one_call = one_call
        got.append(_three_rounds(prop, lambda i: 3 + i % 2, lambda i, toks: toks[:i]))
    assert got[0] == got[1]


@pytest.mark.parametrize(
    "shape",
    [
        ((2, 2, 2, 2), 1, 5),  # dynamic, beam 1 (the default)
        ((3, 3, 3), 2, 6),  # dynamic, a wider beam
        ((2, 1, 1), None, None),  # static: two chains
        ((3, 2, 1), None, None),  # static, branching below the root
    ],
)
def test_greedy_trees_in_one_call_equal_the_pass_by_pass_loop(shape):
    """Tree proposals (tokens and parents), and the draft cache they leave (seen through the
    next rounds), are the same with every level in one call as pass by pass, for requests of
    different caps in one batch."""
    from xyserve.spec import tree

    branching, beam, nodes = shape
    got = []
    for one_call in (True, False):
        prop = _proposer(tree_shape=tree.TreeShape(branching, beam=beam, nodes=nodes))
        prop.trees_in_one_call = one_call
        # accept a node of the first level (the first or the second), then the target's token
        got.append(_three_rounds(prop, lambda i: 1 + i, lambda i, toks: toks[i % 2 : i % 2 + 1]))
    assert got[0] == got[1]
    assert any(len(p) > len(set(tree.depths(p))) for _, ps in got[0] for p in ps if p)


@pytest.mark.parametrize("one_call", [True, False])
def test_a_beam_one_tree_keeps_its_run_chains_kv_and_proposes_as_a_fresh_draft(one_call):
    """A dynamic tree of beam 1 runs its top chain at the chain's own positions: the draft keeps
    that K/V as a chain proposal keeps its own, so after a verify that accepted part of the
    chain the next catch-up pass runs only the tokens after it, and every round proposes what
    a fresh draft proposes from the same tokens (no stale K/V)."""
    from xyserve import SamplingParams
    from xyserve.spec import tree

    shape = tree.TreeShape((2, 2, 2, 2), beam=1, nodes=8)  # every candidate: a chain of 4
    greedy = SamplingParams(temperature=0)
    prop = _proposer(tree_shape=shape)
    prop.trees_in_one_call = one_call
    r = Request("r", list(range(3, 15)), 50, sampling_params=greedy)
    for took in (2, 4, 1, 3):  # chain tokens the target accepts, then a token of its own
        out = prop.propose([r], {"r": 4})["r"]
        parents = r.spec_tree_parents
        fresh = _proposer(tree_shape=shape)
        fresh.trees_in_one_call = one_call
        twin = Request("r", r.all_token_ids, 50, sampling_params=greedy)
        assert fresh.propose([twin], {"r": 4})["r"] == out and twin.spec_tree_parents == parents
        chain = [out[n] for n in tree.top_chain(parents)]
        assert len(chain) == 4
        target = next(t for t in range(20) if t not in chain[took : took + 1])
        r.output_token_ids += chain[:took] + [target]
        s = prop._sync(r)
        # the chain's run part (all but its last token) is kept: the catch-up runs the rest
        assert r.num_tokens - s.num_computed_tokens == 1 + (took == 4)
    prop.release_except(set())
    prop.kv.check_no_leak()


def test_compiled_entry_points_take_no_function_arguments():
    """A compiled function passed as an argument is a numba type of its own in every process,
    so numba's on-disk cache of the callee would never hit (every start recompiled the fused
    forward, 5-10 s). The entry points must be typed by arrays and scalars only."""
    from numba.core import types

    from xyserve.kernels.cpu import fused_forward as ff
    from xyserve.kernels.cpu import fused_tree
    from xyserve.spec import tree

    prop = _proposer(tree_shape=tree.TreeShape((2, 2), beam=1, nodes=3))  # warms every one up
    b = prop.fused.builder()
    b.causal(b.add_table([0]), [0], 0)
    ff.forward(prop.fused.weights, prop.fused.k_cache, prop.fused.v_cache, b.rows(), True, 1)
    for fn in (ff._serial, ff._parallel, ff._greedy_chains_c, fused_tree._greedy_tree_c):
        assert fn.signatures, fn
        for sig in fn.signatures:
            flat = [t for a in sig for t in (a.types if isinstance(a, types.BaseTuple) else [a])]
            assert not any(isinstance(t, types.Dispatcher) for t in flat), (fn, sig)


def _chains(fused: FusedDraft, contexts: list[list[int]], steps: int) -> list[list[int]]:
    """Each context's greedy chain of ``steps`` tokens, in one call, from a fresh cache."""
    kv = KVCacheManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=False)
    b = fused.builder()
    for i, ctx in enumerate(contexts):
        r = Request(f"r{i}", ctx, max_tokens=1)
        assert kv.allocate(r, len(ctx) + steps)
        b.causal(b.add_table(kv.block_table(r.request_id)), ctx, 0)
    return fused.greedy_chains(b, np.full(len(contexts), steps, np.int64)).tolist()


def test_a_token_map_proposes_the_argmax_over_its_tokens():
    """A draft with a token map scores only the map's tokens (rounded up to the panel width):
    its logits are the full draft's at those tokens and -inf elsewhere, and its greedy chain
    is the full draft's argmax restricted to them, step by step (every other token is taken
    as input all the same)."""
    model = load_model(resolve_model(DEFAULT_DRAFT_MODEL), torch.device("cpu"), torch.float32)
    vocab = model.cfg.vocab_size
    head = torch.randperm(vocab, generator=torch.Generator().manual_seed(3))[:100].numpy()
    full = FusedDraft(model, NUM_BLOCKS, BLOCK)
    mapped = FusedDraft(model, NUM_BLOCKS, BLOCK, head_tokens=head)
    kept = mapped.order[: mapped.head_rows]
    assert mapped.head_rows % mapped.weights.lm_head.shape[-1] == 0 and mapped.head_rows >= 100
    assert set(head) <= set(kept.tolist()) and len(set(kept.tolist())) == mapped.head_rows
    mask = torch.full((vocab,), float("-inf"))
    mask[torch.as_tensor(kept)] = 0.0
    g = torch.Generator().manual_seed(4)
    contexts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (5, 9, 13)]
    want = []
    for ctx in contexts:  # the oracle: one full pass per token, the argmax over the kept ones
        seq = list(ctx)
        for _ in range(4):
            kv = KVCacheManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=False)
            r = Request("o", seq, max_tokens=1)
            assert kv.allocate(r, len(seq))
            b = full.builder()
            b.causal(b.add_table(kv.block_table("o")), seq, 0)
            logits, _ = full.run(b)
            b = mapped.builder()
            b.causal(b.add_table(kv.block_table("o")), seq, 0)
            got, argmax = mapped.run(b)
            assert torch.isinf(got[0, mask.isinf()]).all()
            torch.testing.assert_close(got[0, ~mask.isinf()], logits[0, ~mask.isinf()])
            seq.append(int((logits[0] + mask).argmax()))
            assert argmax == [seq[-1]]
        want.append(seq[len(ctx) :])
    assert _chains(mapped, contexts, 4) == want
    assert want != _chains(full, contexts, 4)  # the map changed the proposals


def test_the_pass_by_pass_loop_equals_the_one_call_chains_with_a_token_map():
    """The loop path (sampled requests' passes) reads the mapped logits as the one-call chains
    do: the same greedy proposals and cache state, round after round."""
    from xyserve.spec.token_map import FILE_NAME

    assert (resolve_model(DEFAULT_DRAFT_MODEL) / FILE_NAME).is_file()  # the bundled map
    got = []
    for one_call in (True, False):
        prop = _proposer()
        assert prop.fused.order is not None and prop.fused.head_rows < 4096
        prop.chains_in_one_call = one_call
        got.append(_three_rounds(prop, lambda i: 3 + i % 2, lambda i, toks: toks[:i]))
    assert got[0] == got[1]
    assert _proposer(token_map=False).fused.order is None

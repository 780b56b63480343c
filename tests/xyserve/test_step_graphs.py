"""Padded steps over static buffers (``engine.padded_step``, ``engine.step_graphs``), on CPU.

Nothing is captured here (CUDA graphs need a GPU: ``test_gpu_step_graphs.py``); the runner runs
the same padded forward eagerly over the same static buffers a graph would replay. Every padded
step's logits are compared with the unpadded step's, computed on the same cache just before,
over steps that grow across block boundaries, with mixed context lengths and mixed P/D steps,
with each attention backend: Meta-Attention's CPU path, per-stage SDPA, the reference, and the
Triton Meta-Attention kernel under ``TRITON_INTERPRET=1`` reading its static task table.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

from xyserve import LLM, EngineConfig, SamplingParams
from xyserve.bench.cases import StageSpec, build_case
from xyserve.engine import runner as runner_module
from xyserve.engine.capture_sizes import check_capture_sizes, default_capture_sizes
from xyserve.engine.padded_step import PaddedStep
from xyserve.engine.runner import ModelRunner
from xyserve.engine.step_graphs import GraphOptions, StepGraphs
from xyserve.engine.step_inputs import StepLists
from xyserve.kernels.attention.meta.backend import MetaAttention
from xyserve.model.llama import StepContext
from xyserve.plan.token_table import TokenTable

TRITON = os.environ.get("TRITON_INTERPRET") == "1"
SIZES = [1, 2, 4, 8, 16]
ENGINE = dict(
    device="cpu",  # on a GPU machine too: these are the CPU checks (the GPU's: test_gpu_...)
    skip_tokenizer_init=True,
    max_num_batched_tokens=24,  # prompts are chunked; steps above 16 tokens run unpadded
    block_size=4,  # a new block every 4 tokens
    enable_prefix_caching=False,
    split_prefill_decode="off",  # mixed P/D steps, which the padded steps must cover too
)


class InterpretedMeta(MetaAttention):
    """Meta-Attention on its Triton path whatever the device (the interpreter on CPU)."""

    def triton(self, device: torch.device) -> bool:
        return True


def test_capture_sizes_follow_vllm_and_bad_ones_are_refused():
    assert default_capture_sizes(64, 512) == [1, 2, 4, *range(8, 129, 8)]
    assert default_capture_sizes(256, 2048) == [1, 2, 4, *range(8, 257, 8), *range(272, 513, 16)]
    assert max(default_capture_sizes(1024, 100)) <= 100  # never above the token budget
    assert check_capture_sizes([8, 1, 2]) == [1, 2, 8]
    for bad in ([], [0, 1], [1, 1], [1.5], "8", [True]):
        with pytest.raises(ValueError, match="cudagraph_capture_sizes"):
            check_capture_sizes(bad)
    with pytest.raises(ValueError, match="cudagraph_capture_sizes"):
        EngineConfig(cudagraph_capture_sizes=[0])
    assert EngineConfig(cudagraph_capture_sizes=[4, 1]).cudagraph_capture_sizes == [1, 4]


def test_padding_is_written_where_it_is_harmless():
    table = TokenTable(block_size=4)
    table.add("a", 3, 7, [5, 6], is_prefill=True)
    table.add("b", 1, 9, [1, 2, 3])
    lists = StepLists([11, 12, 13, 14], [4, 5, 6, 8], [2, 3], {"a": slice(0, 1), "b": slice(1, 2)})
    step = PaddedStep.allocate(8, 4, scratch_slot=40, device=torch.device("cpu"))
    meta = step.write(lists, table)
    assert step.ids.tolist() == [11, 12, 13, 14, 0, 0, 0, 0]
    assert step.positions.tolist() == [4, 5, 6, 8, 0, 0, 0, 0]
    assert step.slot_mapping.tolist() == [24, 25, 26, 12, 40, 40, 40, 40]  # padding: scratch
    assert step.logit_rows.tolist() == [2, 3, 0, 0, 0, 0, 0, 0]
    assert meta.query_start_loc.tolist() == [0, 3, 4, 4, 4, 4, 4, 4, 4]  # empty stages
    assert meta.kv_lens.tolist() == [7, 9, 0, 0, 0, 0, 0, 0]
    assert meta.block_tables[:3].tolist() == [[5, 6, 0, 0], [1, 2, 3, 0], [0, 0, 0, 0]]
    assert meta.table is table and meta.tree_masks == [None, None]
    # A smaller step written over it leaves nothing of the larger one behind.
    small = TokenTable(block_size=4)
    small.add("b", 1, 10, [1, 2, 3])
    step.write(StepLists([15], [9], [0], {"b": slice(0, 1)}), small)
    assert step.slot_mapping.tolist() == [13] + [40] * 7
    assert meta.kv_lens.tolist() == [10] + [0] * 7
    assert meta.block_tables[1].tolist() == [0, 0, 0, 0]
    # What does not fit: more tokens than the size, a token tree, a block table too wide.
    big = TokenTable(block_size=4)
    big.add("c", 9, 9, [1, 2, 3], is_prefill=True)
    tree = TokenTable(block_size=4)
    tree.add("d", 2, 5, [1, 2], num_spec_tokens=1, tree_mask=((True, False), (True, True)))
    wide = TokenTable(block_size=4)
    wide.add("e", 1, 17, [1, 2, 3, 4, 5])
    for t in (big, tree, wide):
        assert not step.fits(t)
        with pytest.raises(ValueError, match="does not fit"):
            step.write(StepLists([0] * t.num_tokens, [0] * t.num_tokens, [], {}), t)


@pytest.mark.skipif(not TRITON, reason="needs TRITON_INTERPRET=1")
def test_a_static_triton_plan_runs_each_step_it_is_filled_with():
    """One static plan, filled with a larger step and then a smaller one (whose units leave the
    larger step's behind, unread): each gives the reference attention on its real rows and
    zero rows for its padding."""
    from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention
    from xyserve.kernels.attention.reference import reference_attention

    hq, hkv, d, bs, size = 8, 2, 32, 4, 32
    step = PaddedStep.allocate(size, 8, scratch_slot=0, device=torch.device("cpu"))
    be = InterpretedMeta(num_workers=3)
    static = be.static_plan(step.meta(TokenTable(block_size=bs)), hq, hkv, d, size * hkv)
    cases = [
        [StageSpec(9, 5, prefill=True), StageSpec(1, 13), StageSpec(4, 7, num_spec_tokens=3)],
        [StageSpec(1, 2), StageSpec(3, 0, prefill=True)],
    ]
    for i, specs in enumerate(cases):
        c = build_case(specs, hq, hkv, d, bs, seed=i)
        t = c.meta.table.num_tokens
        meta = step.write(StepLists([0] * t, [0] * t, [], {}), c.meta.table)
        plan = static.fill(meta)
        # The launch reads the same memory at every step: the step's own static tables.
        assert plan.arrays["bt"].data_ptr() == meta.block_tables.data_ptr()
        assert plan.arrays is static.plan.arrays
        q = torch.zeros((size, hq, d))
        q[:t] = c.q
        out = triton_meta_attention(plan, q, c.k_cache, c.v_cache, c.scale)
        ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
        torch.testing.assert_close(out[:t], ref, atol=1e-4, rtol=1e-4)
        assert not out[t:].any()
    with pytest.raises(ValueError, match="token tree"):
        static.fill(build_case([StageSpec(3, 2, tree=True)], hq, hkv, d, bs).meta)


def _padded_llm(path, backend: str, monkeypatch) -> LLM:
    """An engine whose runner pads every step of up to 16 tokens (eagerly: CPU)."""
    llm = LLM(str(path), attention_backend="sdpa" if backend == "triton" else backend, **ENGINE)
    eng = llm.llm_engine
    if backend == "triton":
        monkeypatch.setattr(runner_module, "get_attention_backend", lambda name: InterpretedMeta())
    max_blocks = -(-eng.max_model_len // eng.config.block_size)
    eng.runner = ModelRunner(
        eng.model,
        eng.kv.num_blocks,
        eng.config.block_size,
        backend,
        eng.config.gemm_backend,
        graphs=GraphOptions(SIZES, max_blocks, capture=False),
    )
    return llm


def _unpadded_logits(runner: ModelRunner, out, block_tables) -> torch.Tensor:
    """The step's logits from the ordinary (unpadded) inputs, on the runner's cache."""
    runner.copy_blocks(out.copies)
    inputs = runner.build_inputs(out, runner.build_table(out, block_tables))
    ctx = StepContext(
        inputs.positions,
        inputs.meta.slot_mapping,
        runner.attn,
        inputs.attn_plan,
        runner.gemm,
        inputs.gemm_plan,
    )
    return runner.model.forward(inputs.ids, ctx, runner.kv_caches, inputs.logit_rows)


def _prompts() -> list[list[int]]:
    return [[5 + i] * (3 + 5 * i) + [40 + i, 41] for i in range(4)] + [[7, 8]]


@pytest.mark.parametrize("backend", ["meta", "sdpa", "reference", "triton"])
def test_padded_steps_give_the_unpadded_logits(tiny_llama, monkeypatch, backend):
    if backend == "triton" and not TRITON:
        pytest.skip("needs TRITON_INTERPRET=1")
    llm = _padded_llm(tiny_llama, backend, monkeypatch)
    eng = llm.llm_engine
    runner = eng.runner
    counts = {"padded": 0, "with_padding": 0, "mixed": 0, "eager": 0}
    real = ModelRunner.execute

    def execute(self, out, block_tables):
        want = _unpadded_logits(self, out, block_tables)
        table = self.build_table(out, block_tables)
        size = self.graphs.size_for(table)
        got = real(self, out, block_tables)
        torch.testing.assert_close(got.logits, want, atol=2e-5, rtol=1e-5)
        if size is None:
            counts["eager"] += 1
        else:
            counts["padded"] += 1
            counts["with_padding"] += size > table.num_tokens
            counts["mixed"] += len({r.kind for r in table.rows}) > 1
        return got

    monkeypatch.setattr(ModelRunner, "execute", execute)
    max_tokens = 6 if backend == "triton" else 12  # the interpreter is slow
    params = [
        SamplingParams(temperature=0, max_tokens=max_tokens - i, ignore_eos=True) for i in range(5)
    ]
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts()], params, use_tqdm=False)
    assert counts["padded"] and counts["with_padding"] and counts["mixed"] and counts["eager"]
    assert isinstance(runner.graphs, StepGraphs) and not runner.graphs.graphs  # none captured
    # The greedy tokens are those of an engine that never pads.
    monkeypatch.setattr(ModelRunner, "execute", real)
    plain = LLM(
        str(tiny_llama), attention_backend="sdpa" if backend == "triton" else backend, **ENGINE
    )
    want = plain.generate([{"prompt_token_ids": p} for p in _prompts()], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in want]
    eng.kv.check_no_leak()


class NoHostReads(TorchFunctionMode):
    """Fails on any read of a tensor's values on the host, or a shape that depends on them: on
    CUDA each is a device sync, which a captured graph cannot hold."""

    BANNED = {
        "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "cpu",
        "nonzero", "masked_select", "unique", "unique_consecutive", "argwhere", "bincount",
    }  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if not self.paused:
            self.calls += 1
            if name in self.BANNED:
                raise AssertionError(f"the padded forward reads a device value: {name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not TRITON, reason="needs TRITON_INTERPRET=1 (the Triton attention path)")
def test_the_padded_forward_reads_no_device_value(tiny_llama, monkeypatch):
    """The forward a graph captures, on its CUDA code path (the torch ops instead of the numba
    CPU kernels, Meta-Attention's Triton kernel), run under a guard that fails on any host read
    of a tensor value. The Triton launch itself is not guarded (the interpreter reads tensors on
    the host; on a GPU the launch is asynchronous); the GEMM is ``torch`` (SmoothGEMM's Triton
    path runs only on CUDA tensors: it is checked by ``torch.cuda.set_sync_debug_mode`` in the
    GPU test)."""
    from xyserve.kernels.attention.meta import triton_kernel
    from xyserve.kernels.cpu import act, norm, rope

    eng = LLM(str(tiny_llama), gemm_backend="torch", **ENGINE).llm_engine  # warms the kernels up
    for mod, name, value in (
        (norm, "applies", lambda *a: False),
        (act, "applies", lambda *a: False),
        (rope, "kernel_inputs", lambda *a: None),
    ):
        monkeypatch.setattr(mod, name, value)
    guard = NoHostReads()
    kernel = triton_kernel._meta_attn_kernel

    class Unguarded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                guard.paused = True
                try:
                    return kernel[grid](*args, **kwargs)
                finally:
                    guard.paused = False

            return launch

    monkeypatch.setattr(triton_kernel, "_meta_attn_kernel", Unguarded())
    max_blocks = -(-eng.max_model_len // eng.config.block_size)
    graphs = StepGraphs(
        eng.model,
        eng.runner.kv_caches,
        InterpretedMeta(),
        eng.runner.gemm,
        0,
        GraphOptions([4], max_blocks, capture=False),
    )
    real_forward = graphs._forward

    def guarded(size, plan):
        with guard:
            return real_forward(size, plan)

    monkeypatch.setattr(graphs, "_forward", guarded)
    table = TokenTable(block_size=4)
    table.add("a", 2, 6, [1, 2], is_prefill=True)
    table.add("b", 1, 3, [3])
    logits = graphs.run(4, StepLists([5, 6, 7], [4, 5, 2], [1, 2], {}), table)
    assert logits.shape == (2, eng.model.cfg.vocab_size) and torch.isfinite(logits).all()
    assert guard.calls > 50  # the guard saw the forward's ops
    # The guard is live: a host read inside the forward fails.
    monkeypatch.setattr(triton_kernel, "pow2", lambda x, lo=16: int(torch.tensor(x).item()) or lo)
    with pytest.raises(AssertionError, match="reads a device value: item"):
        graphs.run(4, StepLists([5, 6, 7], [4, 5, 2], [1, 2], {}), table)


def test_engine_says_whether_graphs_are_on(tiny_llama, caplog):
    caplog.set_level("INFO", logger="xyserve")
    LLM(str(tiny_llama), **ENGINE)
    assert "CUDA graphs: off (device cpu)" in caplog.text
    caplog.clear()
    LLM(str(tiny_llama), **{**ENGINE, "enforce_eager": True})
    assert "CUDA graphs: off (enforce_eager)" in caplog.text
    assert StepGraphs.unsupported(MetaAttention(), torch.device("cpu")) is not None


def test_a_failed_capture_leaves_an_eager_engine(tiny_llama, monkeypatch, caplog):
    llm = _padded_llm(tiny_llama, "meta", monkeypatch)
    runner = llm.llm_engine.runner

    def boom(progress=True):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(runner.graphs, "capture", boom)
    caplog.set_level("INFO", logger="xyserve")
    runner._capture()
    assert runner.graphs is None
    assert "CUDA graphs: capture failed; every step runs eagerly" in caplog.text
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=3))
    assert len(out[0].outputs[0].token_ids) == 3


def test_capture_orchestration_with_a_fake_cuda(tiny_llama, monkeypatch):
    """``StepGraphs.capture``'s sequence, with torch.cuda's graph API replaced by recorders (the
    capture itself needs a GPU): every size warmed up then captured, largest first, in one pool,
    and a captured size's step replays its graph instead of running the forward."""
    import contextlib

    log: list = []

    class FakeGraph:
        def replay(self):
            log.append("replay")

    @contextlib.contextmanager
    def graph(g, pool=None):
        log.append(("capture", pool))
        yield

    class FakeStream:
        def wait_stream(self, other):
            pass

    for name, value in (
        ("graph_pool_handle", lambda: "pool"),
        ("Stream", FakeStream),
        ("current_stream", FakeStream),
        ("stream", lambda s: contextlib.nullcontext()),
        ("synchronize", lambda: None),
        ("CUDAGraph", FakeGraph),
        ("graph", graph),
    ):
        monkeypatch.setattr(torch.cuda, name, value)
    runner = _padded_llm(tiny_llama, "meta", monkeypatch).llm_engine.runner
    graphs = runner.graphs
    real_forward = graphs._forward

    def forward(size, plan):
        log.append(("forward", size))
        return real_forward(size, plan)

    monkeypatch.setattr(graphs, "_forward", forward)
    graphs.capture(progress=False)
    want = []
    for size in sorted(SIZES, reverse=True):
        want += [("forward", size)] * 2 + [("capture", "pool"), ("forward", size)]
    assert log == want
    assert sorted(graphs.graphs) == SIZES
    assert all(graphs.outputs[s].shape == (s, runner.model.cfg.vocab_size) for s in SIZES)
    log.clear()
    table = TokenTable(block_size=4)
    table.add("a", 3, 3, [0], is_prefill=True)
    logits = graphs.run(4, StepLists([5, 6, 7], [0, 1, 2], [2], {}), table)
    assert log == ["replay"] and logits.shape == (1, runner.model.cfg.vocab_size)


def test_a_step_too_large_to_pad_builds_its_token_table_once(tiny_llama, monkeypatch):
    """A step above the largest capture size runs eagerly on the token table ``execute`` built
    to choose its size, not on a second one built from the same scheduler output."""
    llm = _padded_llm(tiny_llama, "meta", monkeypatch)
    tables, steps = [], []
    real_table, real_execute = ModelRunner.build_table, ModelRunner.execute

    def build_table(self, out, block_tables):
        tables.append(real_table(self, out, block_tables))
        return tables[-1]

    def execute(self, out, block_tables):
        steps.append(sum(st.num_tokens for st in out.stages))
        return real_execute(self, out, block_tables)

    monkeypatch.setattr(ModelRunner, "build_table", build_table)
    monkeypatch.setattr(ModelRunner, "execute", execute)
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    llm.generate([{"prompt_token_ids": list(range(3, 23))}], params, use_tqdm=False)
    assert max(steps) > SIZES[-1]  # the 20-token prefill ran eagerly
    assert len(tables) == len(steps)

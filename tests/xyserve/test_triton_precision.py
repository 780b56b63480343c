"""Every Triton ``tl.dot`` runs at the precision the dtype promises, and GPU tolerances by dtype.

The interpreter computes float32 dots exactly whatever ``input_precision`` says, so a kernel
that forgot it would pass every CPU test and still run TF32 on a GPU. These tests check the
choice itself: each launch's ``INPUT_PRECISION`` constexpr is recorded, and every ``tl.dot`` in
the kernels' source names it. On CUDA, the half-precision cases check each kernel against a
float32 matmul of the same (rounded) inputs within a few of the dtype's epsilons.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch

from xyserve.bench.cases import StageSpec, build_case
from xyserve.kernels.attention.reference import reference_attention
from xyserve.kernels.triton_precision import dot_precision
from xyserve.plan.gemm_table import GemmConfig
from xyserve.plan.triton_attention import build_triton_plan

TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
KERNEL_DIR = Path(__file__).resolve().parents[2] / "src" / "xyserve"


def test_dot_precision_follows_dtype_and_flag():
    assert dot_precision(torch.float32) == "ieee"
    assert dot_precision(torch.float32, allow_tf32=True) == "tf32"
    assert dot_precision(torch.float16) == "tf32"  # tensor cores either way
    assert dot_precision(torch.bfloat16, allow_tf32=False) == "tf32"


def test_every_tl_dot_in_the_source_names_its_precision():
    files = [p for p in KERNEL_DIR.rglob("*.py") if "tl.dot(" in p.read_text()]
    assert files, "no Triton kernels found"
    for p in files:
        src = p.read_text()
        for m in re.finditer(r"tl\.dot\(", src):
            depth, i = 1, m.end()
            while depth:  # the call's full argument text, nested parentheses included
                depth += {"(": 1, ")": -1}.get(src[i], 0)
                i += 1
            assert "input_precision=INPUT_PRECISION" in src[m.end() : i], (
                f"{p.name}: a tl.dot without input_precision at offset {m.start()}"
            )


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: records each launch's INPUT_PRECISION."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.seen: list[str] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append(kwargs["INPUT_PRECISION"])
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_launches_pass_ieee_for_float32_unless_tf32_is_allowed(monkeypatch, allow_tf32):
    from xyserve.bench import triton_baselines as baselines
    from xyserve.kernels.attention.meta import triton_kernel as meta_attention
    from xyserve.kernels.attention.meta.backend import MetaAttention
    from xyserve.kernels.gemm import triton_kernel as smooth_gemm
    from xyserve.kernels.gemm.smooth import SmoothGemm

    rec = {
        name: _Recorder(getattr(mod, name))
        for mod, name in (
            (smooth_gemm, "_smooth_gemm_kernel"),
            (meta_attention, "_meta_attn_kernel"),
            (baselines, "_attn_fwd"),
            (baselines, "_matmul_kernel"),
        )
    }
    mods = {
        "_smooth_gemm_kernel": smooth_gemm,
        "_meta_attn_kernel": meta_attention,
        "_attn_fwd": baselines,
        "_matmul_kernel": baselines,
    }
    for name, r in rec.items():
        monkeypatch.setattr(mods[name], name, r)
    want = "tf32" if allow_tf32 else "ieee"
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn((32, 16), generator=gen).to(DEV), torch.randn((5, 16), generator=gen).to(DEV)
    cfg = GemmConfig(block_m=16, block_n=32, block_k=16, group_m=2)
    gemm = SmoothGemm(allow_tf32=allow_tf32)
    gemm.table.set("o_proj", 16, cfg)
    if not CUDA:  # the backend's CPU path never launches Triton: call the Triton entry point
        smooth_gemm.smooth_matmul(x, w, None, cfg, allow_tf32)
    else:
        gemm.linear(gemm.plan(5), "o_proj", x, w, None)
    c = build_case([StageSpec(5, 3, prefill=True), StageSpec(1, 9)], 4, 2, 16, 16, device=DEV)
    if CUDA:
        be = MetaAttention(allow_tf32=allow_tf32)
        be.run(be.plan(c.meta, 4, 2, 16), c.q, c.k_cache, c.v_cache, c.scale)
    else:
        plan = build_triton_plan(c.meta, 4, 2, 16, allow_tf32=allow_tf32)
        meta_attention.triton_meta_attention(plan, c.q, c.k_cache, c.v_cache, c.scale)
    assert rec["_smooth_gemm_kernel"].seen == [want]
    assert rec["_meta_attn_kernel"].seen == [want]
    # The baselines run exact float32 (they have no flag): what a user would compare against.
    baselines.per_stage_triton_attention(
        baselines.plan_per_stage(c.meta), c.q, c.k_cache, c.v_cache, c.scale, 16, 16
    )
    baselines.padded_tutorial_matmul(x, w, cfg)
    assert set(rec["_attn_fwd"].seen) == {"ieee"} and rec["_matmul_kernel"].seen == ["ieee"]


def test_engine_flag_reaches_the_triton_backends(tiny_llama):
    from xyserve import LLM

    before = torch.backends.cuda.matmul.allow_tf32
    for flag in (False, True):
        llm = LLM(str(tiny_llama), allow_tf32=flag, max_num_batched_tokens=32, num_kv_blocks=8)
        runner = llm.llm_engine.runner
        assert runner.attn.allow_tf32 is flag and runner.gemm.allow_tf32 is flag
    # The process-wide torch flag is the user's: an engine never changes it under other code.
    assert torch.backends.cuda.matmul.allow_tf32 is before


HALF = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # unit roundoff of each dtype


@pytest.mark.skipif(not CUDA, reason="half-precision Triton dots need a GPU")
@pytest.mark.parametrize("dtype", list(HALF))
def test_gpu_half_precision_within_epsilon(dtype):
    from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention
    from xyserve.kernels.gemm.triton_kernel import smooth_matmul
    from xyserve.plan.triton_attention import build_triton_plan

    eps = HALF[dtype]
    gen = torch.Generator().manual_seed(5)
    n, k = 256, 512
    w = (torch.randn((n, k), generator=gen) / k**0.5).to(DEV, dtype)
    for m in (1, 7, 64, 100):
        x = torch.randn((m, k), generator=gen).to(DEV, dtype)
        for split in (1, 4):
            cfg = GemmConfig(32, 64, 32, 8, 4, 3, split_k=split)
            ref = x.float() @ w.float().t()  # same rounded inputs, float32 products
            y = smooth_matmul(x, w, None, cfg).float()
            torch.testing.assert_close(y, ref, atol=4 * eps, rtol=4 * eps)
    rng = random.Random(6)
    specs = [StageSpec(40, 17, prefill=True), StageSpec(1, 70), StageSpec(6, 30, tree=True)]
    c = build_case(specs, 8, 2, 64, 16, seed=rng.randint(0, 99), dtype=dtype, device=DEV)
    ref = reference_attention(c.meta, c.q.float(), c.k_cache.float(), c.v_cache.float(), c.scale)
    plan = build_triton_plan(c.meta, 8, 2, 64)
    out = triton_meta_attention(plan, c.q, c.k_cache, c.v_cache, c.scale).float()
    torch.testing.assert_close(out, ref, atol=8 * eps, rtol=8 * eps)

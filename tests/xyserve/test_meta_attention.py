"""Meta-Attention (CPU and Triton-interpreted) against the dense reference on random task tables.

Every case mixes the mask kinds: causal prefill with and without a prefix offset, a chunked
prefill's later chunk, decode, chain verify, tree verify, plus empty and single-token stages,
with KV lengths that end inside a block. Set ``TRITON_INTERPRET=1`` to run the Triton kernel on
CPU; without it (and without CUDA) the Triton cases are skipped.
"""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest
import torch

from xyserve.bench.cases import StageSpec, build_case
from xyserve.kernels.attention.meta.backend import MetaAttention
from xyserve.kernels.attention.reference import reference_attention
from xyserve.kernels.backend import get_attention_backend
from xyserve.kernels.cpu import decode as cpu_decode
from xyserve.plan.meta_attention import build_plan

TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixed_specs(rng: random.Random, scale: int = 1) -> list[StageSpec]:
    """One of each stage kind, in random order, with lengths off the block boundaries."""
    specs = [
        StageSpec(rng.randint(17, 40) * scale, 0, prefill=True),  # plain causal prefill
        StageSpec(rng.randint(5, 30) * scale, rng.randint(1, 70), prefill=True),  # prefix hit
        StageSpec(rng.randint(20, 50) * scale, rng.randint(33, 90), prefill=True),  # later chunk
        StageSpec(1, rng.randint(1, 120)),  # decode
        StageSpec(1, rng.randint(1, 40)),  # decode
        StageSpec(1, 0, prefill=True),  # single-token prompt
        StageSpec(0, rng.randint(1, 30)),  # empty stage
        StageSpec(rng.randint(5, 9), rng.randint(1, 60), num_spec_tokens=4),  # chain verify
        StageSpec(rng.randint(5, 9), rng.randint(1, 60), tree=True),  # tree verify
    ]
    rng.shuffle(specs)
    return specs


TOL = {"atol": 2e-5, "rtol": 1e-4}
GQA = [(4, 4), (8, 4), (8, 2), (16, 2)]  # ratios 1, 2, 4, 8
HEAD_DIMS = [64, 128, 33]
BLOCKS = [16, 32]


@pytest.mark.parametrize("hq,hkv", GQA)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("bs", BLOCKS)
def test_cpu_meta_matches_reference(hq, hkv, d, bs):
    rng = random.Random(hq * 1000 + d * 10 + bs)
    c = build_case(mixed_specs(rng), hq, hkv, d, bs, seed=rng.randint(0, 1 << 30))
    ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
    # Default schedule, and a tiny one that forces KV chunking, merges and split batches.
    # The torch path alone (decode rows in packs too), and with the numba decode kernel.
    for kw in (
        {},
        {"decode_kernel": False},
        {"kv_chunk": bs, "kv_chunk_bytes": 1, "decode_kernel": False},
        {"kv_chunk": 48, "group_ratio": 0.9},
    ):
        be = MetaAttention(**kw)
        out = be.run(be.plan(c.meta, hq, hkv, d), c.q, c.k_cache, c.v_cache, c.scale)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4, msg=f"{kw}")


def test_long_context_runs_in_bounded_chunks():
    hq, hkv, d, bs = 8, 2, 64, 16
    specs = [StageSpec(1, 3000), StageSpec(7, 2500, tree=True), StageSpec(100, 2000, prefill=True)]
    c = build_case(specs, hq, hkv, d, bs, seed=3)
    budget = 64 << 10  # bytes of K+V one call may gather
    plan = build_plan(c.meta, hq, hkv, d, kv_chunk=256, kv_chunk_bytes=budget)
    per_key = 2 * hkv * d * 4
    for pack in plan.packs:
        for ch in pack.chunks:
            assert ch.width <= 256
            assert (ch.b1 - ch.b0) * ch.width * per_key <= max(budget, ch.width * per_key)
    assert max(len(p.chunks) for p in plan.packs) > 5
    out = MetaAttention().run(plan, c.q, c.k_cache, c.v_cache, c.scale)
    ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_many_decodes_share_one_pack_and_registry_names():
    hq, hkv, d = 8, 2, 64
    specs = [StageSpec(1, 200 + i) for i in range(40)]
    c = build_case(specs, hq, hkv, d, 16, seed=5)
    ref_be = get_attention_backend("reference")
    ref = ref_be.run(ref_be.plan(c.meta, hq, hkv, d), c.q, c.k_cache, c.v_cache, c.scale)
    be = get_attention_backend("meta", decode_kernel=False)
    plan = be.plan(c.meta, hq, hkv, d)
    assert len(plan.packs) == 1 and len(plan.packs[0].chunks) == 1  # one fused call
    torch.testing.assert_close(be.run(plan, c.q, c.k_cache, c.v_cache, c.scale), ref, **TOL)
    # With the numba kernel: every decode tile in its list, dealt to the workers.
    be = MetaAttention(num_workers=3)
    plan = be.plan(c.meta, hq, hkv, d)
    assert not plan.packs and sorted(plan.decode.q_rows.tolist()) == list(range(40))
    sizes = np.diff(plan.decode.worker_offsets)
    assert sorted(sizes.tolist()) == [13, 13, 14]
    loads = [
        int(plan.decode.kv_lens[a:b].sum())
        for a, b in itertools.pairwise(plan.decode.worker_offsets.tolist())
    ]
    assert max(loads) - min(loads) <= int(plan.decode.kv_lens.max())  # within one tile
    torch.testing.assert_close(be.run(plan, c.q, c.k_cache, c.v_cache, c.scale), ref, **TOL)


@pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    "hq,hkv,d,bs",
    [(4, 4, 64, 16), (8, 4, 128, 32), (8, 2, 33, 16), (16, 2, 64, 32)],
)
def test_triton_meta_matches_reference(hq, hkv, d, bs):
    from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention
    from xyserve.plan.triton_attention import build_triton_plan

    rng = random.Random(hq * 7 + d + bs)
    specs = [
        StageSpec(rng.randint(9, 20), 0, prefill=True),
        StageSpec(rng.randint(5, 12), rng.randint(1, 40), prefill=True),
        StageSpec(1, rng.randint(1, 50)),
        StageSpec(1, 0, prefill=True),
        StageSpec(0, 7),
        StageSpec(rng.randint(5, 7), rng.randint(1, 30), num_spec_tokens=4),
        StageSpec(rng.randint(5, 7), rng.randint(1, 30), tree=True),
    ]
    rng.shuffle(specs)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    c = build_case(specs, hq, hkv, d, bs, seed=rng.randint(0, 1 << 30), device=dev)
    ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
    block_m = max(16, hq // hkv * 4)  # a few rows per tile: the tiles cut across stages
    plan = build_triton_plan(c.meta, hq, hkv, d, num_workers=3, block_m=block_m)
    out = triton_meta_attention(plan, c.q, c.k_cache, c.v_cache, c.scale)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_triton_plan_refuses_query_heads_not_a_multiple_of_kv_heads():
    """6 query heads over 4 KV heads: the kernel packs 6 // 4 = 1 head per KV head, so heads 4
    and 5 were never read and came back as zero rows; the plan now refuses the head counts."""
    from xyserve.plan.triton_attention import StaticTritonPlan, build_triton_plan

    meta = build_case([StageSpec(5, 3, prefill=True)], 4, 4, 16, 8, seed=1).meta
    for build in (build_triton_plan, StaticTritonPlan.allocate):
        args = (16,) if build is build_triton_plan else (16, 8)
        with pytest.raises(ValueError, match="multiple of num_kv_heads"):
            build(meta, 6, 4, *args)


def test_triton_launch_refuses_tensors_unlike_its_plan():
    """The kernel trusts the plan's tile rows and the tensors' shapes alike. A plan built for 1
    query head per KV head, run on 8 (its tiles then hold more rows than BLOCK_M: wrong rows,
    max error ~2), and a q shorter than the plan's tokens (written out of bounds: heap
    corruption under the interpreter) ran unchecked; both are refused before the launch."""
    pytest.importorskip("triton")
    from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention
    from xyserve.plan.triton_attention import build_triton_plan

    c = build_case([StageSpec(40, 0, prefill=True), StageSpec(1, 9)], 8, 1, 16, 8, seed=1)
    with pytest.raises(ValueError, match="plan was built for"):
        plan = build_triton_plan(c.meta, 1, 1, 16, num_workers=2, block_m=16)
        triton_meta_attention(plan, c.q, c.k_cache, c.v_cache, c.scale)
    plan = build_triton_plan(c.meta, 8, 1, 16, num_workers=2)
    with pytest.raises(ValueError, match="the plan covers 41 tokens"):
        triton_meta_attention(plan, c.q[:3], c.k_cache, c.v_cache, c.scale)
    with pytest.raises(ValueError, match="share a dtype"):
        triton_meta_attention(plan, c.q, c.k_cache.half(), c.v_cache.half(), c.scale)
    with pytest.raises(ValueError, match="out must be like q"):
        triton_meta_attention(plan, c.q, c.k_cache, c.v_cache, c.scale, out=c.q[:3].clone())


def test_decode_kernel_only_for_float32_and_bfloat16_caches():
    hq, hkv, d = 8, 2, 16
    c = build_case([StageSpec(1, 30), StageSpec(1, 7)], hq, hkv, d, 16, seed=2)
    be = MetaAttention()
    be.warmup("cpu", torch.float64)  # the engine tells the backend its dtype at start
    assert be.plan(c.meta, hq, hkv, d).decode is None
    for dtype in (torch.float32, torch.bfloat16):
        be.warmup("cpu", dtype)
        plan = be.plan(c.meta, hq, hkv, d)
        assert plan.decode is not None and plan.decode.num_tiles == 2 and not plan.packs


@pytest.mark.skipif(not cpu_decode.available(torch.bfloat16), reason="needs numba")
@pytest.mark.parametrize("d", [64, 33])
def test_bfloat16_decode_kernel_matches_the_reference(d):
    """bfloat16 caches and queries (a bfloat16 engine): the decode and verify rows on the numba
    kernel (the caches read widened, float32 arithmetic, the outputs rounded once) against the
    dense reference in float32 on the same bfloat16 values; the prefill rows on the torch path."""
    rng = random.Random(d)
    hq, hkv, bs = 8, 2, 16
    c = build_case(mixed_specs(rng), hq, hkv, d, bs, seed=rng.randint(0, 1 << 30))
    q, k, v = (t.bfloat16() for t in (c.q, c.k_cache, c.v_cache))
    ref = reference_attention(c.meta, q.float(), k.float(), v.float(), c.scale)
    be = MetaAttention()
    be.warmup("cpu", torch.bfloat16)
    plan = be.plan(c.meta, hq, hkv, d)
    assert plan.decode is not None
    out = be.run(plan, q, k, v, c.scale)
    assert out.dtype == torch.bfloat16
    rows = torch.as_tensor(plan.decode.q_rows)
    # one bfloat16 rounding of outputs of magnitude <= max |v|
    torch.testing.assert_close(
        out[rows].float(), ref[rows], atol=2**-7 * float(v.abs().max()), rtol=0
    )
    torch.testing.assert_close(out.float(), ref, atol=0.06, rtol=0)  # the torch path: bf16 math


@pytest.mark.skipif(not cpu_decode.available(torch.float32), reason="needs numba")
def test_decode_kernel_exp_over_the_whole_softmax_range():
    """The kernel's exp (range reduction + polynomial) against float64 exp, and decode rows
    whose scores spread over the whole range (peaked softmax, underflowing keys)."""
    from numba import njit

    from xyserve.kernels.cpu.exp import exp_parts

    @njit
    def exp_of(xs):
        out = np.empty_like(xs)
        for i in range(xs.shape[0]):
            p, n = exp_parts(xs[i])
            out[i] = p * np.float32(2.0) ** n
        return out

    xs = np.linspace(-87.0, 0.0, 100_001).astype(np.float32)
    ref = np.exp(xs.astype(np.float64))
    assert np.max(np.abs(exp_of(xs) - ref) / ref) < 5e-7
    assert exp_of(np.array([-200.0], np.float32))[0] < 1e-37  # clamped, not wrapped

    hq, hkv, d = 8, 2, 64
    c = build_case([StageSpec(1, 90), StageSpec(1, 33), StageSpec(1, 5)], hq, hkv, d, 16, seed=5)
    q = c.q * 40.0  # scores spread over hundreds: most keys underflow
    ref_out = reference_attention(c.meta, q, c.k_cache, c.v_cache, c.scale)
    be = MetaAttention()
    be.warmup("cpu", torch.float32)
    plan = be.plan(c.meta, hq, hkv, d)
    assert plan.decode is not None and plan.decode.num_tiles == 3
    out = be.run(plan, q, c.k_cache, c.v_cache, c.scale)
    torch.testing.assert_close(out, ref_out, **TOL)


def test_verify_rows_run_on_the_decode_kernel():
    """A chain verify's k + 1 rows are decode rows of growing length; a tree's rows are decode
    rows that see the history, the real new token and their ancestors (as extra keys)."""
    hq, hkv, d = 8, 2, 64
    specs = [StageSpec(5, 70, num_spec_tokens=4), StageSpec(5, 30, tree=True), StageSpec(1, 40)]
    c = build_case(specs, hq, hkv, d, 16, seed=11)
    plan = MetaAttention().plan(c.meta, hq, hkv, d)
    rows = c.meta.table.rows
    chain = [r for r in rows if r.kind.value == "verify" and r.tree_mask is None][0]
    by_row = dict(zip(plan.decode.q_rows.tolist(), plan.decode.kv_lens.tolist()))
    for i in range(chain.num_tokens):
        assert by_row[chain.start + i] == chain.context_len + i + 1
    tree = [r for r in rows if r.tree_mask is not None][0]
    dec = plan.decode
    for j, q in enumerate(dec.q_rows.tolist()):
        if not tree.start <= q < tree.start + tree.num_tokens:
            continue
        seen = (
            list(range(dec.kv_lens[j]))
            + dec.extra_pos[dec.extra_off[j] : dec.extra_off[j + 1]].tolist()
        )
        mask = tree.tree_mask[q - tree.start]
        want = list(range(tree.context_len)) + [
            tree.context_len + k for k, ok in enumerate(mask) if ok
        ]
        assert seen == want
    assert len(by_row) == chain.num_tokens + tree.num_tokens + 1  # and the decode
    assert dec.extra_pos.size > 0 and not plan.packs
    ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
    out = MetaAttention().run(plan, c.q, c.k_cache, c.v_cache, c.scale)
    torch.testing.assert_close(out, ref, **TOL)

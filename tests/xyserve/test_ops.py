"""The ops facade: every layout a GEMM backend can hand it gives the same numbers.

The numba paths (row-major float32 on CPU) and the torch paths (a ``swap`` GEMM's column-major
output, other dtypes, Qwen3's q/k norm) are compared with plain references.
"""

from __future__ import annotations

import torch
from references import rotate_reference

from xyserve.kernels import ops
from xyserve.model.rope import RotaryEmbedding


def _column_major(x: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """x's values in a swapped GEMM's layout: token-minor, rows ``pad`` apart past T."""
    buf = torch.zeros((x.shape[1], x.shape[0] + pad), dtype=x.dtype)
    buf[:, : x.shape[0]] = x.t()
    return buf[:, : x.shape[0]].t()


def _rms_reference(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    return (w.double() * x64 / (x64.square().mean(-1, keepdim=True) + eps).sqrt()).to(x.dtype)


def _case(hq: int, hkv: int, d: int, t: int = 6, blocks: int = 4, bs: int = 4):
    gen = torch.Generator().manual_seed(hq * 31 + d)
    rope = RotaryEmbedding(d, 64, 10000.0, None, "cpu")
    positions = torch.tensor([0, 3, 4, 9, 40, 63])[:t]
    slots = torch.randperm(blocks * bs, generator=gen)[:t]
    qkv = torch.randn((t, (hq + 2 * hkv) * d), generator=gen)
    cache = torch.randn((blocks, bs, hkv, d), generator=gen)
    return rope.tables(positions, torch.float32), slots, qkv, cache


def _expected(qkv, tables, slots, cache, hq, hkv, qk_norm=None, eps=1e-6):
    t, d = qkv.shape[0], cache.shape[-1]
    heads = qkv.reshape(t, hq + 2 * hkv, d)
    q, k, v = heads.split([hq, hkv, hkv], dim=1)
    if qk_norm is not None:
        q, k = _rms_reference(q, qk_norm[0], eps), _rms_reference(k, qk_norm[1], eps)
    q, k = rotate_reference(q, *tables), rotate_reference(k, *tables)
    k_cache, v_cache = cache.clone(), cache.clone()
    k_cache.view(-1, hkv, d)[slots] = k
    v_cache.view(-1, hkv, d)[slots] = v
    return q, k_cache, v_cache


def test_rope_and_cache_agrees_across_layouts_and_q_k_norm():
    hq, hkv, d = 4, 2, 8
    tables, slots, qkv, cache = _case(hq, hkv, d)
    gen = torch.Generator().manual_seed(5)
    norms = (torch.randn(d, generator=gen), torch.randn(d, generator=gen))
    for x in (qkv, _column_major(qkv), _column_major(qkv, pad=3)):
        for qk_norm in (None, norms):
            rotary = ops.StepRotary(*tables)
            k_cache, v_cache = cache.clone(), cache.clone()
            q = ops.rope_and_cache(x, rotary, slots, k_cache, v_cache, qk_norm, 1e-6)
            q_ref, k_ref, v_ref = _expected(qkv, tables, slots, cache, hq, hkv, qk_norm)
            assert q.shape == (qkv.shape[0], hq, d)
            torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(k_cache, k_ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v_cache, v_ref, atol=0, rtol=0)


def test_step_rotary_lays_the_tables_out_once_per_step():
    tables, _, qkv, _ = _case(2, 1, 8)
    rotary = ops.StepRotary(*tables)
    heads = _column_major(qkv).reshape(qkv.shape[0], 4, 8)
    first = rotary.like(heads)
    assert first[0].stride(0) == 1  # token-minor, as the column-major qkv
    assert rotary.like(heads)[0] is first[0]  # made once, reused by every later layer
    assert rotary.like(qkv.reshape(qkv.shape[0], 4, 8))[0] is tables[0]  # row-major: as built


def test_rms_norm_and_silu_mul_on_every_layout():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((5, 16), generator=gen)
    w = torch.randn(16, generator=gen)
    for xi in (x, _column_major(x), _column_major(x, pad=3), x.double()):
        y = ops.rms_norm(xi, w.to(xi.dtype), 1e-6)
        torch.testing.assert_close(y, _rms_reference(xi, w.to(xi.dtype), 1e-6))
    gu = torch.randn((5, 12), generator=gen)
    g, u = gu.double().chunk(2, dim=-1)
    ref = (g / (1 + torch.exp(-g)) * u).float()
    for gi in (gu, _column_major(gu), _column_major(gu, pad=5)):
        torch.testing.assert_close(ops.silu_mul(gi), ref, atol=1e-6, rtol=1e-6)


def test_greedy_ids_on_every_layout():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn((7, 300), generator=gen)
    want = logits.argmax(dim=-1).tolist()
    for x in (logits, _column_major(logits), _column_major(logits, pad=1), logits[:1]):
        assert ops.greedy_ids(x) == want[: x.shape[0]]


def test_warmup_runs_on_any_device_and_dtype():
    ops.warmup("cpu", torch.float32)
    ops.warmup("cpu", torch.float64)  # nothing to build for the model; argmax still

"""The numba SiLU-mul and RoPE + cache-write kernels equal the torch path they replace."""

from __future__ import annotations

import pytest
import torch
from references import rotate_reference

from xyserve.kernels.cpu import act as cpu_act
from xyserve.kernels.cpu import rope as cpu_rope
from xyserve.model.rope import RotaryEmbedding

pytestmark = pytest.mark.skipif(cpu_act.njit is None, reason="needs numba")


def _torch_silu_mul(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.double().chunk(2, dim=-1)  # an independent reference, in float64
    return (g / (1 + torch.exp(-g)) * u).float()


def test_silu_mul_matches_float64_over_the_whole_range():
    gen = torch.Generator().manual_seed(0)
    for t, i in [(1, 4), (3, 37), (64, 2048)]:
        gu = torch.randn((t, 2 * i), generator=gen) * 6
        assert cpu_act.applies(gu)
        torch.testing.assert_close(cpu_act.silu_mul(gu), _torch_silu_mul(gu), atol=1e-6, rtol=1e-6)
    edge = torch.tensor([[-200.0, -90.0, -1e-3, 0.0, 1e-3, 90.0, 200.0] + [1.5] * 7])
    torch.testing.assert_close(cpu_act.silu_mul(edge), _torch_silu_mul(edge), atol=1e-6, rtol=1e-6)
    assert cpu_act.silu_mul(torch.tensor([[float("nan"), 1.0]])).isnan().all()


def test_silu_mul_other_layouts_and_dtypes_take_the_torch_path():
    gen = torch.Generator().manual_seed(1)
    col = torch.randn((12, 5), generator=gen).t()  # a swap GEMM's column-major output
    for gu in (col, torch.randn((5, 12), generator=gen).double(), torch.randn((2, 3, 12))):
        assert not cpu_act.applies(gu)
        torch.testing.assert_close(
            cpu_act.silu_mul(gu), _torch_silu_mul(gu).to(gu.dtype), atol=1e-6, rtol=1e-6
        )


@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 8), (12, 4, 64), (2, 2, 6)])
def test_rope_and_cache_matches_the_torch_path(hq, hkv, d):
    gen = torch.Generator().manual_seed(hq * 100 + d)
    t, blocks, bs = 7, 5, 4
    rope = RotaryEmbedding(d, 64, 10000.0, None, "cpu")
    positions = torch.tensor([0, 5, 6, 7, 30, 31, 63])
    cos, sin = rope.tables(positions, torch.float32)
    slots = torch.randperm(blocks * bs, generator=gen)[:t]
    qkv = torch.randn((t, (hq + 2 * hkv) * d), generator=gen)
    k_cache = torch.randn((blocks, bs, hkv, d), generator=gen)
    v_cache = torch.randn((blocks, bs, hkv, d), generator=gen)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()

    qk, v = qkv.split([(hq + hkv) * d, hkv * d], dim=-1)
    q_ref, k = rotate_reference(qk.reshape(t, hq + hkv, d), cos, sin).split([hq, hkv], dim=1)
    k_ref.view(-1, hkv, d).index_copy_(0, slots, k)
    v_ref.view(-1, hkv, d).index_copy_(0, slots, v.reshape(t, hkv, d))

    assert cpu_rope.kernel_inputs(qkv, slots, hq, hkv, k_cache, v_cache) is not None
    q = cpu_rope.rope_and_cache(qkv, cos, sin, slots, hq, hkv, k_cache, v_cache)
    assert q.is_contiguous() and q.shape == (t, hq, d)
    torch.testing.assert_close(q, q_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k_cache, k_ref, atol=1e-6, rtol=1e-6)  # other slots untouched
    torch.testing.assert_close(v_cache, v_ref, atol=0, rtol=0)


def test_rope_and_cache_applies_only_where_every_shape_and_dtype_fits():
    qkv, slots, cache = torch.zeros((3, 24)), torch.arange(3), torch.zeros((2, 4, 1, 8))
    assert cpu_rope.kernel_inputs(qkv, slots, 1, 1, cache, cache.clone()) is not None
    strided = torch.zeros((2, 4, 2, 8))[:, :, :1]
    for case in [
        (torch.zeros((24, 3)).t(), slots, 1, 1, cache, cache),  # column-major qkv
        (qkv.double(), slots, 1, 1, cache.double(), cache.double()),
        (qkv, slots, 1, 1, cache, cache.double()),  # v cache of another dtype
        (qkv, slots, 1, 1, strided, strided.clone()),  # non-contiguous caches
        (qkv, slots.int(), 1, 1, cache, cache),  # slots not int64
        (qkv, slots[:2], 1, 1, cache, cache),  # one slot short
        (qkv, slots, 2, 1, cache, cache),  # qkv width does not match the heads
    ]:
        assert cpu_rope.kernel_inputs(*case) is None

"""The numpy views the numba wrappers cache per tensor (``kernels.cpu.views``) follow the
tensor: a re-pointed or swapped KV cache is read and written where it now lives."""

from __future__ import annotations

import numba
import pytest
import torch

from xyserve.kernels import ops
from xyserve.kernels.cpu import decode as cpu_decode
from xyserve.kernels.cpu import rope as cpu_rope
from xyserve.kernels.cpu import use_cpu_threads
from xyserve.kernels.cpu.views import as_numpy
from xyserve.model.rope import RotaryEmbedding
from xyserve.plan.meta_attention import build_decode_plan

pytestmark = pytest.mark.skipif(cpu_rope.njit is None, reason="needs numba")


def test_as_numpy_is_a_cached_view_that_follows_the_tensors_storage():
    t = torch.zeros((2, 3))
    a = as_numpy(t)
    a[1, 2] = 5.0
    assert t[1, 2].item() == 5.0 and as_numpy(t) is a
    t.set_(torch.ones((4, 3)))  # re-pointed: a fresh view of the new storage
    b = as_numpy(t)
    assert b is not a and b.shape == (4, 3) and b.sum() == 12.0
    t.resize_(2, 6)
    assert as_numpy(t).shape == (2, 6)
    t.zero_()
    assert as_numpy(t).sum() == 0.0
    assert as_numpy(torch.arange(4)).dtype.name == "int64"
    for bad in (
        torch.zeros((3, 2)).t(),
        torch.zeros(3).double(),
        torch.zeros(3, requires_grad=True),
    ):
        assert as_numpy(bad) is None


def _rope_inputs():
    gen = torch.Generator().manual_seed(0)
    hq, hkv, d = 2, 1, 8
    rotary = ops.StepRotary(
        *RotaryEmbedding(d, 64, 10000.0, None, "cpu").tables(torch.tensor([3]), torch.float32)
    )
    qkv = torch.randn((1, (hq + 2 * hkv) * d), generator=gen)
    return qkv, rotary, torch.tensor([5])


def test_rope_and_cache_writes_into_a_swapped_or_re_pointed_cache():
    qkv, rotary, slots = _rope_inputs()
    k1, v1 = torch.zeros((2, 4, 1, 8)), torch.zeros((2, 4, 1, 8))
    q1 = ops.rope_and_cache(qkv, rotary, slots, k1, v1)
    k2, v2 = torch.zeros_like(k1), torch.zeros_like(v1)  # another cache, same shapes
    q2 = ops.rope_and_cache(qkv, rotary, slots, k2, v2)
    torch.testing.assert_close(q1, q2, atol=0, rtol=0)
    torch.testing.assert_close(k2, k1, atol=0, rtol=0)
    torch.testing.assert_close(v2, v1, atol=0, rtol=0)
    assert v1[1, 1, 0].equal(qkv[0, -8:])  # slot 5 = block 1, offset 1

    old_k, old_v = k1.clone(), v1.clone()
    new_k, new_v = torch.zeros_like(k1), torch.zeros_like(v1)
    kept_k, kept_v = k1.view(-1), v1.view(-1)  # the old storage, still alive
    k1.set_(new_k)  # the same tensor objects, now on other storage
    v1.set_(new_v)
    ops.rope_and_cache(qkv, rotary, torch.tensor([2]), k1, v1)
    assert new_v[0, 2, 0].equal(qkv[0, -8:]) and new_k[0, 2].abs().sum() > 0
    torch.testing.assert_close(kept_k.view_as(old_k), old_k, atol=0, rtol=0)  # untouched
    torch.testing.assert_close(kept_v.view_as(old_v), old_v, atol=0, rtol=0)


def test_rope_and_cache_refuses_tensors_the_kernel_cannot_take():
    qkv, rotary, slots = _rope_inputs()
    cache = torch.zeros((2, 4, 1, 8))
    with pytest.raises(ValueError, match="applies"):
        cpu_rope.rope_and_cache(qkv, rotary.cos, rotary.sin, slots.int(), 2, 1, cache, cache)
    assert rotary.rows() is rotary.rows()  # converted once per step
    torch.testing.assert_close(torch.from_numpy(rotary.rows()[0]), rotary.cos.squeeze(1))


def test_decode_kernel_reads_a_re_pointed_cache():
    gen = torch.Generator().manual_seed(1)
    plan = build_decode_plan([0], [6], [[1, 0]], 1)
    q = torch.randn((1, 2, 8), generator=gen)
    k, v = torch.randn((2, 4, 1, 8), generator=gen), torch.randn((2, 4, 1, 8), generator=gen)
    out1 = torch.zeros_like(q)
    cpu_decode.run_decode(plan, q, k, v, 0.5, out1)
    k2, v2 = torch.randn(k.shape, generator=gen), torch.randn(v.shape, generator=gen)
    want = torch.zeros_like(q)
    cpu_decode.run_decode(plan, q, k2.clone(), v2.clone(), 0.5, want)
    k.set_(k2)
    v.set_(v2)
    got = torch.zeros_like(q)
    cpu_decode.run_decode(plan, q, k, v, 0.5, got)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert not torch.allclose(got, out1)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_use_cpu_threads_sees_a_count_set_behind_its_back():
    before = numba.get_num_threads()
    try:
        assert use_cpu_threads(2) == 2 and numba.get_num_threads() == 2
        numba.set_num_threads(1)  # not through use_cpu_threads
        assert use_cpu_threads(2) == 2 and numba.get_num_threads() == 2
        assert use_cpu_threads(2, items=1) == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_small_work_runs_on_the_calling_thread():
    """A kernel with less than ``MIN_WORK_PER_THREAD`` per thread gets fewer threads: a verify
    step's few rows must not wake numba's pool (docs/perf.md, "Threads for small kernels")."""
    from xyserve.kernels.cpu import MIN_WORK_PER_THREAD

    before = numba.get_num_threads()
    try:
        assert use_cpu_threads(2, items=5, work=5 * 256) == 1
        assert numba.get_num_threads() == 1
        assert use_cpu_threads(2, items=5, work=2 * MIN_WORK_PER_THREAD - 1) == 1
        assert use_cpu_threads(2, items=5, work=2 * MIN_WORK_PER_THREAD) == 2
        assert use_cpu_threads(2, items=5, work=0) == 1
        assert use_cpu_threads(2, items=5) == 2  # no estimate: rows decide, as before
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_a_verify_sized_silu_mul_stays_on_one_thread(monkeypatch):
    """The wrappers pass their work: five rows of a small model's MLP run on one thread."""
    import xyserve.kernels.cpu as cpu
    from xyserve.kernels.cpu import act

    seen = []
    real = cpu.use_cpu_threads

    def spy(requested=None, items=None, work=None):
        seen.append(real(requested, items, work))
        return seen[-1]

    monkeypatch.setattr(act, "use_cpu_threads", spy)
    gu = torch.randn(5, 2 * 768)
    torch.testing.assert_close(
        act.silu_mul(gu), torch.nn.functional.silu(gu[:, :768]) * gu[:, 768:], rtol=1e-5, atol=1e-6
    )
    assert seen == [1]


def test_starting_numbas_pool_keeps_torchs_thread_count():
    """numba's pool start sets OpenMP's thread count, which torch reads: a user's one-thread
    setting made before the engine starts must survive it (a fresh process: the pool starts
    once per process)."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "assert torch.get_num_threads() == 1\n"  # a read first: then the pool start overrode it
        "from xyserve.kernels.cpu import use_cpu_threads\n"
        "use_cpu_threads(2)\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "1"

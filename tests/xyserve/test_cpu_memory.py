"""kernels.cpu.memory: aligned, huge-page-advised host arrays for the CPU kernels' weights and
K/V caches, and the packed weights and runner caches that live in them."""

from __future__ import annotations

import mmap

import numpy as np
import pytest
import torch

from xyserve.kernels.cpu import fused_forward as ff
from xyserve.kernels.cpu import memory

HUGE = hasattr(mmap, "MADV_HUGEPAGE")  # Linux: large arrays go to an advised mapping


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int64])
@pytest.mark.parametrize("shape", [(3, 5), (0,), 7, (2, 0, 4)])
def test_small_arrays_are_line_aligned(shape, dtype):
    a = memory.zeros(shape, dtype)
    want = (shape,) if isinstance(shape, int) else shape
    assert a.shape == want and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % memory.LINE == 0 and not a.any()
    assert not memory.on_huge_pages(a)  # under one huge page: a plain allocation


def test_large_arrays_start_on_a_huge_page():
    n = memory.HUGE_PAGE // 4 + 3  # just over one huge page of float32
    a = memory.zeros((n,))
    assert a.shape == (n,) and not a.any()  # an anonymous mapping reads as zeros
    assert memory.on_huge_pages(a) == HUGE
    assert a.ctypes.data % (memory.HUGE_PAGE if HUGE else memory.LINE) == 0
    a[-1] = 2.5  # the last element is inside the buffer, and writable
    assert a.sum() == 2.5


def test_copy_keeps_values_dtype_and_shape():
    rng = np.random.default_rng(0)
    for src in (
        rng.standard_normal((5, 7)).astype(np.float32),
        rng.integers(0, 1 << 16, (memory.HUGE_PAGE // 2 + 9,)).astype(np.uint16),
        rng.standard_normal((4, 3, 2))[:, ::2].astype(np.float32),  # not contiguous
    ):
        out = memory.copy(src)
        assert out.dtype == src.dtype and out.shape == src.shape and out.flags.c_contiguous
        assert np.array_equal(out, src) and not np.shares_memory(out, src)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tensor_zeros_any_dtype(dtype):
    t = memory.tensor_zeros((2, 3, memory.HUGE_PAGE // 8), dtype)
    assert t.dtype == dtype and t.shape == (2, 3, memory.HUGE_PAGE // 8) and t.is_contiguous()
    assert not t.any() and t.data_ptr() % memory.LINE == 0
    t[1, 2, -1] = 3
    assert t.sum().item() == 3


@pytest.mark.skipif(not ff.available(), reason="numba is not installed")
def test_packed_weights_live_in_this_memory():
    """Every array of ``ff.pack`` is 64-byte aligned, and a layer of more than a huge page goes
    to the advised mapping (the panels' values are checked in test_cpu_fused_linear)."""
    rng = np.random.default_rng(0)
    hidden, inter, heads, d = 256, 2048, 4, 64  # gate_up: 2 x 2048 x 256 float32 = 4 MiB
    layer = {
        "input_norm": np.ones(hidden),
        "post_norm": np.ones(hidden),
        "qkv": rng.standard_normal((3 * heads * d, hidden)),
        "qkv_bias": None,
        "o": rng.standard_normal((hidden, heads * d)),
        "o_bias": None,
        "gate_up": rng.standard_normal((2 * inter, hidden)),
        "down": rng.standard_normal((hidden, inter)),
        "q_norm": None,
        "k_norm": None,
    }
    cos = np.ones((16, d), np.float32)
    embed = rng.standard_normal((50, hidden))
    w = ff.pack(embed, embed, np.ones(hidden), [layer], cos, cos, heads, heads, d, 1e-6)
    arrays = {k: v for k, v in vars(w).items() if isinstance(v, np.ndarray)}
    assert all(a.ctypes.data % memory.LINE == 0 for a in arrays.values())
    assert memory.on_huge_pages(w.gate_up) == HUGE and memory.on_huge_pages(w.down) == HUGE
    assert np.array_equal(w.embed, embed.astype(np.float32))
    k_cache, v_cache = ff.new_cache(w, 8, 16)
    assert not k_cache.any() and not v_cache.any() and k_cache.shape == (1, 8, 16, heads, d)


@pytest.mark.skipif(not HUGE, reason="madvise is Linux-only")
def test_refused_advice_falls_back_to_a_plain_allocation(monkeypatch):
    """A kernel without transparent huge pages answers MADV_HUGEPAGE with EINVAL: the arrays
    then come from a plain allocation instead of failing (an invalid advice stands in)."""
    monkeypatch.setattr(memory, "_ADVISE", 0x7FFF)
    a = memory.zeros((memory.HUGE_PAGE // 4 + 3,))
    assert not a.any() and a.flags.writeable and a.ctypes.data % memory.LINE == 0
    assert not memory.on_huge_pages(a)
    t = memory.tensor_zeros((2, memory.HUGE_PAGE), torch.bfloat16)
    assert not t.any() and t.shape == (2, memory.HUGE_PAGE)

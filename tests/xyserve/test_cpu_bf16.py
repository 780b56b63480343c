"""bfloat16 bits in numba kernels (``kernels.cpu.bf16``) against torch's own conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xyserve.kernels.cpu import bf16

numba = pytest.importorskip("numba")


@numba.njit(cache=False)
def _store_and_read(dst, src, back):
    bf16.store(dst, src, src.shape[0])
    for e in range(dst.shape[0]):
        back[e] = bf16.at(dst, e)


def _values() -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    rnd = torch.randn(512, generator=gen) * torch.logspace(-30, 30, 512)
    # halfway cases (both rounding directions of a tie), extremes, zeros, infinities, NaN
    ties = torch.tensor(
        [0x3F808000, 0x3F818000, 0x3F80C000, 0x7F7FFFFF, 0x00000001], dtype=torch.int32
    )
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -1.5, 3e38])
    return torch.cat([rnd, ties.view(torch.float32), special]).numpy()


@pytest.mark.parametrize("compiled", [True, False])
def test_store_rounds_as_torch_and_at_widens_exactly(compiled):
    src = _values()
    dst = np.zeros(src.shape, np.uint16)
    back = np.zeros(src.shape, np.float32)
    if compiled:
        _store_and_read(dst, src, back)
    else:
        bf16.store(dst, src, src.shape[0])
        back[:] = [bf16.at(dst, e) for e in range(dst.shape[0])]
    want = torch.from_numpy(src).to(torch.bfloat16)
    nan = np.isnan(src)
    assert (dst[~nan] == want.view(torch.int16).numpy().view(np.uint16)[~nan]).all()
    assert np.isnan(back[nan]).all()
    np.testing.assert_array_equal(back[~nan], want.float().numpy()[~nan])


def test_float32_arrays_pass_through():
    src = _values()
    dst = np.zeros(src.shape, np.float32)
    back = np.zeros(src.shape, np.float32)
    _store_and_read(dst, src, back)
    np.testing.assert_array_equal(dst, src)
    np.testing.assert_array_equal(back, src)

"""The numba RMSNorm equals the torch expression; other layouts and dtypes take the torch path."""

from __future__ import annotations

import pytest
import torch

from xyserve.kernels.cpu import norm as cpu_norm
from xyserve.kernels.ops import rms_norm

pytestmark = pytest.mark.skipif(cpu_norm._kernel is None, reason="needs numba")


def _torch_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def test_rows_match_torch_and_keep_the_layout():
    gen = torch.Generator().manual_seed(0)
    for t, d in [(1, 8), (5, 33), (64, 768)]:
        w = torch.randn(d, generator=gen)
        x = torch.randn((t, d), generator=gen) * 4
        padded = torch.randn((t, d + 8), generator=gen)[:, :d]  # a row stride past d
        for xi in (x, padded):
            assert cpu_norm.applies(xi, w)
            y = rms_norm(xi, w, 1e-5)
            assert y.stride() == torch.empty_like(xi).stride()
            torch.testing.assert_close(y, _torch_rms(xi, w, 1e-5), atol=1e-5, rtol=1e-5)


def test_other_layouts_and_dtypes_take_the_torch_path():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, generator=gen)
    col = torch.randn((16, 6), generator=gen).t()  # column-major rows
    heads = torch.randn((3, 4, 16), generator=gen)  # q/k norm over heads
    for x in (col, heads, torch.randn((4, 16), generator=gen).double()):
        assert not cpu_norm.applies(x, w.to(x.dtype))
        x64 = x.double()  # an independent reference: float64, division by the root
        ref = w.double() * x64 / (x64.square().sum(-1, keepdim=True) / x.shape[-1] + 1e-6).sqrt()
        y = rms_norm(x, w.to(x.dtype), 1e-6)
        torch.testing.assert_close(y, ref.to(x.dtype), atol=1e-5, rtol=1e-5)


def test_a_nan_row_stays_in_its_row():
    """A NaN in one row gives NaN in that row only, as torch's RMSNorm does; it must not raise
    (a ZeroDivisionError there would fail the whole step, not just the request with the NaN)."""
    x, w = torch.randn(3, 64), torch.rand(64)
    x[1, 5] = float("nan")
    y = cpu_norm.rms_norm(x, w, 1e-5)
    assert y[1].isnan().all()
    want = torch.nn.functional.rms_norm(x[[0, 2]], (64,), w, 1e-5)
    torch.testing.assert_close(y[[0, 2]], want, rtol=1e-5, atol=1e-6)

"""The numba CPU GEMM equals torch.matmul at every remainder of its 4 x 3 register block."""

from __future__ import annotations

import pytest
import torch

from xyserve.kernels import cpu_gemm
from xyserve.kernels.smooth_gemm import SmoothGemm
from xyserve.plan.gemm_table import GemmConfig, GemmTable

pytestmark = pytest.mark.skipif(not cpu_gemm.available(torch.float32), reason="needs numba")


@pytest.mark.parametrize("threads", [1, 2])
def test_equals_matmul_at_every_block_remainder(threads):
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4, 5, 6, 7, 9, 33):  # weight rows: 4-row blocks plus 0-3 left over
        for k in (1, 3, 8, 37):
            w = torch.randn((n, k), generator=gen)
            b = torch.randn((n,), generator=gen)
            for m in (1, 2, 3, 4, 5, 6, 7, 11):  # token rows: 3-row blocks plus 0-2 left over
                x = torch.randn((m, k), generator=gen)
                ref = torch.matmul(x, w.t())
                y = cpu_gemm.linear(x, w, None, threads=threads)
                assert y.shape == (m, n) and y.is_contiguous()
                torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
                yb = cpu_gemm.linear(x, w, b, threads=threads)
                torch.testing.assert_close(yb, ref + b, atol=1e-5, rtol=1e-5)


def test_column_major_input_and_a_bucket_that_names_it():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn((40, 24), generator=gen)
    x = torch.randn((24, 13), generator=gen).t()  # what a swapped GEMM upstream leaves
    assert not x.is_contiguous()
    torch.testing.assert_close(cpu_gemm.linear(x, w, None), x @ w.t(), atol=1e-5, rtol=1e-5)
    table = GemmTable(budget=16, shapes={"o_proj": (40, 24)})
    table.set("o_proj", 16, GemmConfig(cpu_impl="numba"))
    gemm = SmoothGemm(table=table)
    gemm.warmup("cpu", torch.float32)
    y = gemm.linear(gemm.plan(13), "o_proj", x, w, None)
    torch.testing.assert_close(y, x @ w.t(), atol=1e-5, rtol=1e-5)
    # other dtypes take F.linear
    y64 = gemm.linear(gemm.plan(13), "o_proj", x.double(), w.double(), None)
    torch.testing.assert_close(y64, x.double() @ w.double().t())

"""The numba CPU GEMM equals torch.matmul at every remainder of its 6 x 16 register tile."""

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
    # weight rows: fewer than one 6-row block (F.linear), whole blocks, a last block that overlaps
    for n in (1, 5, 6, 7, 11, 12, 13, 33):
        for k in (1, 3, 8, 37):
            w = torch.randn((n, k), generator=gen)
            b = torch.randn((n,), generator=gen)
            # token rows: dot products only (< 8), an 8-row panel, 16-row panels, and each
            # with rows left over
            for m in (1, 3, 7, 8, 9, 15, 16, 17, 23, 24, 31, 40):
                x = torch.randn((m, k), generator=gen)
                ref = torch.matmul(x, w.t())
                y = cpu_gemm.linear(x, w, None, threads=threads)
                assert y.shape == (m, n) and y.is_contiguous()
                torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
                yb = cpu_gemm.linear(x, w, b, threads=threads)
                torch.testing.assert_close(yb, ref + b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m", [64, 29])  # four full panels; one panel, an 8-row one, 5 rows
def test_long_k_against_float64(m):
    """A K long enough for every vectorized and unrolled loop LLVM makes (AVX-512's dot products
    take 64 elements a step), 2 threads."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((m, 300), generator=gen)
    w = torch.randn((100, 300), generator=gen)
    ref = (x.double() @ w.double().t()).float()
    torch.testing.assert_close(cpu_gemm.linear(x, w, None, threads=2), ref, atol=1e-4, rtol=1e-5)


def test_inputs_the_kernel_cannot_take_go_to_f_linear():
    """The kernel checks no bounds: mismatched shapes get torch's error, other dtypes its result."""
    x = torch.randn((9, 8))
    with pytest.raises(RuntimeError):
        cpu_gemm.linear(x, torch.randn((7, 5)), None)
    with pytest.raises(RuntimeError):
        cpu_gemm.linear(x, torch.randn((7, 8)), torch.randn(6))
    w64 = torch.randn((7, 8), dtype=torch.float64)
    with pytest.raises(RuntimeError):  # F.linear refuses mixed dtypes, and so does this
        cpu_gemm.linear(x, w64, None)
    torch.testing.assert_close(cpu_gemm.linear(x.double(), w64, None), x.double() @ w64.t())


def test_empty_inner_dimension_gives_the_bias():
    b = torch.arange(7, dtype=torch.float32)
    y = cpu_gemm.linear(torch.zeros((3, 0)), torch.zeros((7, 0)), b)
    torch.testing.assert_close(y, b.expand(3, 7))


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

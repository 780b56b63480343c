"""The numba CPU GEMM equals torch.matmul at every remainder of its 6-row register tiles, at each
vector width the host runs (16 on AVX-512, 8 on AVX/AVX2) and the portable 4."""

from __future__ import annotations

import pytest
import torch

from xyserve.kernels.cpu import gemm as cpu_gemm
from xyserve.kernels.cpu import isa as cpu_isa
from xyserve.kernels.gemm.smooth import SmoothGemm
from xyserve.plan.gemm_table import GemmConfig, GemmTable

pytestmark = pytest.mark.skipif(not cpu_gemm.available(torch.float32), reason="needs numba")
WIDTHS = cpu_isa.host_widths()  # the portable 4 always; 8 and 16 where the CPU runs them


def _rows(width: int) -> list[int]:
    """Token counts around every panel boundary of ``width``: dot products only, a one-vector
    panel, at 16 an 8-row one, full panels of two vectors, each with rows left over."""
    edges = {1, 3, 4, 7, 8, 9, 2 * width, 3 * width, 5 * width}
    return sorted({m for e in edges for m in (e - 1, e, e + 1) if m >= 1} | {width + 8 + 3})


def test_host_widths_follow_the_isa(monkeypatch):
    assert cpu_isa.host_widths(("sse4.2",)) == (4,)
    assert cpu_isa.host_widths(("avx", "avx2", "fma")) == (4, 8)
    assert cpu_isa.host_widths(("avx", "avx2", "avx512f", "fma")) == (4, 8, 16)
    assert cpu_isa.vector_width(("avx", "avx2")) == 8
    monkeypatch.setenv(cpu_isa.WIDTH_ENV, "4")
    assert cpu_isa.vector_width(("avx", "avx2")) == 4
    monkeypatch.setenv(cpu_isa.WIDTH_ENV, "16")
    with pytest.raises(ValueError, match="runs widths"):
        cpu_isa.vector_width(("avx", "avx2"))


# every width on one thread; two threads (the weight rows split) at the host's width, on fewer
# shapes: a parallel launch on a shared 2-core box can wait milliseconds at its barrier
@pytest.mark.parametrize("threads,width", [(1, w) for w in WIDTHS] + [(2, WIDTHS[-1])])
def test_equals_matmul_at_every_block_remainder(threads, width):
    gen = torch.Generator().manual_seed(0)
    # weight rows: fewer than one 6-row block (F.linear), whole blocks, a last block that overlaps
    for n in (1, 5, 6, 7, 11, 12, 13, 33) if threads == 1 else (7, 13, 33):
        for k in (1, 3, 8, 37) if threads == 1 else (37,):
            w = torch.randn((n, k), generator=gen)
            b = torch.randn((n,), generator=gen)
            for m in _rows(width):
                x = torch.randn((m, k), generator=gen)
                ref = torch.matmul(x, w.t())
                y = cpu_gemm.linear(x, w, None, threads, width)
                assert y.shape == (m, n) and y.is_contiguous()
                torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
                yb = cpu_gemm.linear(x, w, b, threads, width)
                torch.testing.assert_close(yb, ref + b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("m", [64, 29])  # full panels only; panels, smaller ones, 5 rows
def test_long_k_against_float64(m, width):
    """A K long enough for every vectorized and unrolled loop LLVM makes (AVX-512's dot products
    take 64 elements a step), 2 threads."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((m, 300), generator=gen)
    w = torch.randn((100, 300), generator=gen)
    ref = (x.double() @ w.double().t()).float()
    y = cpu_gemm.linear(x, w, None, 2, width)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)


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


def test_parallel_kernels_take_no_more_threads_than_work_items():
    """A single decode row runs on the calling thread (no thread woken for nothing)."""
    import numba

    from xyserve.kernels.cpu import act as cpu_act
    from xyserve.kernels.cpu import use_cpu_threads

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here")
    assert use_cpu_threads(2, items=1) == 1 and numba.get_num_threads() == 1
    assert use_cpu_threads(2, items=5) == 2
    gu = torch.randn((1, 16))
    cpu_act.silu_mul(gu)
    assert numba.get_num_threads() == 1
    g, u = gu.chunk(2, dim=-1)
    torch.testing.assert_close(cpu_act.silu_mul(gu), torch.nn.functional.silu(g) * u)


@pytest.mark.skipif(cpu_gemm.numba is None, reason="numba is not installed")
def test_tile_options_that_cannot_combine_are_refused():
    """A paired tile reads its two vectors from one word a column pair; a streaming tile
    prefetches where its caller says, so it takes no distance ahead."""
    with pytest.raises(ValueError, match="two to a row"):
        cpu_gemm.make_tile(2, 16, 1, paired=True)
    with pytest.raises(ValueError, match="where its caller says"):
        cpu_gemm.make_tile(2, 16, 2, prefetch=4096, stream=True)
    cpu_gemm.make_tile(2, 16, 2, stream=True, paired=True)  # the fused call's panel tiles

"""SmoothGEMM equals torch.matmul for every M up to the budget; bench kernels smoke test."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from xyserve.kernels.backend import get_gemm_backend
from xyserve.kernels.gemm.smooth import SmoothGemm
from xyserve.plan.gemm_table import CPU_IMPLS, GemmConfig, GemmTable, buckets, default_config

TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHAPES = {"qkv": (48, 32), "down": (32, 40)}  # (N, K), K off the tile multiples
BUDGET = 64


def _table(cpu_impl: str) -> GemmTable:
    t = GemmTable(budget=BUDGET, shapes=dict(SHAPES))
    for op in SHAPES:
        for pm in buckets(BUDGET):
            t.set(op, pm, GemmConfig(block_m=min(pm, 32), cpu_impl=cpu_impl))
    return t


@pytest.mark.parametrize("cpu_impl", CPU_IMPLS)
def test_cpu_smooth_equals_matmul_for_every_m(cpu_impl):
    gemm = SmoothGemm(table=_table(cpu_impl))
    gen = torch.Generator().manual_seed(0)
    for op, (n, k) in SHAPES.items():
        w = torch.randn((n, k), generator=gen)
        b = torch.randn((n,), generator=gen)
        for m in range(1, BUDGET + 1):
            x = torch.randn((m, k), generator=gen)
            plan = gemm.plan(m)
            torch.testing.assert_close(gemm.linear(plan, op, x, w, None), torch.matmul(x, w.t()))
            torch.testing.assert_close(gemm.linear(plan, op, x, w, b), torch.matmul(x, w.t()) + b)


def test_registry_and_3d_input_and_no_warning_per_shape():
    gemm = get_gemm_backend("smooth")
    x, w = torch.randn(2, 5, 16), torch.randn(24, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no table: defaults, without a warning per shape
        y = gemm.linear(gemm.plan(10), "o_proj", x, w, None)
    torch.testing.assert_close(y, torch.matmul(x, w.t()))


@pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_smooth_equals_matmul_for_every_m():
    from xyserve.kernels.gemm.triton_kernel import smooth_matmul

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(1)
    n, k = 48, 40
    w = torch.randn((n, k), generator=gen).to(dev)
    b = torch.randn((n,), generator=gen).to(dev)
    for m in range(1, BUDGET + 1):
        x = torch.randn((m, k), generator=gen).to(dev)
        cfg = default_config(m) if m % 2 else GemmConfig(16, 32, 16, 2, 4, 2)
        y = smooth_matmul(x, w, b if m % 3 else None, cfg)
        ref = torch.matmul(x, w.t()) + (b if m % 3 else 0)
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_split_k_and_cublas_configs_equal_matmul():
    """Split-K (K ranges summed atomically, empty ranges included) and the cuBLAS choice."""
    from xyserve.kernels.gemm.triton_kernel import smooth_matmul

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(2)
    n, k = 40, 72  # five K-tiles of 16, the last one partial
    w = torch.randn((n, k), generator=gen).to(dev)
    b = torch.randn((n,), generator=gen).to(dev)
    for m, split in ((1, 2), (5, 3), (17, 8), (33, 5)):  # 8 splits: three are empty
        x = torch.randn((m, k), generator=gen).to(dev)
        for bias in (None, b):
            ref = torch.matmul(x, w.t()) + (0 if bias is None else bias)
            cfg = GemmConfig(16, 32, 16, 2, 4, 2, split_k=split)
            torch.testing.assert_close(smooth_matmul(x, w, bias, cfg), ref, atol=1e-4, rtol=1e-4)
            y = smooth_matmul(x, w, bias, GemmConfig(gpu_impl="cublas"))
            torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    assert GemmConfig(split_k=4).key() != GemmConfig().key()
    assert GemmConfig(gpu_impl="cublas").key().startswith("cublas")


def test_tile_configs_the_kernel_cannot_run_are_refused():
    """A table is an editable JSON file: ``group_m=0`` (a division by zero in the swizzle, wrong
    rows with max error ~20 under the interpreter) and tile sides that are not powers of two
    were accepted; now the config itself refuses them, and so does a table that names one."""
    for bad in ({"group_m": 0}, {"block_m": 24}, {"block_k": 8}, {"split_k": 0}):
        with pytest.raises(ValueError):
            GemmConfig(**bad)
    assert GemmConfig(block_m=1).block_m == 1  # the M = 1 bucket's single-row tile is fine


def test_triton_smooth_refuses_operands_that_do_not_match():
    """x [M, K] against a weight of another K was read as the weight's first K columns (a
    silent wrong product); mixed dtypes failed inside the compiler. Both refused up front."""
    pytest.importorskip("triton")
    from xyserve.kernels.gemm.triton_kernel import smooth_matmul

    x, w = torch.randn(20, 40), torch.randn(30, 41)
    with pytest.raises(ValueError, match="K differs"):
        smooth_matmul(x, w, None, GemmConfig(16, 32, 16))
    with pytest.raises(ValueError, match="one dtype"):
        smooth_matmul(x, w[:, :40].half(), None, GemmConfig(16, 32, 16))


def test_bench_kernels_smoke(tmp_path, capsys):
    from xyserve.bench.kernels import main

    out = tmp_path / "k.json"
    argv = ["--cases", "1", "--budget", "48", "--workloads", "conversation", "coding"]
    argv += ["--heads", "4", "2", "32", "--repeat", "1", "--gemm-budget", "8"]
    argv += ["--gemm-models", "small", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["attention"]["mean_speedup_vs_per_stage"] > 0
    assert all(c["max_abs_err_vs_reference"] < 1e-4 for c in res["attention"]["cases"])
    assert res["gemm"]["mean_ratio_vs_torch"] > 0 and res["gemm"]["noise_floor_max"] > 0
    assert {r["m"] for r in res["gemm"]["rows"]} == {1, 2, 3, 7, 8}
    assert "attention.mean_speedup_vs_per_stage" in capsys.readouterr().out

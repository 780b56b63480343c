"""The GPU benchmark's Triton baselines, and the bench's GPU helpers, run interpreted on CPU.

Per-stage tutorial attention equals the dense reference on prefill-with-prefix, decode and
verify (chain and tree) stages with GQA; the padded tutorial matmul equals ``torch.matmul``.
Shapes are small: the interpreter runs every program in Python. Needs ``TRITON_INTERPRET=1``
(or CUDA); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from xyserve.bench.cases import StageSpec, build_case
from xyserve.kernels.attention.reference import reference_attention
from xyserve.plan.gemm_table import GemmConfig, padded_m

TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _specs(rng: random.Random) -> list[StageSpec]:
    specs = [
        StageSpec(rng.randint(17, 24), 0, prefill=True),  # plain causal prefill
        StageSpec(rng.randint(5, 20), rng.randint(1, 40), prefill=True),  # prefix offset
        StageSpec(1, rng.randint(1, 50)),  # decode
        StageSpec(0, 9),  # empty stage
        StageSpec(rng.randint(5, 7), rng.randint(1, 30), num_spec_tokens=4),  # chain verify
        StageSpec(rng.randint(5, 7), rng.randint(1, 30), tree=True),  # tree verify: dense mask
    ]
    rng.shuffle(specs)
    return specs


@pytest.mark.parametrize("seed", [0, 1])
def test_per_stage_triton_attention_matches_reference(seed):
    from xyserve.bench.triton_baselines import per_stage_triton_attention, plan_per_stage

    hq, hkv, d, bs = 4, 2, 64, 16  # GQA ratio 2
    rng = random.Random(seed)
    c = build_case(_specs(rng), hq, hkv, d, bs, seed=rng.randint(0, 1 << 30), device=DEV)
    ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
    plan = plan_per_stage(c.meta)
    assert len(plan.stages) == 5  # the empty stage is not launched
    out = per_stage_triton_attention(
        plan, c.q, c.k_cache, c.v_cache, c.scale, block_m=16, block_n=16
    )
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_padded_tutorial_matmul_equals_matmul():
    from xyserve.bench.triton_baselines import padded_tutorial_matmul

    gen = torch.Generator().manual_seed(2)
    n, k = 48, 40  # K off the tile multiple: the tutorial's K mask
    w = torch.randn((n, k), generator=gen).to(DEV)
    cfg = GemmConfig(block_m=16, block_n=32, block_k=16, group_m=2)
    for m in (1, 5, 16, 17, 33):
        x = torch.randn((m, k), generator=gen).to(DEV)
        y = padded_tutorial_matmul(x, w, cfg)
        assert y.shape == (m, n) and (padded_m(m) % 16 == 0 or m == 1)  # 1: its own bucket
        torch.testing.assert_close(y, torch.matmul(x, w.t()), atol=1e-4, rtol=1e-4)


def test_bench_gpu_helpers_run_interpreted():
    """The GPU section's per-case helpers, on CPU tensors with a one-shot timer."""
    from xyserve.bench.kernels_gpu import gpu_attention_case, gpu_gemm_point

    def once(fn) -> float:
        fn()
        return 1.0

    rng = random.Random(3)
    specs = [StageSpec(6, 10, prefill=True), StageSpec(1, 20), StageSpec(5, 8, tree=True)]
    c = build_case(specs, 4, 2, 64, 16, seed=rng.randint(0, 99), device=DEV)
    row = gpu_attention_case(c, 4, 2, 64, timer=once, block_m=16, block_n=16, check=True)
    for peer in ("per_stage_triton", "per_stage_type", "flex"):
        assert row[f"speedup_vs_{peer}"] == 1.0
    assert row["speedup_vs_flex_with_prep"] == 2.0  # kernel + preparation, each timed 1.0
    assert set(row["max_abs_err"]) == {"meta", "per_stage_triton", "per_stage_type", "flex"}
    assert all(e < 1e-4 for e in row["max_abs_err"].values())
    assert "speedup_vs_flash_attn" not in row  # not installed here: reported, not run
    cfg = GemmConfig(block_m=16, block_n=32, block_k=16, group_m=2)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn((48, 32), generator=gen).to(DEV)
    x = torch.randn((7, 32), generator=gen).to(DEV)
    pt = gpu_gemm_point(x, w, cfg, timer=once, check=True)
    assert pt["padded_m"] == 16 and pt["utilization_gain"] == 0.0
    assert pt["speedup_vs_cublas"] == 1.0 and pt["max_abs_err"] < 1e-4


def test_bench_gpu_section_runs_interpreted(tmp_path, capsys):
    """The whole GPU section (cases, table lookup, report) on one tiny case, interpreted."""
    from xyserve.bench.kernels import parse_args
    from xyserve.bench.kernels_gpu import bench_gpu, print_gpu_report

    wl = {  # short lengths: the interpreter walks every KV block in Python
        "schema": "xyserve.kernel_workload/1",
        "prompt_len": [[8, 40, 1.0]],
        "output_len": [[1, 16, 1.0]],
        "prefix_hit": [[0.0, 0.5, 1.0]],
        "running": [2, 3],
        "verify_fraction": 0.5,
        "tree_fraction": 0.5,
        "spec_len": [4, 5],
        "max_prefills": 1,
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(wl))
    args = parse_args(
        ["--cases", "1", "--budget", "24", "--workloads", str(path), "--heads", "4", "2", "32"]
        + ["--gemm-budget", "3", "--gpu-attn-block", "16", "16", "--gpu-tune"]
    )
    tiny = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
    res = bench_gpu(
        args, {"tiny": {**tiny, "intermediate_size": 48}}, device=DEV, timer=lambda f: (f(), 1.0)[1]
    )
    a = res["attention"]
    assert a["summary"]["speedup_vs_per_stage_type"]["mean"] == 1.0
    assert set(a["not_installed"]) == {"flash_attn", "flashinfer"}
    assert all(e < 1e-2 for c in a["cases"] for e in c["max_abs_err"].values())
    g = res["gemm"]
    assert {r["m"] for r in g["rows"]} == {1, 2, 3} and g["tuned_points"] == len(g["rows"])
    # Every timing ties at 1.0, so the tuner keeps cuBLAS (Triton must be strictly faster).
    assert g["cublas_buckets"] == len(g["rows"]) and g["mean_speedup_vs_cublas"] == 1.0
    assert all(r["max_abs_err"] < 1e-2 for r in g["rows"])
    print_gpu_report(res, None)
    out = capsys.readouterr().out
    assert "gpu.attention.speedup_vs_flex:" in out and "not installed here" in out
    assert "gpu.gemm.mean_speedup_vs_cublas" in out
    print_gpu_report(None, "no CUDA device")
    assert capsys.readouterr().out.strip() == "gpu: skipped (no CUDA device)"

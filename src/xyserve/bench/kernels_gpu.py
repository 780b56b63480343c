"""``bench kernels``'s GPU section: Triton Meta-Attention and SmoothGEMM against the peers a
GPU user would pick, on the CPU section's cases moved to CUDA in ``--gpu-dtype``.

Attention: every case runs Meta-Attention (the ``meta`` backend: one persistent launch over
the step's task table) and each available peer of ``attention_peers`` (per-stage Triton,
per-stage-type, compiled FlexAttention over gathered K/V; FlashAttention and FlashInfer report
``not installed`` unless present). Times are the kernels alone, plans and per-step preparation
built outside the timing; FlexAttention's gather and block mask are also timed separately, and
reported as a second ratio that includes them.

GEMM: for each (op, M) SmoothGEMM with the bucket's config against ``torch.matmul``'s real-row
GEMM (cuBLAS) and the Triton tutorial matmul on a physically padded copy (same tile config:
the difference is the padding). ``--gpu-tune`` first tunes every measured bucket with the CUDA
search (``tools/tune_cuda``), which may pick split-K or cuBLAS itself for a bucket; otherwise a
table found for the model (or ``--gpu-gemm-table``) is used, else the untuned default.

Timing: ``triton.testing.do_bench`` (CUDA events, median, L2 flushed), two interleaved rounds,
each variant's best. Without a GPU the section prints one line and the JSON has ``"gpu": null``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from xyserve.bench.attention_peers import PEERS
from xyserve.bench.cases import (
    AttentionCase,
    build_case,
    case_summary,
    load_workload,
    sample_batch,
)
from xyserve.bench.kernels import _f, _models, gemm_ms
from xyserve.kernels.attention.meta.backend import MetaAttention
from xyserve.kernels.attention.reference import reference_attention
from xyserve.plan.gemm_table import (
    GemmConfig,
    GemmTable,
    Precision,
    default_config,
    find_table,
    load_checked,
    model_shapes,
)
from xyserve.plan.gemm_table import padded_m as bucket_of
from xyserve.tools.tune_cuda import do_bench_ms, tune_one_cuda

GPU_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
Timer = Callable[[Callable[[], object]], float]
FLEX_PAD = (128, 1024)  # query / key lengths padded to these multiples: few compiled shapes


def _best_of(fns: dict[str, Callable[[], object]], timer: Timer, rounds: int) -> dict[str, float]:
    """Each callable's best time over ``rounds`` interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timer(fn))
    return {k: min(v) for k, v in times.items()}


def gpu_attention_case(
    c: AttentionCase,
    hq: int,
    hkv: int,
    d: int,
    timer: Timer,
    block_m: int = 64,
    block_n: int = 64,
    check: bool = False,
    rounds: int = 2,
    peers: list[str] | None = None,
) -> dict:
    """One case: Meta-Attention against each available peer (kernels alone, plans prebuilt).

    On CUDA, Meta-Attention goes through the ``meta`` backend; on CPU tensors (tests, under
    ``TRITON_INTERPRET=1``) the same Triton plan and kernel are called directly, since the
    backend would take its CPU path there.
    """
    if c.q.is_cuda:
        be = MetaAttention()
        mp = be.plan(c.meta, hq, hkv, d)
        run_meta = lambda: be.run(mp, c.q, c.k_cache, c.v_cache, c.scale)  # noqa: E731
    else:
        from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention
        from xyserve.plan.triton_attention import build_triton_plan

        tplan = build_triton_plan(c.meta, hq, hkv, d)
        run_meta = lambda: triton_meta_attention(tplan, c.q, c.k_cache, c.v_cache, c.scale)  # noqa: E731
    names = [p for p in (peers or list(PEERS)) if PEERS[p].available()]
    prepared = {
        n: PEERS[n].prepare(c, hq, hkv, d, block_m=block_m, block_n=block_n, flex_pad=FLEX_PAD)
        for n in names
    }
    fns: dict[str, Callable[[], object]] = {"meta": run_meta}
    fns.update({n: p.run for n, p in prepared.items()})
    if "flex" in prepared:  # FlexAttention's gather + block mask, timed on their own
        fns["flex_prep"] = prepared["flex"].prep
    t = _best_of(fns, timer, rounds)
    row: dict = {**case_summary(c.meta), "meta_ms": t["meta"]}
    for n in names:
        row[f"{n}_ms"] = t[n]
        row[f"speedup_vs_{n}"] = t[n] / t["meta"]
    if "flex" in names:
        row["flex_prep_ms"] = t["flex_prep"]
        row["speedup_vs_flex_with_prep"] = (t["flex"] + t["flex_prep"]) / t["meta"]
    if check:
        ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale).float()
        row["max_abs_err"] = {
            n: float((f().float() - ref).abs().max()) for n, f in fns.items() if n != "flex_prep"
        }
    return row


def gpu_gemm_point(
    x: torch.Tensor,
    w: torch.Tensor,
    cfg: GemmConfig,
    timer: Timer,
    check: bool = False,
    rounds: int = 2,
) -> dict:
    """One (M, N, K): SmoothGEMM against cuBLAS (``torch.matmul`` on the real rows) and the
    tutorial matmul on a padded copy. TFLOP/s count the real rows' FLOPs only (2 M N K)."""
    from xyserve.bench.triton_baselines import padded_tutorial_matmul
    from xyserve.kernels.gemm.triton_kernel import smooth_matmul

    m, k = x.shape
    n = w.shape[0]
    pm = bucket_of(m)
    pad_cfg = cfg if cfg.gpu_impl == "triton" and cfg.split_k == 1 else default_config(pm)
    fns = {
        "smooth": lambda: smooth_matmul(x, w, None, cfg),
        "cublas": lambda: torch.matmul(x, w.t()),
        "pad_tutorial": lambda: padded_tutorial_matmul(x, w, pad_cfg, pm),
    }
    t = _best_of(fns, timer, rounds)
    flops = 2.0 * m * n * k
    row = {
        "m": m,
        "padded_m": pm,
        "n": n,
        "k": k,
        "config": cfg.key(),
        **{f"{v}_ms": t[v] for v in fns},
        **{f"{v}_tflops": flops / (t[v] * 1e-3) / 1e12 for v in fns},
        "speedup_vs_cublas": t["cublas"] / t["smooth"],
        "utilization_gain": t["pad_tutorial"] / t["smooth"] - 1.0,  # vs the padded tutorial
    }
    if check:
        ref = torch.matmul(x.float(), w.float().t())
        row["max_abs_err"] = max(float((f().float() - ref).abs().max()) for f in fns.values())
    return row


def _gpu_tables(args: argparse.Namespace) -> dict[str, GemmTable]:
    """Tuned CUDA GEMM tables: ``--gpu-gemm-table`` for every model, else one found per path."""
    precision = Precision(str(GPU_DTYPES[args.gpu_dtype]).removeprefix("torch."))
    if args.gpu_gemm_table:  # named by the user: it applies here, or the bench stops and says why
        t = load_checked(args.gpu_gemm_table, "cuda", precision)
        return {name: t for name in _models(args.gemm_models)}
    out: dict[str, GemmTable] = {}
    for n in args.gemm_models:
        p = Path(n)
        if n in ("small", "7b") or not p.exists():
            continue
        d = p if p.is_dir() else p.parent
        t = find_table(d, "cuda", precision)
        if t is not None:
            out[d.name] = t
    return out


def _device_name(device: str) -> str:
    import triton

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name = (
            f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB)"
        )
    else:
        name = f"{device} (Triton interpreter)"
    return f"{name}, torch {torch.__version__}, triton {triton.__version__}"


def _bench_gpu_attention(args, device, dtype, timer, check) -> dict:
    hq, hkv, d = args.heads
    cases = []
    total = args.cases * len(args.workloads)
    with tqdm(total=total, desc="bench kernels (gpu attention)", file=sys.stderr) as bar:
        for wname in args.workloads:
            wl = load_workload(wname)
            for i in range(args.cases):
                rng = random.Random(f"{wname}-{i}-{args.seed}")  # the CPU section's cases
                specs = sample_batch(wl, args.budget, rng)
                c = build_case(
                    specs, hq, hkv, d, args.block_size, seed=i, dtype=dtype, device=device
                )
                row = gpu_attention_case(
                    c,
                    hq,
                    hkv,
                    d,
                    timer,
                    block_m=args.gpu_attn_block[0],
                    block_n=args.gpu_attn_block[1],
                    check=check,
                    peers=args.gpu_attn_peers,
                )
                cases.append({"workload": wname, "case": i, **row})
                bar.update(1)
    summary: dict = {}
    keys = [k for k in cases[0] if k.startswith("speedup_vs_")]
    for key in keys:
        for wname in [None, *args.workloads]:
            vals = [c[key] for c in cases if wname is None or c["workload"] == wname]
            tag = key if wname is None else f"{key}[{wname}]"
            summary[tag] = {"mean": statistics.mean(vals), "min": min(vals), "max": max(vals)}
    missing = [p for p in (args.gpu_attn_peers or list(PEERS)) if not PEERS[p].available()]
    return {
        "heads": [hq, hkv, d],
        "per_stage_blocks": list(args.gpu_attn_block),
        "not_installed": missing,
        "cases": cases,
        "summary": summary,
    }


def _bench_gpu_gemm(args, models, device, dtype, timer, check, tune_timer) -> dict:
    tables = _gpu_tables(args)
    ms = gemm_ms(args)  # the GPU takes the full M range for 7B-sized shapes too
    shapes = [
        (mname, op, nk)
        for mname, cfg in models.items()
        for op, nk in model_shapes(cfg).items()
        if op != "lm_head"
    ]
    rows = []
    tuned_cfgs: dict[tuple[str, str, int], GemmConfig] = {}
    gen = torch.Generator().manual_seed(args.seed)
    with tqdm(total=len(shapes) * len(ms), desc="bench kernels (gpu gemm)", file=sys.stderr) as bar:
        for mname, op, (n, k) in shapes:
            w = (torch.randn((n, k), generator=gen) / k**0.5).to(device, dtype)
            table = tables.get(mname)
            for m in ms:
                pm = bucket_of(m)
                if args.gpu_tune:
                    key = (mname, op, pm)
                    if key not in tuned_cfgs:
                        xp = torch.randn((pm, k), generator=gen).to(device, dtype)
                        tuned_cfgs[key] = tune_one_cuda(w, xp, tune_timer)[0]
                    cfg, tuned = tuned_cfgs[key], True
                else:
                    tuned = (
                        table is not None
                        and table.shapes.get(op) in (None, (n, k))
                        and pm in table.entries.get(op, {})
                    )
                    cfg = table.entries[op][pm] if tuned else default_config(pm)
                x = torch.randn((m, k), generator=gen).to(device, dtype)
                pt = gpu_gemm_point(x, w, cfg, timer, check=check)
                rows.append({"model": mname, "op": op, "tuned": tuned, **pt})
                bar.update(1)
    sp = [r["speedup_vs_cublas"] for r in rows]
    small = [r["speedup_vs_cublas"] for r in rows if r["m"] <= 64]
    gains = [r["utilization_gain"] for r in rows]
    worst = min(rows, key=lambda r: r["speedup_vs_cublas"])
    return {
        "rows": rows,
        "tuned_points": sum(r["tuned"] for r in rows),
        "cublas_buckets": sum(r["config"].startswith("cublas") for r in rows),
        "mean_speedup_vs_cublas": statistics.mean(sp),
        "mean_speedup_vs_cublas_m_le_64": statistics.mean(small) if small else None,
        "min_speedup_vs_cublas": worst["speedup_vs_cublas"],
        "worst_case": {kk: worst[kk] for kk in ("model", "op", "m", "n", "k")},
        "mean_utilization_gain": statistics.mean(gains),
        "mean_smooth_tflops": statistics.mean(r["smooth_tflops"] for r in rows),
        "mean_cublas_tflops": statistics.mean(r["cublas_tflops"] for r in rows),
    }


def bench_gpu(
    args: argparse.Namespace,
    models: dict[str, dict],
    device: str = "cuda",
    timer: Timer | None = None,
) -> dict:
    """The GPU section. ``device``/``timer`` exist for the tests, which run it on CPU tensors
    under ``TRITON_INTERPRET=1`` with a one-shot timer; the CLI passes CUDA and ``do_bench``."""
    dtype = GPU_DTYPES[args.gpu_dtype]
    # Tuning times many candidates per bucket, each more briefly than the reported variants.
    tune_timer = timer or do_bench_ms(3, 10)
    timer = timer or do_bench_ms(args.gpu_warmup_ms, args.gpu_rep_ms)
    check = not args.no_reference
    res: dict = {"device": _device_name(device), "dtype": args.gpu_dtype}
    res["attention"] = (
        None if args.only == "gemm" else _bench_gpu_attention(args, device, dtype, timer, check)
    )
    res["gemm"] = (
        None
        if args.only == "attention"
        else _bench_gpu_gemm(args, models, device, dtype, timer, check, tune_timer)
    )
    return res


def print_gpu_report(gpu: dict | None, skipped: str | None) -> None:
    """The GPU section's tables, or the one line saying why it was skipped."""
    if gpu is None:
        print(f"\ngpu: skipped ({skipped})")
        return
    print(f"\ngpu device: {gpu['device']}  dtype={gpu['dtype']}")
    a = gpu["attention"]
    if a is not None:
        peers = [k[len("speedup_vs_") :] for k in a["cases"][0] if k.startswith("speedup_vs_")]
        print(
            "gpu attention: Triton Meta-Attention vs peers (time ratio peer / meta; >1: meta wins)"
        )
        if a["not_installed"]:
            print(f"  not installed here: {', '.join(a['not_installed'])}")
        head = f"{'workload':13s} {'#':>2s} {'P/D/V':>8s} {'tok':>5s} {'kv':>6s} {'meta ms':>8s}"
        print(head + "".join(f" {p[:16]:>16s}" for p in peers))
        for c in a["cases"]:
            pdv = f"{c['prefill']}/{c['decode']}/{c['verify']}"
            line = (
                f"{c['workload']:13s} {c['case']:2d} {pdv:>8s} {c['tokens']:5d} "
                f"{c['kv_tokens']:6d} {c['meta_ms']:8.3f}"
            )
            print(line + "".join(f" {c['speedup_vs_' + p]:15.2f}x" for p in peers))
        for tag, s in a["summary"].items():
            print(
                f"gpu.attention.{tag}: mean {s['mean']:.3f}x "
                f"(range {s['min']:.2f}x .. {s['max']:.2f}x)"
            )
    g = gpu["gemm"]
    if g is not None:
        print("gpu gemm: SmoothGEMM vs cuBLAS (torch.matmul) and the padded tutorial matmul")
        print(
            f"{'model':6s} {'op':8s} {'M':>5s} {'pad M':>5s} {'N':>6s} {'K':>6s} "
            f"{'config':>26s} {'smooth TF/s':>11s} {'cuBLAS TF/s':>11s} {'vs cuBLAS':>9s} "
            f"{'vs pad':>7s}"
        )
        for r in g["rows"]:
            print(
                f"{r['model']:6s} {r['op']:8s} {r['m']:5d} {r['padded_m']:5d} {r['n']:6d} "
                f"{r['k']:6d} {r['config']:>26s} {r['smooth_tflops']:11.2f} "
                f"{r['cublas_tflops']:11.2f} {r['speedup_vs_cublas']:8.2f}x "
                f"{100 * r['utilization_gain']:+6.1f}%"
            )
        wc = g["worst_case"]
        print(
            f"gpu.gemm.mean_speedup_vs_cublas: {g['mean_speedup_vs_cublas']:.3f}x "
            f"(M <= 64: {_f(g['mean_speedup_vs_cublas_m_le_64'], '.3f')}x; worst "
            f"{g['min_speedup_vs_cublas']:.2f}x at {wc['model']} {wc['op']} M={wc['m']}; "
            f"{g['tuned_points']}/{len(g['rows'])} points tuned, {g['cublas_buckets']} on cuBLAS)"
        )
        print(
            f"gpu.gemm.mean_utilization_gain (vs padded tutorial): "
            f"{100 * g['mean_utilization_gain']:+.1f}%"
        )

"""``xyserve bench kernels``: Meta-Attention and SmoothGEMM against their baselines, side by side.

Attention: mixed prefill/decode/verify batches under a token budget are drawn from two length
distributions kept as data files (``bench/workloads/{conversation,coding}.json``), with prefix
reuse, chunked prefill and verify rows of speculation length 4-8 (some with tree masks). Each
case runs Meta-Attention, the per-stage SDPA baseline and the dense reference on the same inputs.

GEMM: M = 1..budget (a sample by default, every M with ``--gemm-all-m``) for the bundled-model-like
and a 7B model's (N, K) shapes: SmoothGEMM, ``torch.matmul`` on the real rows and physical
pad-to-bucket. Ratios are times over ``torch.matmul``'s (lower is better). Every call reads a
cold weight (all variants share one cycle through copies larger than the L3 cache), as a
layer's weight is read once per step in a forward pass; each bucket is tuned the same way first.

Timing: attention variants run interleaved, ``--repeat`` rounds after a warm-up, and each keeps
its best round: on a shared machine, other load only ever adds time. GEMM samples are blocks of
calls about 10 ms long; ``--gemm-repeat`` rounds run the variants in a shuffled order, and a
ratio is the median over rounds of the two variants' times in the same round, which cancels
interference that outlasts a round. ``torch.matmul`` is timed twice, as two variants, so that
the report shows the noise floor beside the ratios. A GEMM point where SmoothGEMM looks more
than 3% slower gets up to four more batches of rounds (for every variant) before it is reported.
``--threads 1`` avoids the OpenMP barrier stalls that a busy 2-core box inflicts on
multi-threaded ops.

GPU (whenever CUDA is available, unless ``--no-gpu``; ``--gpu-only`` skips the CPU sections):
see ``bench/kernels_gpu.py``. Without a GPU the section prints one line and the JSON has
``"gpu": null``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from xyserve.bench.cases import WORKLOADS, build_case, case_summary, load_workload, sample_batch
from xyserve.kernels.attention.gather import gather_kv, stage_mask
from xyserve.kernels.attention.meta.backend import MetaAttention
from xyserve.kernels.attention.per_stage import PerStageSDPA
from xyserve.kernels.attention.reference import reference_attention
from xyserve.kernels.cpu.timing import block_time, calls_for, paired_ratio
from xyserve.kernels.gemm.smooth import SmoothGemm
from xyserve.output_files import output_file, write_text
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.gemm_table import (
    GemmConfig,
    GemmTable,
    default_config,
    model_shapes,
    padded_m,
)
from xyserve.tools.tune import cold_copies, tune_one

# Bundled-model-like: the model ``xyserve bench offline`` runs (llama-100m), else a stand-in.
_BUNDLED = Path(__file__).parent / "models" / "llama-100m.json"
SMALL_MODEL = (
    json.loads(_BUNDLED.read_text())
    if _BUNDLED.is_file()
    else {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "intermediate_size": 2048,
    }
)
LLAMA_7B = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
}


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def per_stage_flash(
    meta: AttentionMetadata,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The per-stage baseline forced onto the fused CPU flash kernel (additive float mask).

    ``F.scaled_dot_product_attention`` with a bool mask takes the unfused math path on CPU, so
    part of Meta-Attention's win over ``PerStageSDPA`` is the kernel. This column isolates the
    rest: batching stages into few calls, reading K/V in chunks, no GQA repeat.
    """
    out = torch.zeros_like(q)
    for row, tree in zip(meta.table.rows, meta.tree_masks):
        n = row.num_tokens
        if n == 0:
            continue
        qs = q[row.start : row.start + n].transpose(0, 1)
        k = gather_kv(k_cache, row.block_table, row.kv_len).transpose(0, 1)
        v = gather_kv(v_cache, row.block_table, row.kv_len).transpose(0, 1)
        group = q.shape[1] // k.shape[0]
        if group > 1:
            k = k.repeat_interleave(group, dim=0)
            v = v.repeat_interleave(group, dim=0)
        mask = stage_mask(n, row.kv_len, tree, q.device)
        add = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, -1.0e30)
        o, _ = _FLASH(
            qs[None], k[None], v[None], 0.0, False, attn_mask=add[None, None], scale=scale
        )
        out[row.start : row.start + n] = o[0].transpose(0, 1)
    return out


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_attention(args: argparse.Namespace, bar: tqdm) -> dict:
    hq, hkv, d = args.heads
    meta_be, sdpa_be = MetaAttention(), PerStageSDPA()
    cases = []
    for wname in args.workloads:
        wl = load_workload(wname)
        for i in range(args.cases):
            rng = random.Random(f"{wname}-{i}-{args.seed}")
            specs = sample_batch(wl, args.budget, rng)
            c = build_case(specs, hq, hkv, d, args.block_size, seed=i)
            t0 = time.perf_counter()
            mp = meta_be.plan(c.meta, hq, hkv, d)
            plan_s = time.perf_counter() - t0
            sp = sdpa_be.plan(c.meta, hq, hkv, d)
            run_meta = lambda mp=mp, c=c: meta_be.run(mp, c.q, c.k_cache, c.v_cache, c.scale)  # noqa: E731
            run_sdpa = lambda sp=sp, c=c: sdpa_be.run(sp, c.q, c.k_cache, c.v_cache, c.scale)  # noqa: E731
            run_flash = lambda c=c: per_stage_flash(c.meta, c.q, c.k_cache, c.v_cache, c.scale)  # noqa: E731
            # Interleave them so drift on a shared machine hits all alike.
            tm, ts, tf = [], [], []
            for _ in range(args.repeat):
                tm.append(_time(run_meta, 1))
                ts.append(_time(run_sdpa, 1))
                if _FLASH is not None:
                    tf.append(_time(run_flash, 1))
            t_meta, t_sdpa = min(tm), min(ts)
            t_flash = min(tf) if tf else None
            ref = None
            t_ref = None
            if not args.no_reference:
                t0 = time.perf_counter()
                ref = reference_attention(c.meta, c.q, c.k_cache, c.v_cache, c.scale)
                t_ref = time.perf_counter() - t0
            out = run_meta()
            err = float((out - ref).abs().max()) if ref is not None else None
            cases.append(
                {
                    "workload": wname,
                    "case": i,
                    **case_summary(c.meta),
                    "meta_ms": t_meta * 1e3,
                    "per_stage_ms": t_sdpa * 1e3,
                    "per_stage_flash_ms": None if t_flash is None else t_flash * 1e3,
                    "reference_ms": None if t_ref is None else t_ref * 1e3,
                    "plan_ms": plan_s * 1e3,
                    "speedup_vs_per_stage": t_sdpa / t_meta,
                    "speedup_vs_per_stage_flash": None if t_flash is None else t_flash / t_meta,
                    "max_abs_err_vs_reference": err,
                }
            )
            bar.update(1)
    sp = [c["speedup_vs_per_stage"] for c in cases]
    by_wl = {
        w: statistics.mean(c["speedup_vs_per_stage"] for c in cases if c["workload"] == w)
        for w in args.workloads
    }
    return {
        "heads": {"q": hq, "kv": hkv, "head_dim": d},
        "budget": args.budget,
        "block_size": args.block_size,
        "cases": cases,
        "mean_speedup_vs_per_stage": statistics.mean(sp),
        "min_speedup_vs_per_stage": min(sp),
        "max_speedup_vs_per_stage": max(sp),
        "mean_speedup_by_workload": by_wl,
        "mean_speedup_vs_per_stage_flash": (
            statistics.mean(c["speedup_vs_per_stage_flash"] for c in cases) if _FLASH else None
        ),
    }


def gemm_ms(args: argparse.Namespace, large: bool = False) -> list[int]:
    """M values: a sample straddling bucket edges (every M with --gemm-all-m), up to the budget."""
    budget = min(args.gemm_budget, args.gemm_budget_7b) if large else args.gemm_budget
    if args.gemm_all_m:
        return list(range(1, budget + 1))
    base = [1, 2, 3, 7, 16, 17, 33, 48, 64, 65, 100, 128, 160, 255, 256, 300, 417, 512, 1000]
    return sorted({m for m in base if m <= budget} | {budget})


def bench_gemm(args: argparse.Namespace, models: dict[str, dict], bar: tqdm) -> dict:
    smooth = SmoothGemm(table=GemmTable())
    rng = random.Random(args.seed)
    # Every measured bucket is tuned first, as `xyserve tune` does offline (CPU: the vendor GEMM
    # entry points, over the bucket's M range), so the run measures SmoothGEMM as deployed.
    rows = []
    gen = torch.Generator().manual_seed(args.seed)
    for mname, cfg in models.items():
        for op, (n, k) in model_shapes(cfg).items():
            if op == "lm_head":
                continue
            w = torch.randn((n, k), generator=gen) / k**0.5
            ws = cold_copies(w)  # each call reads a cold weight, as a layer in a decode step
            # One cycle shared by every variant: each call reads the copy after the one the
            # previous call read, so no variant finds its weight left in L3 by another.
            nxt = itertools.cycle(ws).__next__
            smooth.table.shapes[op] = (n, k)
            tuned: dict[int, GemmConfig] = {}  # this op's config per padded M
            for m in gemm_ms(args, large=int(cfg["hidden_size"]) >= 2048):
                pm = padded_m(m)
                if pm not in tuned:
                    xp = torch.randn((pm, k), generator=gen)
                    tuned[pm] = tune_one(ws, xp, "cpu", 7) or default_config(pm)
                smooth.table.set(op, pm, tuned[pm])
                x = torch.randn((m, k), generator=gen)
                plan = smooth.plan(m)

                def run_pad(x=x, pm=pm, m=m, nxt=nxt):
                    xp = torch.zeros((pm, x.shape[1]), dtype=x.dtype)
                    xp[:m] = x
                    return torch.matmul(xp, nxt().t())[:m]

                fns = {
                    "torch": lambda x=x, nxt=nxt: torch.matmul(x, nxt().t()),
                    # the same call timed as a second variant: the noise floor
                    "torch_again": lambda x=x, nxt=nxt: torch.matmul(x, nxt().t()),
                    "smooth": lambda x=x, op=op, plan=plan, nxt=nxt: smooth.linear(
                        plan, op, x, nxt(), None
                    ),
                    "pad": run_pad,
                }
                ts: dict[str, list[float]] = {kk: [] for kk in fns}
                order = list(fns)
                calls = calls_for(fns["torch"])  # a block of calls per sample, ~10 ms long
                for _ in range(5):  # an apparent loss gets up to four more batches of rounds
                    for _ in range(args.gemm_repeat):
                        rng.shuffle(order)  # no variant always runs after the same one
                        for kk in order:
                            ts[kk].append(block_time(fns[kk], calls))
                    ratio = {kk: paired_ratio(ts[kk], ts["torch"]) for kk in fns}
                    if ratio["smooth"] <= 1.03:
                        break
                med = {kk: statistics.median(v) for kk, v in ts.items()}
                rows.append(
                    {
                        "model": mname,
                        "op": op,
                        "m": m,
                        "padded_m": pm,
                        "n": n,
                        "k": k,
                        "torch_ms": med["torch"] * 1e3,
                        "smooth_ms": med["smooth"] * 1e3,
                        "pad_ms": med["pad"] * 1e3,
                        "smooth_ratio_vs_torch": ratio["smooth"],
                        "pad_ratio_vs_torch": ratio["pad"],
                        "torch_again_ratio": ratio["torch_again"],
                        "smooth_cpu_impl": tuned[pm].cpu_impl,
                        "rounds": len(ts["torch"]),
                        "calls_per_sample": calls,
                    }
                )
                bar.update(1)
    r = [x["smooth_ratio_vs_torch"] for x in rows]
    worst = max(rows, key=lambda x: x["smooth_ratio_vs_torch"])
    return {
        "rows": rows,
        "mean_ratio_vs_torch": statistics.mean(r),
        "max_ratio_vs_torch": worst["smooth_ratio_vs_torch"],
        "worst_case": {kk: worst[kk] for kk in ("model", "op", "m", "n", "k")},
        "mean_pad_ratio_vs_torch": statistics.mean(x["pad_ratio_vs_torch"] for x in rows),
        "noise_floor_max": max(x["torch_again_ratio"] for x in rows),
        "noise_floor_mean": statistics.mean(x["torch_again_ratio"] for x in rows),
    }


# --- GPU section: Triton meta-kernels against Triton baselines of the tutorial kind. ----------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="xyserve bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=output_file, help="write the results to this file")
    ap.add_argument("--only", choices=("attention", "gemm"), help="run one part")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), help="names or JSON paths")
    ap.add_argument("--cases", type=int, default=4, help="attention batches per workload")
    ap.add_argument("--budget", type=int, default=512, help="attention token budget per step")
    ap.add_argument("--heads", type=int, nargs=3, default=[12, 4, 64], metavar=("HQ", "HKV", "D"))
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) dense oracle")
    ap.add_argument("--gemm-budget", type=int, default=512, help="largest M")
    ap.add_argument(
        "--gemm-budget-7b", type=int, default=64, help="largest M for 7B-sized shapes (slow on CPU)"
    )
    ap.add_argument("--gemm-repeat", type=int, default=11, help="GEMM rounds per batch")
    ap.add_argument("--gemm-all-m", action="store_true", help="every M in 1..budget")
    ap.add_argument(
        "--gemm-models", nargs="+", default=["small", "7b"], help="small, 7b, or config.json paths"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU section")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU sections")
    ap.add_argument("--gpu-dtype", choices=("fp16", "bf16"), default="fp16")
    ap.add_argument(
        "--gpu-tune", action="store_true", help="tune each measured GEMM bucket on the GPU first"
    )
    ap.add_argument(
        "--gpu-attn-peers", nargs="+", help="attention peers to run (default: all available)"
    )
    ap.add_argument(
        "--gpu-gemm-table", help="tuned CUDA GEMM table (default: found next to model paths)"
    )
    ap.add_argument(
        "--gpu-attn-block",
        type=int,
        nargs=2,
        default=[64, 64],
        metavar=("BM", "BN"),
        help="per-stage Triton baseline's BLOCK_M (capped per stage) and BLOCK_N",
    )
    ap.add_argument("--gpu-warmup-ms", type=int, default=25, help="do_bench warm-up")
    ap.add_argument("--gpu-rep-ms", type=int, default=100, help="do_bench repetition time")
    args = ap.parse_args(argv)
    # counts below 1 were tracebacks (min or median of no rounds) or ran nothing they named:
    # --cases 0 printed no attention section under --only attention, --gemm-budget 0 timed M 0
    counts = ("cases", "budget", "block_size", "gemm_budget", "gemm_budget_7b", "gemm_repeat")
    for flag in (*counts, "repeat"):
        if (value := getattr(args, flag)) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.threads < 0:
        ap.error(f"--threads must be 0 (leave as is) or more, got {args.threads}")
    hq, hkv, d = args.heads
    if min(args.heads) < 1 or hq % hkv:
        ap.error(f"--heads {hq} {hkv} {d}: each at least 1, HQ a multiple of HKV")
    try:  # the files named: a usage error now, not a traceback after other sections ran
        if args.only != "gemm" and not args.gpu_only:
            for name in args.workloads:
                load_workload(name)
        _models(args.gemm_models)
    except (OSError, ValueError, KeyError) as e:
        ap.error(str(e))
    return args


def _models(names: list[str]) -> dict[str, dict]:
    """``--gemm-models``: each name's config by the name it is reported under (``small``,
    ``7b``, else the config's folder). A missing or unreadable file, or two configs reported
    under one name (one would silently replace the other), is a ValueError naming it."""
    out = {}
    for n in names:
        if n == "small":
            out["small"] = SMALL_MODEL
        elif n == "7b":
            out["7b"] = LLAMA_7B
        else:
            p = Path(n)
            p = p / "config.json" if p.is_dir() else p
            if not p.is_file():
                raise ValueError(f"--gemm-models {n}: no such config file (nor small, 7b)")
            try:
                cfg = json.loads(p.read_text())
                model_shapes(cfg)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"--gemm-models {n}: not a model config ({e!r})") from None
            name = p.parent.name  # as kernels_gpu's tables are keyed
            if name in out and out[name] != cfg:
                raise ValueError(f"--gemm-models: two configs would be reported as {name!r}")
            out[name] = cfg
    return out


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_report(result: dict) -> None:
    """Human-readable tables; the same numbers as the JSON."""
    print(f"device: {result['device']}")
    if "attention" in result:
        a = result["attention"]
        h = a["heads"]
        print(f"\nattention  Hq={h['q']} Hkv={h['kv']} D={h['head_dim']} budget={a['budget']}")
        print(
            f"{'workload':13s} {'#':>2s} {'P/D/V':>8s} {'tok':>5s} {'kv':>6s} {'meta ms':>8s} "
            f"{'sdpa ms':>8s} {'flash ms':>8s} {'ref ms':>8s} {'vs sdpa':>7s} {'vs flash':>8s} "
            f"{'err':>7s}"
        )
        for c in a["cases"]:
            pdv = f"{c['prefill']}/{c['decode']}/{c['verify']}"
            print(
                f"{c['workload']:13s} {c['case']:2d} {pdv:>8s} {c['tokens']:5d} {c['kv_tokens']:6d} "
                f"{c['meta_ms']:8.2f} {c['per_stage_ms']:8.2f} {_f(c['per_stage_flash_ms'], '8.2f')} "
                f"{_f(c['reference_ms'], '8.1f')} {c['speedup_vs_per_stage']:6.2f}x "
                f"{_f(c['speedup_vs_per_stage_flash'], '7.2f')}x "
                f"{_f(c['max_abs_err_vs_reference'], '7.1e')}"
            )
        for w, sp in a["mean_speedup_by_workload"].items():
            print(f"mean speedup vs per-stage [{w}]: {sp:.3f}x")
        print(
            f"attention.mean_speedup_vs_per_stage: {a['mean_speedup_vs_per_stage']:.3f}x "
            f"(range {a['min_speedup_vs_per_stage']:.2f}x .. {a['max_speedup_vs_per_stage']:.2f}x); "
            f"vs per-stage on the flash kernel: {_f(a['mean_speedup_vs_per_stage_flash'], '.3f')}x"
        )
    if "gemm" in result:
        g = result["gemm"]
        print("\ngemm (time / torch.matmul time; lower is better)")
        print(
            f"{'model':6s} {'op':8s} {'M':>5s} {'pad M':>5s} {'N':>6s} {'K':>6s} {'torch ms':>9s} "
            f"{'smooth':>7s} {'pad':>7s}"
        )
        for r in g["rows"]:
            print(
                f"{r['model']:6s} {r['op']:8s} {r['m']:5d} {r['padded_m']:5d} {r['n']:6d} {r['k']:6d} "
                f"{r['torch_ms']:9.3f} {r['smooth_ratio_vs_torch']:7.3f} {r['pad_ratio_vs_torch']:7.3f}"
            )
        wc = g["worst_case"]
        print(
            f"gemm.mean_ratio_vs_torch: {g['mean_ratio_vs_torch']:.3f} "
            f"(worst {g['max_ratio_vs_torch']:.3f} at {wc['model']} {wc['op']} M={wc['m']}); "
            f"pad-to-bucket mean {g['mean_pad_ratio_vs_torch']:.3f}"
        )
        print(
            f"noise floor (torch.matmul timed twice as two variants): "
            f"mean {g['noise_floor_mean']:.3f}, worst {g['noise_floor_max']:.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    models = _models(args.gemm_models)
    n_att = 0 if args.only == "gemm" or args.gpu_only else args.cases * len(args.workloads)
    n_gemm = (
        0
        if args.only == "attention" or args.gpu_only
        else sum(4 * len(gemm_ms(args, int(c["hidden_size"]) >= 2048)) for c in models.values())
    )
    result: dict = {
        "device": f"cpu x{torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    with (
        torch.inference_mode(),
        tqdm(total=n_att + n_gemm, desc="bench kernels", file=sys.stderr) as bar,
    ):
        if n_att:
            result["attention"] = bench_attention(args, bar)
        if n_gemm:
            result["gemm"] = bench_gemm(args, models, bar)
    skipped = "--no-gpu" if args.no_gpu else None
    if skipped is None and not torch.cuda.is_available():
        skipped = "no CUDA device"
    result["gpu"] = None
    from xyserve.bench.kernels_gpu import bench_gpu, print_gpu_report

    if skipped is None:
        with torch.inference_mode():
            result["gpu"] = bench_gpu(args, models)
    print_report(result)
    print_gpu_report(result["gpu"], skipped)
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0

"""``bench offline``'s report: the matmul peak measured beside the runs, each system's rates as
shares of that peak and of the roof (in the run's dtype), its speedup over HF, printed and as JSON."""

from __future__ import annotations

import json
import statistics
import time

import torch

from xyserve.bench.offline_workload import Workload, linear_flops, model_flops
from xyserve.output_files import write_text
from xyserve.plan.machine import cpu_signature


def matmul_peak_gflops(n: int = 1024, reps: int = 8, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def report(
    cfg: dict,
    work: Workload,
    peaks: list[float],
    times: dict[str, float],
    round_seconds: dict[str, list[float]],
    json_path: str | None,
    dtype: str = "float32",
    gemm_table: dict | None = None,
) -> None:
    """Print each system's best time as rates and ratios; write them to ``json_path`` if set.
    ``gemm_table`` describes the GEMM table xyserve ran on (``offline_systems.gemm_table``).

    "Model GFLOP/s" divides the workload's model FLOPs by wall time, so every system shares
    the numerator; the roof is the output tok/s that the linear-layer FLOPs alone allow at
    the best of ``peaks`` (the matmul peak, taken once a round). With several rounds, the
    table also shows each system's range of output tok/s over them, and the header the
    peaks' range: on a shared machine they tell how far one round is from the next.
    """
    peak = max(peaks)
    flops = model_flops(cfg, work)
    n_req, n_out = len(work.prompts), work.num_output_tokens
    ref = next((k for k in times if k.startswith("hf")), None)
    roof = n_out * peak * 1e9 / linear_flops(cfg, work)
    machine = cpu_signature()
    rows = {}
    print(
        f"\nmachine: {machine.describe()}; "
        f"{dtype} matmul peak {peak:.1f} GFLOP/s (measured now{_spread(peaks)})\n"
        f"workload {work.name}: {n_req} requests, {sum(map(len, work.prompts))} prompt tokens, "
        f"{n_out} output tokens; {dtype} roof {roof:.1f} output tok/s (linear-layer FLOPs at "
        f"the peak)"
    )
    if gemm_table is not None:
        print(f"xyserve GEMM table: {gemm_table['text']}")
    print(
        f"{'system':<20}{'req/s':>8}{'out tok/s':>11}{'GFLOP/s':>9}{'% peak':>8}{'% roof':>8}"
        f"{'vs HF':>8}{'rounds tok/s':>15}"
    )
    for name, t in times.items():
        gf = flops / t / 1e9
        row = {
            "seconds": t,
            "requests_per_s": n_req / t,
            "output_tokens_per_s": n_out / t,
            "model_gflops": gf,
            "fraction_of_peak": gf / peak,
            "fraction_of_roof": n_out / t / roof,
        }
        if ref:
            row["speedup_vs_hf"] = times[ref] / t
        rows[name] = row
        vs = f"{row['speedup_vs_hf']:.2f}x" if ref else "-"
        print(
            f"{name:<20}{row['requests_per_s']:>8.2f}{row['output_tokens_per_s']:>11.1f}"
            f"{gf:>9.1f}{100 * gf / peak:>7.1f}%{100 * row['fraction_of_roof']:>7.1f}%{vs:>8}"
            f"{_rate_range(n_out, round_seconds.get(name, [])):>15}"
        )
    llama = next((k for k in times if k.startswith("llama.cpp")), None)
    paired: dict[str, list[float]] = {}
    for other, label in (
        (llama, "xyserve-hybrid vs llama.cpp"),
        ("xyserve-baseline", "hybrid vs baseline"),
    ):
        if other in times:
            ratios = paired[f"xyserve-hybrid vs {other}"] = _per_round(round_seconds, other)
            print(f"{label}: {times[other] / times['xyserve-hybrid']:.2f}x" + _paired(ratios))
    if json_path:
        result = {
            "workload": work.name,
            "model_config": cfg,
            "dtype": dtype,
            "matmul_peak_gflops": peak,
            "matmul_peaks_gflops": peaks,  # one a round, in round order
            "roof_output_tokens_per_s": roof,
            "machine": machine.to_json(),
            "systems": rows,
            "round_seconds": round_seconds,  # every run, in round order; the best is reported
            "paired_round_ratios": paired,  # the other's time over hybrid's, round by round
            "torch_threads": torch.get_num_threads(),
            "gemm_table": gemm_table,
        }
        write_text(json_path, json.dumps(result, indent=1))


def _per_round(round_seconds: dict[str, list[float]], other: str) -> list[float]:
    """``other``'s time over xyserve-hybrid's in each round: the two ran minutes apart at most,
    so a round's ratio shares its machine's state, which the best of each does not."""
    mine = round_seconds.get("xyserve-hybrid", [])
    return [o / m for o, m in zip(round_seconds.get(other, []), mine)]


def _paired(ratios: list[float]) -> str:
    """ " (the best of each; round by round: median M, lo-hi over N rounds)" for several
    rounds' ratios, nothing for one."""
    if len(ratios) < 2:
        return ""
    return (
        f" (the best of each; round by round: median {statistics.median(ratios):.2f}x, "
        f"{min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds)"
    )


def _spread(values: list[float]) -> str:
    """ "; N rounds: lo-hi" for several values, nothing for one."""
    if len(values) < 2:
        return ""
    return f"; {len(values)} rounds: {min(values):.1f}-{max(values):.1f}"


def _rate_range(n: int, seconds: list[float]) -> str:
    """The range of ``n / s`` over rounds ("lo-hi"), "-" for fewer than two rounds."""
    if len(seconds) < 2:
        return "-"
    return f"{n / max(seconds):.1f}-{n / min(seconds):.1f}"

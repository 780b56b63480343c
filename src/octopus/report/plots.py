"""Matplotlib plots: utilization heat map, utilization over time, ablation bars, sweep lines."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def utilization_heatmap(sim, path: str) -> str:
    """Busy fraction of every PEA, laid out on the physical grid (clusters visible)."""
    a = sim.arch
    w, h = max(a.pea_x) + 1, max(a.pea_y) + 1
    grid = [[0.0] * w for _ in range(h)]
    for p in range(a.n_peas):
        grid[a.pea_y[p]][a.pea_x[p]] = sim.time.busy[p] / (sim.makespan or 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(im, ax=ax, label="utilization")
    ax.set_title(f"{sim.cw.wf.name} on {a.name}: {sim.sched.name}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def utilization_over_time(sim, path: str, bins: int = 100) -> str:
    T = sim.makespan or 1.0
    busy = [0.0] * bins
    w = T / bins
    for k, peas in enumerate(sim.inv.peas):
        if not peas:
            continue
        s, e = sim.inv.t_start[k], sim.inv.t_end[k]
        i = int(s / w)
        while s < e and i < bins:
            seg = min(e, (i + 1) * w) - s
            busy[i] += seg * len(peas)
            s += seg
            i += 1
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([(i + 0.5) * w / 1000 for i in range(bins)], [b / (w * sim.arch.n_peas) for b in busy])
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("utilization")
    ax.set_ylim(0, 1.05)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def ablation_bars(res: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    names = list(res["ablation"])
    cols = [c for c in next(iter(res["ablation"].values()))]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.6), 4))
    wdt = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ax.bar(
            [i + j * wdt for i in range(len(names))],
            [res["ablation"][n][c] for n in names],
            wdt,
            label=c,
        )
    ax.set_xticks([i + 0.4 - wdt / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("speedup over reactive (best threshold)")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.legend(fontsize=7)
    path = os.path.join(out_dir, "ablation.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def line_plot(
    series: dict, xs: list, xlabel: str, ylabel: str, path: str, errs: dict | None = None
) -> str:
    """One line per series (dashed for `central`), with error bars when `errs` is given."""
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[str, int] = {}
    for name, ys in series.items():
        g = name.replace(" diffusion", "").replace(" central", "")
        color = f"C{groups.setdefault(g, len(groups)) % 10}"
        ls = "--" if "central" in name else "-"
        lw = 2.5 if g == "suite mean" else 1.0
        yerr = errs.get(name) if errs else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", label=name, ls=ls, color=color, lw=lw, capsize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.axhline(1.0, color="k", lw=0.5)
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def latency_vs_load(sweeps: list[dict], path: str) -> str:
    """p50 (dashed) and p99 (solid) latency against offered load, one colour per scheduler;
    the SLO as a horizontal line, each scheduler's capacity at the SLO as a dot."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, sw in enumerate(sweeps):
        col = f"C{i}"
        x = [p["offered_vs_bound"] for p in sw["points"]]
        ax.plot(x, [p["latency_p99_us"] / 1000 for p in sw["points"]], "-o", color=col, ms=3)
        ax.plot(x, [p["latency_p50_us"] / 1000 for p in sw["points"]], "--", color=col, lw=1)
        ax.plot(
            [sw["capacity_vs_bound"]],
            [sw["slo_us"] / 1000],
            "D",
            color=col,
            label=f"{sw['scheduler']}: capacity {sw['capacity_vs_bound']:.2f} of bound",
        )
    if sweeps:
        ax.axhline(sweeps[0]["slo_us"] / 1000, color="k", lw=0.6, label="p99 SLO")
        ax.set_title(f"{sweeps[0]['workflow']} on {sweeps[0]['arch']}, open loop")
    ax.set_yscale("log")
    ax.set_xlabel("offered load / capacity bound (PEAs / mean work per instance)")
    ax.set_ylabel("latency (ms): p99 solid, p50 dashed")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def capacity_bars(res: dict, out_dir: str) -> str:
    """Open-loop capacity at the SLO as a fraction of the capacity bound, per workflow and
    scheduler (from `compare --capacity`)."""
    os.makedirs(out_dir, exist_ok=True)
    cap = res["capacity_vs_bound"]
    names = list(cap)
    cols = list(next(iter(cap.values())))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.6), 4))
    wdt = 0.8 / len(cols)
    for j, c in enumerate(cols):
        label = c.rsplit(":", 1)[-1]
        ax.bar(
            [i + j * wdt for i in range(len(names))], [cap[n][c] for n in names], wdt, label=label
        )
    ax.set_xticks([i + 0.4 - wdt / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel(
        f"capacity at p99 <= {res['capacity_slo_mult']:g} x mean critical path\n"
        "(fraction of the capacity bound)"
    )
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    path = os.path.join(out_dir, "capacity.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path

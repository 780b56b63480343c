"""Latency-vs-load curves of a ``bench serve`` sweep (matplotlib, written to a PNG)."""

from __future__ import annotations

from pathlib import Path

from xyserve.bench.serve_report import RunReport

PANELS = (
    ("TTFT mean (ms)", lambda r: r.ttft["mean"] * 1e3),
    ("TTFT p99 (ms)", lambda r: r.ttft["p99"] * 1e3),
    ("TBT mean (ms)", lambda r: r.tbt["mean"] * 1e3),
    ("TBT p99 (ms)", lambda r: r.tbt["p99"] * 1e3),
    ("achieved QPS", lambda r: r.achieved_qps),
    ("goodput (req/s in SLO)", lambda r: r.goodput),
)


def plot_sweep(reports: list[RunReport], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    labels = list(dict.fromkeys(r.label for r in reports))
    for ax, (name, get) in zip(axes.flat, PANELS):
        for label in labels:
            runs = sorted(
                (r for r in reports if r.label == label and r.offered_rate is not None),
                key=lambda r: r.offered_rate,
            )
            ax.plot([r.offered_rate for r in runs], [get(r) for r in runs], "o-", label=label)
        ax.set_xlabel("offered rate (req/s)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if "TTFT" in name or "TBT" in name:
            ax.set_yscale("log")
    axes.flat[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

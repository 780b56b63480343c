"""Latency-vs-load curves of a ``bench serve`` sweep (matplotlib, written to a PNG).

A rate run more than once (``--sweep 1,1,2,2``) shows each run as a faint point and the
runs' median on the system's curve, so repeats read as a spread at one rate rather than as a
zigzag. The last panel is each rate's SLO attainment with the runs' requests pooled, its 95%
Wilson interval as an error bar and the attainment bar as a dashed line: the verdicts that the
max rate under the SLO is read from.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from xyserve.bench.serve_report import RunReport, rate_verdicts

PANELS = (
    ("TTFT mean (ms)", lambda r: r.ttft["mean"] * 1e3),
    ("TTFT p99 (ms)", lambda r: r.ttft["p99"] * 1e3),
    ("TBT mean (ms)", lambda r: r.tbt["mean"] * 1e3),
    ("TBT p99 (ms)", lambda r: r.tbt["p99"] * 1e3),
    ("achieved QPS", lambda r: r.achieved_qps),
    ("output tok/s", lambda r: r.output_tok_s),
    ("goodput (req/s in SLO)", lambda r: r.goodput),
)


def plot_sweep(reports: list[RunReport], path: str | Path, title: str, bar: float = 0.9) -> Path:
    """The sweep's panels for every system; ``bar``: the SLO attainment a rate must reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7))
    labels = list(dict.fromkeys(r.label for r in reports))
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    for ax, (name, get) in zip(axes.flat, PANELS):
        for label in labels:
            by_rate: dict[float, list[float]] = {}
            for r in reports:
                if r.label != label or r.offered_rate is None:
                    continue
                y = get(r)
                if not math.isnan(y):  # NaN: a run with no completed request has no latency
                    by_rate.setdefault(r.offered_rate, []).append(y)
            rates = sorted(by_rate)
            c = colors[label]
            if any(len(v) > 1 for v in by_rate.values()):
                xs = [x for x in rates for _ in by_rate[x]]
                ax.plot(xs, [y for x in rates for y in by_rate[x]], "o", color=c, alpha=0.3)
            medians = [statistics.median(by_rate[x]) for x in rates]
            ax.plot(rates, medians, "o-", color=c, label=label)
        ax.set_xlabel("offered rate (req/s)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if "TTFT" in name or "TBT" in name:
            ax.set_yscale("log")
    ax = axes.flat[len(PANELS)]
    verdicts = sorted(rate_verdicts(reports, bar), key=lambda v: v.rate)
    for label in labels:
        vs = [v for v in verdicts if v.label == label]
        ys = [v.attainment for v in vs]
        err = [  # distances from the point to the interval's ends, never negative
            [max(0.0, y - v.interval[0]) for y, v in zip(ys, vs)],
            [max(0.0, v.interval[1] - y) for y, v in zip(ys, vs)],
        ]
        ax.errorbar([v.rate for v in vs], ys, yerr=err, fmt="o-", capsize=3, color=colors[label])
    ax.axhline(bar, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("offered rate (req/s)")
    ax.set_title("SLO attainment, runs pooled (95% interval)", fontsize=10)
    ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""Aggregates of one ``bench serve`` run: achieved QPS, percentiles, goodput under an SLO.

A request meets the SLO when its TTFT is at most ``ttft_s`` and its own TBT statistic
(``tbt_stat``: mean, p90 or max of its gaps between tokens) is at most ``tbt_s``. Goodput is
the number of such requests per second of the run. Failed requests count in ``num_failed``
(with their messages, grouped) and never in any latency.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from xyserve.bench.serve_client import RequestResult, measure

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    tbt_s: float
    tbt_stat: str = "p90"  # mean | p90 | max, over one request's gaps

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.tbt_s > 0):
            raise ValueError("SLO thresholds must be positive")
        if self.tbt_stat not in ("mean", "p90", "max"):
            raise ValueError(f"tbt_stat must be mean, p90 or max, got {self.tbt_stat!r}")

    def request_tbt(self, tbts: list[float]) -> float:
        if not tbts:
            return 0.0
        if self.tbt_stat == "mean":
            return sum(tbts) / len(tbts)
        if self.tbt_stat == "max":
            return max(tbts)
        return percentile(tbts, 90)


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: list[float]) -> dict[str, float]:
    out = {"mean": sum(xs) / len(xs) if xs else math.nan}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(xs, q)
    return out


@dataclass
class RunReport:
    label: str
    load: str  # e.g. "rate=2.0 burstiness=1.0" or "concurrency=4"
    offered_rate: float | None
    num_requests: int
    num_completed: int
    num_failed: int
    num_disconnected: int  # closed by the client on purpose; neither failed nor measured
    errors: dict[str, int]
    duration_s: float
    achieved_qps: float
    output_tok_s: float
    goodput: float
    slo_attainment: float  # fraction of all requests meeting the SLO
    ttft: dict[str, float]
    tbt: dict[str, float]
    tpot: dict[str, float]
    e2e: dict[str, float]
    slo: dict[str, Any]
    server: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(
    label: str, load: str, offered_rate: float | None, results: list[RequestResult], slo: Slo
) -> RunReport:
    ok = [r for r in results if r.ok]
    failed = [r for r in results if r.error is not None]
    errors = Counter(_error_kind(r.error) for r in failed)
    num_disc = sum(1 for r in results if r.disconnected and r.error is None)
    ttfts, tbts, tpots, e2es = [], [], [], []
    good = 0
    for r in ok:
        m = measure(r.start, r.chunks, r.end)
        ttfts.append(m.ttft)
        tbts.extend(m.tbts)
        if m.tpot is not None:
            tpots.append(m.tpot)
        e2es.append(m.e2e)
        if m.ttft <= slo.ttft_s and slo.request_tbt(m.tbts) <= slo.tbt_s:
            good += 1
    if results:
        t0 = min(r.start for r in results)
        t1 = max(r.end for r in results)
        duration = max(t1 - t0, 1e-9)
    else:
        duration = math.nan
    out_tokens = sum(r.num_tokens for r in ok)
    return RunReport(
        label=label,
        load=load,
        offered_rate=offered_rate,
        num_requests=len(results),
        num_completed=len(ok),
        num_failed=len(failed),
        num_disconnected=num_disc,
        errors=dict(errors),
        duration_s=duration,
        achieved_qps=len(ok) / duration,
        output_tok_s=out_tokens / duration,
        goodput=good / duration,
        slo_attainment=good / (len(results) - num_disc) if len(results) > num_disc else math.nan,
        ttft=summary(ttfts),
        tbt=summary(tbts),
        tpot=summary(tpots),
        e2e=summary(e2es),
        slo=asdict(slo),
    )


def _error_kind(err: str | None) -> str:
    """The message, cut to 120 characters so that the table stays short."""
    text = err or "unknown"
    return text if len(text) <= 120 else text[:117] + "..."


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def table(reports: list[RunReport]) -> str:
    """A short fixed-width table: one row per run."""
    head = (
        f"{'system':<12} {'load':<22} {'ok/fail':>8} {'QPS':>6} {'tok/s':>7} {'good/s':>6} "
        f"{'TTFT ms mean/p99':>17} {'TBT ms mean/p99':>16} {'TPOT ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(
            f"{r.label[:12]:<12} {r.load[:22]:<22} {f'{r.num_completed}/{r.num_failed}':>8} "
            f"{r.achieved_qps:>6.2f} {r.output_tok_s:>7.1f} {r.goodput:>6.2f} "
            f"{_ms(r.ttft['mean']) + '/' + _ms(r.ttft['p99']):>17} "
            f"{_ms(r.tbt['mean']) + '/' + _ms(r.tbt['p99']):>16} {_ms(r.tpot['mean']):>8}"
        )
    for r in reports:
        for msg, n in r.errors.items():
            lines.append(f"  {r.label} {r.load}: {n} failed: {msg}")
    return "\n".join(lines)


def markdown(reports: list[RunReport]) -> str:
    """The runs as a Markdown table (for docs/perf.md); latencies in ms."""
    lines = [
        "| system | load | ok/fail | QPS | tok/s | goodput | TTFT mean | TTFT p99 "
        "| TBT mean | TBT p99 | TPOT mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.label} | {r.load} | {r.num_completed}/{r.num_failed} | {r.achieved_qps:.2f} "
            f"| {r.output_tok_s:.1f} | {r.goodput:.2f} | {_ms(r.ttft['mean'])} "
            f"| {_ms(r.ttft['p99'])} | {_ms(r.tbt['mean'])} | {_ms(r.tbt['p99'])} "
            f"| {_ms(r.tpot['mean'])} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class RateVerdict:
    """One system at one offered rate, its runs' requests pooled: how many met the SLO of how
    many counted (disconnected ones are not), failures, and the attainment's 95% Wilson
    interval. ``clear``: the interval lies wholly on the side of the bar that the verdict is
    on. The interval only counts requests: the ones of a run share that run's machine state,
    so on a noisy machine the true uncertainty is wider, never narrower."""

    label: str
    rate: float
    good: int
    counted: int
    failed: int
    bar: float

    @property
    def attainment(self) -> float:
        return self.good / self.counted if self.counted else math.nan

    @property
    def meets(self) -> bool:
        # a count exactly at the bar meets it (55 of 100 at 0.55, which is 55.000000000000007)
        need = self.bar * self.counted - 1e-9 * max(1, self.counted)
        return self.failed == 0 and self.counted > 0 and self.good >= need

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.good, self.counted)

    @property
    def clear(self) -> bool:
        if self.failed:
            return True  # a failed request fails the rate, whatever the others did
        lo, hi = self.interval
        return lo >= self.bar if self.meets else hi < self.bar

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "good": self.good,
            "counted": self.counted,
            "failed": self.failed,
            "attainment": self.attainment,
            "interval95": list(self.interval),
            "meets": self.meets,
            "clear": self.clear,
        }


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (``z`` = 1.96: 95%); (0, 1) for
    ``n = 0``. Unlike the normal approximation it stays inside [0, 1] and is not empty at
    ``k = n``, the usual case for a rate well under saturation."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # at k = 0 or k = n the bound is 0 or 1 exactly, which rounding would miss by an ulp
    return (0.0 if k == 0 else max(0.0, c - h)), (1.0 if k == n else min(1.0, c + h))


def rate_verdicts(reports: list[RunReport], bar: float) -> list[RateVerdict]:
    """Per system and offered rate, in order of first appearance: the runs at that rate (a
    rate given several times in ``--sweep``: repeats, for a noisy machine) as one sample,
    their requests pooled into one attainment, and a failed request in any of them fails the
    rate; one lucky run does not carry it. Runs without a finite rate (concurrency, traces)
    are left out."""
    pooled: dict[tuple[str, float], list[int]] = {}  # requests meeting the SLO, counted, failed
    for r in reports:
        if r.offered_rate is None or not math.isfinite(r.offered_rate):
            continue
        p = pooled.setdefault((r.label, r.offered_rate), [0, 0, 0])
        counted = r.num_requests - r.num_disconnected
        if counted > 0 and not math.isnan(r.slo_attainment):
            p[0] += round(r.slo_attainment * counted)
            p[1] += counted
        p[2] += r.num_failed
    return [RateVerdict(lb, rate, g, c, f, bar) for (lb, rate), (g, c, f) in pooled.items()]


def max_rate_under_slo(reports: list[RunReport], target: float) -> dict[str, float]:
    """Per system: the highest offered rate up to which every rate meets the SLO (0 when the
    lowest does not), each rate judged on its runs pooled (:func:`rate_verdicts`)."""
    return highest_met(rate_verdicts(reports, target), [r.label for r in reports])


def _ascending(verdicts: list[RateVerdict], label: str) -> list[RateVerdict]:
    return sorted((v for v in verdicts if v.label == label), key=lambda v: v.rate)


def highest_met(verdicts: list[RateVerdict], labels: list[str]) -> dict[str, float]:
    """Per label: the highest rate below its lowest failing rate (0 when the lowest rate
    fails). A rate that meets the SLO above one that fails it is not a rate the system
    sustains (its load passed by luck, or the sweep is noisy): counting it, as the highest
    meeting rate did, reported a capacity the system had just failed to reach at a lower
    load. Such a rate still shows in the verdict lines."""
    best = dict.fromkeys(labels, 0.0)
    for label in best:
        for v in _ascending(verdicts, label):
            if not v.meets:
                break
            best[label] = v.rate
    return best


def settled(verdicts: list[RateVerdict], label: str, rate: float) -> bool:
    """Whether ``label``'s max rate ``rate`` rests only on clear verdicts: those of the rates
    up to it (each meets the SLO) and that of the first rate above it (which fails it); never
    for a system with no finite rate judged (``--sweep inf`` alone)."""
    vs = _ascending(verdicts, label)
    upto = [v for v in vs if v.rate <= rate]
    above = [v for v in vs if v.rate > rate][:1]
    rests_on = upto + above
    return bool(rests_on) and all(v.clear for v in rests_on)  # nothing judged: nothing to rest on


def verdict_lines(verdicts: list[RateVerdict]) -> list[str]:
    """One line per system: each rate's pooled attainment, its 95% interval and the verdict,
    with ``?`` where the interval reaches across the bar (the verdict rests on too few
    requests to tell)."""
    by_label: dict[str, list[RateVerdict]] = {}
    for v in verdicts:
        by_label.setdefault(v.label, []).append(v)
    lines = []
    for label, vs in by_label.items():
        cells = []
        for v in sorted(vs, key=lambda v: v.rate):
            lo, hi = v.interval
            word = ("meets" if v.meets else "fails") + ("" if v.clear else "?")
            fail = f", {v.failed} failed" if v.failed else ""
            cells.append(
                f"{v.rate:g}: {v.attainment:.2f} [{lo:.2f}-{hi:.2f}] of {v.counted}{fail} {word}"
            )
        lines.append(f"  {label:<12} " + "; ".join(cells))
    return lines


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float made valid JSON: NaN (a latency of a run with no
    completed request, a TPOT when every output is one token) becomes null and an infinite
    rate the string ``"inf"``, as vLLM's result files write it. ``json.dumps`` would otherwise
    write bare ``NaN`` and ``Infinity``, which strict JSON readers (``jq``, JavaScript,
    pandas' ``read_json`` in strict mode) refuse."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def ratios(best: dict[str, float], reference: str) -> dict[str, float | None]:
    ref = best.get(reference, 0.0)
    return {k: (v / ref if ref > 0 else None) for k, v in best.items()}

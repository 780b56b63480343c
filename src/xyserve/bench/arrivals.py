"""Request arrival processes for ``bench serve``: Poisson, gamma bursts, and a dynamic-QPS trace.

Gamma inter-arrival times with shape ``burstiness`` and mean ``1 / rate`` (vLLM's
``--burstiness``): shape 1 is Poisson, below 1 burstier, above 1 more regular. A trace file
(``xyserve.qps-trace/1``) lists segments of constant rate; arrivals follow each segment's rate
for its duration, and the trace repeats until every request has a time. All seeded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from xyserve.bench.data_file import check_versioned, read_json

TRACE_SCHEMA = "xyserve.qps-trace/1"


class TraceError(ValueError):
    """A QPS trace file that does not validate."""


@dataclass(frozen=True)
class Segment:
    duration_s: float
    rate: float  # requests per second; 0 = silence for the segment


@dataclass(frozen=True)
class QpsTrace:
    name: str
    segments: tuple[Segment, ...]
    burstiness: float = 1.0

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    @property
    def mean_rate(self) -> float:
        return sum(s.rate * s.duration_s for s in self.segments) / self.duration_s


def _rng(seed: int) -> random.Random:
    """The arrivals' generator for ``seed``: a stream of its own, so that the send times are
    independent of the requests drawn with the same seed (``serve_workload.sample`` uses
    ``random.Random(seed)``: sharing it, the first gap and the first request's length came
    from the same numbers, and were correlated)."""
    return random.Random(f"xyserve.arrivals/{seed}")


def _gap(rng: random.Random, rate: float, burstiness: float) -> float:
    return rng.gammavariate(burstiness, 1.0 / (rate * burstiness))


def gamma_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (s from the start) of ``n`` requests; ``rate = inf`` sends all at once."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if not rate > 0:
        raise ValueError(f"request rate must be positive (or inf), got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be a positive number, got {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    rng = _rng(seed)
    t, times = 0.0, []
    for _ in range(n):
        t += _gap(rng, rate, burstiness)
        times.append(t)
    return times


def trace_arrivals(n: int, trace: QpsTrace, seed: int = 0, scale: float = 1.0) -> list[float]:
    """Send times following the trace's rates (times ``scale``), repeating it as needed."""
    if not (scale > 0 and math.isfinite(scale)):  # NaN would draw nothing, for ever
        raise ValueError(f"the trace scale must be a finite number > 0, got {scale}")
    if not any(s.rate > 0 for s in trace.segments):
        raise TraceError(f"{trace.name}: every segment has rate 0")
    rng = _rng(seed)
    times: list[float] = []
    start = 0.0
    while len(times) < n:
        for seg in trace.segments:
            end = start + seg.duration_s
            rate = seg.rate * scale
            t = start
            while rate > 0 and len(times) < n:
                t += _gap(rng, rate, trace.burstiness)
                if t >= end:
                    break
                times.append(t)
            start = end
            if len(times) >= n:
                break
    return times


def parse_trace(data: object, where: str = "trace") -> QpsTrace:
    check_versioned(data, where, TRACE_SCHEMA, TraceError)
    # a misspelled key (burstyness) was dropped without a word, the trace run as Poisson
    unknown = sorted(set(data) - {"schema", "name", "description", "burstiness", "segments"})
    if unknown:
        raise TraceError(f"{where}: unknown fields {unknown}")
    raw = data.get("segments")
    if not isinstance(raw, list) or not raw:
        raise TraceError(f"{where}: segments must be a non-empty list")
    segs = []
    for i, s in enumerate(raw):
        d = s.get("duration_s") if isinstance(s, dict) else None
        r = s.get("rate") if isinstance(s, dict) else None
        extra = sorted(set(s) - {"duration_s", "rate"}) if isinstance(s, dict) else []
        if extra:
            raise TraceError(f"{where}: segments[{i}]: unknown fields {extra}")
        nums = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (d, r))
        if not nums or not (0 < d < math.inf) or not (0 <= r < math.inf):
            raise TraceError(
                f"{where}: segments[{i}] needs duration_s > 0 and a finite rate >= 0, got {s!r}"
            )
        segs.append(Segment(float(d), float(r)))
    b = data.get("burstiness", 1.0)
    if not isinstance(b, int | float) or isinstance(b, bool) or not 0 < b < math.inf:
        raise TraceError(f"{where}: burstiness must be a positive number")
    trace = QpsTrace(str(data.get("name", where)), tuple(segs), float(b))
    if not any(s.rate > 0 for s in trace.segments):
        raise TraceError(f"{where}: every segment has rate 0")
    return trace


def load_trace(path: str | Path) -> QpsTrace:
    from xyserve.bench.serve_workload import packaged_path

    p = Path(path)
    if not p.is_file():
        q = packaged_path(str(path) if str(path).endswith(".json") else f"{path}.json")
        if not q.is_file():
            raise TraceError(f"QPS trace {str(path)!r}: no such file, nor a packaged trace")
        p = q
    return parse_trace(read_json(p, TraceError), str(p))

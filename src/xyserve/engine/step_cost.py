"""An online model of a step's duration from its token count (the SLO-aware step budget, and
speculative decoding's cost of a verify token against a proposer pass).

``t(n) = a + b * n``, fitted by least squares. Pure Python; the caller feeds it step times.

- :class:`StepCostModel`: over the recent steps with exponential forgetting, so it follows the
  machine (other processes, thermal state) as it changes; the scheduler feeds it the time
  between handing out a step and receiving its update.
- :class:`MedianStepCost`: through the median of each size's recent steps. On a shared
  machine one step stalled by another process moves a least squares fit over raw
  times more than hundreds of ordinary steps do; a median ignores such stalls while they
  are rare. (Not the minimum: the fewer steps a size has, the higher its minimum lies, and
  the sizes a controller tries least would look dearest.)
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field


def least_squares(
    s: float, sx: float, sy: float, sxx: float, sxy: float
) -> tuple[float, float] | None:
    """(a, b) of ``y = a + b * x`` from the weighted sums, or None if every x is (nearly) the
    same (no slope to fit)."""
    var = s * sxx - sx * sx
    if var <= 1e-9 * max(1.0, s * sxx):
        return None
    b = (s * sxy - sx * sy) / var
    return (sy - b * sx) / s, b


class _LineCost:
    """What both models answer, from their ``line()``."""

    def line(self) -> tuple[float, float] | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self) -> tuple[float, float] | None:
        """(a, b) in seconds and seconds per token, or None until the data can tell them apart
        (no line yet, or a slope that is not positive)."""
        ab = self.line()
        if ab is None or ab[1] <= 0:
            return None
        return max(ab[0], 0.0), ab[1]

    def max_tokens(self, target_s: float) -> int | None:
        """The most tokens a step can carry and still end within ``target_s`` (None: unknown)."""
        ab = self.fit()
        if ab is None:
            return None
        a, b = ab
        return max(0, int((target_s - a) / b))


@dataclass
class StepCostModel(_LineCost):
    decay: float = 0.95  # weight kept by past steps at each new one (1.0: no forgetting)
    min_steps: int = 4  # no prediction before this many observations
    s: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    n: int = 0

    def observe(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self.s = self.s * d + 1
        self.sx = self.sx * d + tokens
        self.sy = self.sy * d + seconds
        self.sxx = self.sxx * d + tokens * tokens
        self.sxy = self.sxy * d + tokens * seconds
        self.n += 1

    def line(self) -> tuple[float, float] | None:
        """The least-squares (a, b), whatever their signs, or None before ``min_steps`` steps
        or while every step had (nearly) the same size (no slope to fit)."""
        if self.n < self.min_steps:
            return None
        return least_squares(self.s, self.sx, self.sy, self.sxx, self.sxy)


@dataclass
class MedianStepCost(_LineCost):
    """The line through each step size's median time over its last ``window`` steps, every
    size seen weighing the same. Only the last ``horizon`` observations count: load changes
    over time, and a size measured long ago (before the machine got busier, or quieter) must
    not be set against one measured now. A size not seen within the horizon drops out, so a
    caller whose choices stopped producing some size gets no line (its prior) and tries that
    size again, instead of trusting a stale comparison forever."""

    window: int = 16
    horizon: int = 128
    min_steps: int = 4  # no prediction before this many observations
    # The line is refitted once this many observations have come since the last fit (1: after
    # every one). A size's median over its last ``window`` steps moves little from one step to
    # the next, and a speculation controller asks every step, where refitting is a visible
    # share of its work (docs/perf.md, "The controller's cost when it declines").
    refit_every: int = 1
    # A size is a point of the line once it has this many steps within the horizon: a size
    # seen once or twice is its own median, and one slow step of it can tilt the line (a
    # speculation controller then reads every proposal as too dear, and stops making the
    # sizes that would correct it).
    min_size_steps: int = 1
    times: dict[int, deque] = field(default_factory=dict)
    n: int = 0
    # the line as of observation ``n`` (a controller asks several times between two steps),
    # kept for ``refit_every`` observations; while there is none, refitted at each new
    # observation of a size that was not a point of the last fit (one of a point's sizes
    # cannot make a line where there was none: a caller whose steps are all of one size asks
    # every step, and would refit every step for nothing)
    _cached: tuple[int, tuple[float, float] | None] | None = field(default=None, repr=False)
    _points: frozenset = field(default=frozenset(), repr=False)  # the sizes of the last fit
    _new_size: bool = field(default=False, repr=False)  # a size not in it observed since
    # each size's oldest step used, median and number of steps used; a size's median is taken
    # again only when it got a new step or that oldest step left the horizon
    _medians: dict[int, tuple[int, float, int]] = field(default_factory=dict, repr=False)
    # the smallest and largest step size behind the last fit (None: no point)
    span: tuple[int, int] | None = field(default=None, repr=False)

    def observe(self, tokens: int, seconds: float) -> None:
        q = self.times.get(tokens)
        if q is None:
            q = self.times[tokens] = deque(maxlen=self.window)
        q.append((self.n, seconds))
        self._medians.pop(tokens, None)
        self._new_size = self._new_size or tokens not in self._points
        self.n += 1

    def line(self) -> tuple[float, float] | None:
        """(a, b), whatever their signs, or None before ``min_steps`` steps or while fewer
        than two sizes were seen within the horizon."""
        if (
            self._cached is None
            or self.n - self._cached[0] >= self.refit_every
            or (self._cached[1] is None and self._cached[0] != self.n and self._new_size)
        ):
            self._cached = (self.n, self._line())
            self._new_size = False
        return self._cached[1]

    def _line(self) -> tuple[float, float] | None:
        if self.n < self.min_steps:
            return None
        since = self.n - self.horizon
        pts = []
        for x, q in list(self.times.items()):
            known = self._medians.get(x)
            if known is None or known[0] < since:  # a new step, or one left the horizon
                recent = [(i, t) for i, t in q if i >= since]
                if not recent:  # every step of this size left the horizon: it drops out
                    self._medians.pop(x, None)
                    del self.times[x]
                    continue
                med = statistics.median(t for _, t in recent)
                known = self._medians[x] = (recent[0][0], med, len(recent))
            if known[2] >= self.min_size_steps:
                pts.append((x, known[1]))
        self._points = frozenset(x for x, _ in pts)
        self.span = (min(self._points), max(self._points)) if pts else None
        return least_squares(
            len(pts),
            sum(x for x, _ in pts),
            sum(y for _, y in pts),
            sum(x * x for x, _ in pts),
            sum(x * y for x, y in pts),
        )

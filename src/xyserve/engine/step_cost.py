"""An online model of a step's duration from its token count (the SLO-aware step budget, and
speculative decoding's cost of a verify token against a proposer pass).

``t(n) = a + b * n``, fitted by least squares over the recent steps with exponential
forgetting, so it follows the machine (other processes, thermal state) as it changes. Pure
Python; the scheduler feeds it the time between handing out a step and receiving its update.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepCostModel:
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
        var = self.s * self.sxx - self.sx * self.sx
        if var <= 1e-9 * max(1.0, self.s * self.sxx):
            return None
        b = (self.s * self.sxy - self.sx * self.sy) / var
        return (self.sy - b * self.sx) / self.s, b

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

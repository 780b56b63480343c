"""Distributions of execution work and decision counts.

Each distribution samples from a `random.Random` (fast for scalars, stable across Python
versions) and can be *scaled* toward its mean: that is how one workflow file yields its low,
medium and high dynamicity variants without changing the mean load.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from octopus.checks import shown

KINDS = ("fixed", "uniform", "normal", "lognormal", "exponential", "empirical", "mixture")


class DistError(ValueError):
    """A distribution spec is malformed; the message names the offending field."""


@dataclass(frozen=True)
class Dist:
    """A non-negative scalar distribution. `spread` in [0, 1] shrinks it toward its mean."""

    kind: str
    params: dict = field(default_factory=dict)
    parts: tuple = ()  # (weight, Dist) pairs for mixtures
    spread: float = 1.0

    def mean(self) -> float:
        p = self.params
        if self.kind == "fixed":
            return float(p["value"])
        if self.kind == "uniform":
            return (p["low"] + p["high"]) / 2.0
        if self.kind == "normal":
            return float(p["mean"])
        if self.kind in ("lognormal", "exponential"):
            return float(p["mean"])
        if self.kind == "empirical":
            vals, w = p["values"], p.get("weights") or [1.0] * len(p["values"])
            return sum(v * x for v, x in zip(vals, w)) / sum(w)
        tot = sum(w for w, _ in self.parts)
        return sum(w * d.mean() for w, d in self.parts) / tot

    def scaled(self, spread: float) -> Dist:
        """Same mean, dispersion scaled by `spread` (1 = as written, 0 = deterministic)."""
        parts = tuple((w, d.scaled(spread)) for w, d in self.parts)
        return Dist(self.kind, self.params, parts, self.spread * spread)

    def sampler(self):
        """Return a fast closure rng -> float (>= 0)."""
        p, s = self.params, self.spread
        if self.kind == "fixed" or s == 0.0 and self.kind != "mixture":
            m = self.mean()
            return lambda rng: m
        if self.kind == "uniform":
            m = self.mean()
            lo, hi = m + s * (p["low"] - m), m + s * (p["high"] - m)
            return lambda rng: rng.uniform(lo, hi)
        if self.kind == "normal":
            m, sd = float(p["mean"]), float(p["std"]) * s
            return lambda rng: max(0.0, rng.gauss(m, sd))
        if self.kind == "lognormal":
            m, cv = float(p["mean"]), float(p["cv"]) * s
            sig2 = math.log(1.0 + cv * cv)
            mu, sig = math.log(m) - sig2 / 2.0, math.sqrt(sig2)
            return lambda rng: rng.lognormvariate(mu, sig)
        if self.kind == "exponential":  # below spread 1: pulled toward the mean
            m = float(p["mean"])
            if s == 1.0:
                return lambda rng: rng.expovariate(1.0 / m)
            return lambda rng: m + s * (rng.expovariate(1.0 / m) - m)
        if self.kind == "empirical":
            m = self.mean()
            vals = [m + s * (v - m) for v in p["values"]]
            w = p.get("weights") or [1.0] * len(vals)
            cum = [sum(w[: i + 1]) for i in range(len(w))]
            return lambda rng: rng.choices(vals, cum_weights=cum)[0]
        # mixture: shrink component means toward the overall mean too
        m = self.mean()
        subs = []
        for _, d in self.parts:
            f = d.sampler()
            shift = (1.0 - s) * (m - d.mean())
            subs.append(lambda rng, f=f, shift=shift: max(0.0, f(rng) + shift))
        cum, acc = [], 0.0
        for w, _ in self.parts:
            acc += w
            cum.append(acc)
        idx = list(range(len(subs)))
        return lambda rng: subs[rng.choices(idx, cum_weights=cum)[0]](rng)

    def cv(self, n: int = 2000, seed: int = 7) -> float:
        """Coefficient of variation, estimated by sampling (cheap, used for classification)."""
        f, rng = self.sampler(), random.Random(seed)
        xs = [f(rng) for _ in range(n)]
        mu = sum(xs) / n
        if mu <= 0:
            return 0.0
        # relative deviations: squaring x - mu itself overflowed (OverflowError) for a
        # work of 1e200 Mop, which is finite and so passes validation
        var = sum(((x - mu) / mu) ** 2 for x in xs) / n
        return math.sqrt(var)


_REQUIRED = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "normal": ("mean", "std"),
    "lognormal": ("mean", "cv"),
    "exponential": ("mean",),
    "empirical": ("values",),
    "mixture": ("components",),
}
_OPTIONAL = {"empirical": ("weights",)}
_LISTS = ("values", "weights")  # the only list parameters; every other one is one number


def parse_dist(spec, where: str) -> Dist:
    """Parse a number (fixed) or a mapping {dist: kind, ...}. `where` names node and field."""
    if isinstance(spec, bool):
        raise DistError(f"{where}: expected a number or a distribution, got {spec!r}")
    if isinstance(spec, (int, float)):
        spec = {"dist": "fixed", "value": spec}
    if not isinstance(spec, dict):
        raise DistError(f"{where}: expected a number or a distribution mapping, got {shown(spec)}")
    kind = spec.get("dist")
    if kind not in KINDS:
        raise DistError(f"{where}.dist: unknown distribution {kind!r} (one of {', '.join(KINDS)})")
    for key in _REQUIRED[kind]:
        if key not in spec:
            raise DistError(f"{where}.{key}: missing for {kind} distribution")
    known = ("dist", *_REQUIRED[kind], *_OPTIONAL.get(kind, ()))
    for key in spec:  # a typo (`weight` for `weights`) was ignored: uniform weights
        if key not in known:
            raise DistError(
                f"{where}.{key}: unknown for the {kind} distribution (known: {', '.join(known)})"
            )
    params = {k: v for k, v in spec.items() if k not in ("dist", "components")}
    for k, v in params.items():
        if isinstance(v, list) != (k in _LISTS):  # else a TypeError when sampled
            shape = "a list of numbers" if k in _LISTS else "one number"
            raise DistError(f"{where}.{k}: expected {shape}, got {shown(v)}")
        vals = v if isinstance(v, list) else [v]
        for x in vals:
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                raise DistError(f"{where}.{k}: expected numbers, got {shown(x)}")
            if not math.isfinite(x):
                raise DistError(f"{where}.{k}: expected a finite number, got {x}")
            if x < 0:
                raise DistError(f"{where}.{k}: must be non-negative, got {x}")
    parts: tuple = ()
    if kind == "uniform" and params["low"] > params["high"]:
        raise DistError(f"{where}.low: greater than high")
    if kind in ("lognormal", "exponential") and params["mean"] <= 0:
        raise DistError(f"{where}.mean: {kind} mean must be positive")
    if kind == "empirical":
        if not params["values"]:
            raise DistError(f"{where}.values: empty")
        w = params.get("weights")
        if w is not None and (len(w) != len(params["values"]) or sum(w) <= 0):
            raise DistError(f"{where}.weights: must match values and have a positive sum")
    if kind == "mixture":
        comps = spec["components"]
        if not isinstance(comps, list) or not comps:
            raise DistError(f"{where}.components: expected a non-empty list")
        out = []
        for i, c in enumerate(comps):
            if not isinstance(c, dict) or "weight" not in c:
                raise DistError(f"{where}.components[{i}].weight: missing")
            w = c["weight"]
            if (
                isinstance(w, bool)
                or not isinstance(w, (int, float))
                or not math.isfinite(w)
                or w < 0
            ):
                raise DistError(
                    f"{where}.components[{i}].weight: expected a finite non-negative number, "
                    f"got {w!r}"
                )
            sub = {k: v for k, v in c.items() if k != "weight"}
            out.append((float(w), parse_dist(sub, f"{where}.components[{i}]")))
        if sum(w for w, _ in out) <= 0:
            raise DistError(f"{where}.components: the weights must have a positive sum")
        parts = tuple(out)
    return Dist(kind, params, parts)

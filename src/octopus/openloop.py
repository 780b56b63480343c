"""Open-loop load: instances arrive on their own clock, whatever the fabric is doing.

A closed loop measures makespan, where the window of instances in flight caps what any
scheduler can win. Serving systems are judged open loop: latency against offered load, and
the largest arrival rate whose p99 latency meets a service-level objective (SLO).

- Arrivals: `poisson` (exponential gaps) or `bursty` (bursts of a geometric number of
  instances, mean `burst`, arriving together; bursts are Poisson, so the mean rate is kept).
- The capacity bound: no scheduler sustains more than the PEA capacity over the mean work
  per instance, `n_peas / (PEA-us of work per instance)` (profiled).
- Latency statistics skip the first `warmup` fraction of instances (the empty-fabric start).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from octopus.arch.config import Arch
from octopus.checks import check_seed, positive_finite, refuse_repeats
from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import MAX_INSTANCES
from octopus.report.metrics import instance_critical_paths, percentile
from octopus.sched import make_scheduler
from octopus.sim import Simulator

PROCESSES = ("poisson", "bursty")
# Bisection steps of the capacity search: each halves the interval, so past 64 the midpoint
# equals an end in double precision and the steps only repeat runs (1e9 never ended).
MAX_REFINE = 64


def arrival_times(
    rate_per_us: float, n: int, seed: int, process: str = "poisson", burst: float = 8.0
) -> list[float]:
    """n arrival times at mean rate `rate_per_us` (instances per microsecond)."""
    check_seed(seed, "load: seed")
    if not positive_finite(rate_per_us):
        raise ValueError(f"load: rate must be positive and finite, got {rate_per_us}")
    if process not in PROCESSES:
        raise ValueError(f"load: unknown arrival process {process!r} (one of {PROCESSES})")
    rng, t, out = random.Random(seed ^ 0x0A11), 0.0, []
    if process == "poisson":
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(rate_per_us)
        return out
    if not burst >= 1:  # NaN too
        raise ValueError(f"load: burst must be >= 1, got {burst}")
    p = 1.0 / burst  # geometric burst size on {1, 2, ...} with mean `burst`
    while len(out) < n:
        # drawn one trial at a time up to what is left to fill: a burst that would reach
        # past n is cut at n anyway (and is the last one), so the times are those of the
        # uncapped draw, while a burst of 1e18 no longer loops 1e18 times
        size, left = 1, n - len(out)
        while size < left and rng.random() > p:
            size += 1
        out.extend([t] * size)
        t += rng.expovariate(rate_per_us / burst)
    return out


def work_per_instance(profile: dict, arch: Arch) -> float:
    """Mean PEA-us of compute per instance (profiled)."""
    return sum(profile["work"]) / arch.throughput_tops


def capacity_bound_per_us(profile: dict, arch: Arch) -> float:
    """The open-loop bound: total PEA capacity over the mean work per instance; infinite
    for a workflow with no work (it raised ZeroDivisionError, a traceback)."""
    work = work_per_instance(profile, arch)
    return arch.n_peas / work if work > 0 else math.inf


def batch_means_se(xs: list[float], batches: int = 20) -> float:
    """Standard error of the mean of a correlated series: the spread of the means of
    `batches` consecutive batches (successive latencies in a queue are not independent)."""
    m = len(xs) // batches
    if m < 2:
        return float("nan")
    means = [sum(xs[i * m : (i + 1) * m]) / m for i in range(batches)]
    mu = sum(means) / batches
    var = sum((x - mu) ** 2 for x in means) / (batches - 1)
    return math.sqrt(var / batches)


@dataclass
class LoadPoint:
    rate_per_ms: float
    offered_vs_bound: float  # rate / capacity bound
    latency_mean_us: float
    latency_se_us: float  # standard error of the mean, by batch means (queueing correlates)
    latency_p50_us: float
    latency_p99_us: float
    throughput_per_ms: float  # completed instances per ms of the run
    utilization: float
    critical_path_mean_us: float  # of the measured instances (for SLO multiples)
    critical_path_p99_us: float  # the p99 latency of an unloaded, unlimited machine


def run_at_rate(
    cw: CompiledWorkflow,
    arch: Arch,
    scheduler: str,
    rate_per_ms: float,
    instances: int = 300,
    seed: int = 0,
    process: str = "poisson",
    burst: float = 8.0,
    warmup: float = 0.1,
    profile: dict | None = None,
    **kw,
) -> LoadPoint:
    """One open-loop run at `rate_per_ms` instances per millisecond."""
    if not 1 <= instances <= MAX_INSTANCES:
        raise ValueError(
            f"load: instances must be in [1, {MAX_INSTANCES}] (MAX_INSTANCES), got {instances}"
        )
    profile = profile or cw.profile()
    times = arrival_times(rate_per_ms / 1000.0, instances, seed, process, burst)
    sched = make_scheduler(scheduler, **kw)
    sim = Simulator(cw, arch, sched, Arrivals(instances, times, instances), seed, profile=profile)
    sim.run()
    fin, arr = sim.instances.finish, sim.instances.arrive
    skip = min(int(warmup * instances), instances - 1)
    lat = [fin[i] - arr[i] for i in range(skip, instances)]
    icp, _ = instance_critical_paths(sim)
    span = sim.makespan - (arr[0] if arr else 0.0)
    bound = capacity_bound_per_us(profile, arch) * 1000.0
    return LoadPoint(
        rate_per_ms=rate_per_ms,
        offered_vs_bound=rate_per_ms / bound,
        latency_mean_us=sum(lat) / len(lat),
        latency_se_us=batch_means_se(lat),
        latency_p50_us=percentile(lat, 50),
        latency_p99_us=percentile(lat, 99),
        throughput_per_ms=instances / span * 1000.0 if span > 0 else 0.0,
        utilization=sum(sim.time.busy) / (arch.n_peas * sim.makespan) if sim.makespan else 0.0,
        critical_path_mean_us=sum(icp[skip:]) / len(icp[skip:]),
        critical_path_p99_us=percentile(icp[skip:], 99),
    )


def load_sweep(
    cw: CompiledWorkflow,
    arch: Arch,
    scheduler: str,
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    slo_mult: float | None = 3.0,
    slo_us: float | None = None,
    slo_basis: str = "mean",
    refine: int = 3,
    profile: dict | None = None,
    **kw,
) -> dict:
    """Latency against offered load, from low load to the capacity bound, and the largest
    rate whose p99 latency meets the SLO: `slo_us`, or `slo_mult` x the critical path of
    the instances, their mean (`slo_basis="mean"`) or their p99 (`"p99"`). With heavy-tailed
    workflows (loops, fan-outs) the p99 of the critical paths alone can exceed a few times
    their mean: no load meets such an SLO (`slo_infeasible`, capacity 0).
    The capacity is the largest swept rate below which every swept rate meets the SLO,
    refined by `refine` bisection steps toward the first rate that misses it. A rate above
    the capacity bound never counts as met (a finite run can finish a backlog that grows
    without end inside the SLO; no scheduler sustains it)."""
    if not 0 <= refine <= MAX_REFINE:
        raise ValueError(f"load: refine must be in [0, {MAX_REFINE}] (MAX_REFINE), got {refine}")
    check_seed(kw.get("seed", 0), "load: seed")  # before the profile and the first rate
    profile = profile or cw.profile()
    bound = capacity_bound_per_us(profile, arch) * 1000.0
    if math.isinf(bound):
        raise ValueError(
            f"load: workflow {cw.wf.name!r} has no work (0 PEA-us per instance): its capacity "
            "bound is infinite, so no rate is a fraction of it; give one --rate"
        )
    if not fractions or not all(positive_finite(f) for f in fractions):
        raise ValueError("load: fractions of the capacity bound must be positive and finite")
    refuse_repeats(fractions, "load: --fractions")  # the same rate would run twice
    pts = [
        run_at_rate(cw, arch, scheduler, f * bound, profile=profile, **kw)
        for f in sorted(fractions)
    ]
    if slo_basis not in ("mean", "p99"):
        raise ValueError(f"load: slo_basis must be mean or p99, got {slo_basis!r}")
    cp = pts[0].critical_path_mean_us if slo_basis == "mean" else pts[0].critical_path_p99_us
    slo = slo_us if slo_us is not None else slo_mult * cp

    def met(p: LoadPoint) -> bool:
        return p.latency_p99_us <= slo and p.rate_per_ms <= bound

    ok, bad = 0.0, None
    for p in pts:
        if not met(p):
            bad = min(p.rate_per_ms, bound * (1.0 + 1e-9))
            break
        ok = p.rate_per_ms
    if bad is not None:
        lo = ok
        for _ in range(refine):
            mid = (lo + bad) / 2.0
            p = run_at_rate(cw, arch, scheduler, mid, profile=profile, **kw)
            pts.append(p)
            if met(p):
                lo = mid
            else:
                bad = mid
        ok = lo
    pts.sort(key=lambda p: p.rate_per_ms)
    return {
        "scheduler": scheduler,
        "workflow": cw.wf.name,
        "arch": arch.name,
        "slo_us": slo,
        "slo_basis": "us" if slo_us is not None else slo_basis,
        # the p99 latency with no queueing, transfer or reconfiguration at all
        "slo_floor_us": pts[0].critical_path_p99_us,
        "slo_infeasible": slo < pts[0].critical_path_p99_us,
        "capacity_bound_per_ms": bound,
        "capacity_at_slo_per_ms": ok,
        "capacity_vs_bound": ok / bound,
        "points": [asdict(p) for p in pts],
    }

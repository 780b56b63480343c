"""Arrival processes: a Poisson stream, a closed batch, or a closed loop with a window."""

from __future__ import annotations

import random
from dataclasses import dataclass

from octopus.checks import check_seed
from octopus.owg.schema import MAX_INSTANCES


@dataclass
class Arrivals:
    """`times[i]` is when instance i arrives, or None for closed-loop admission."""

    n: int
    times: list[float] | None
    concurrency: int  # closed loop: instances in flight; otherwise n


def make_arrivals(spec: dict, n_clusters: int, seed: int, instances: int | None = None) -> Arrivals:
    """Sizes scale with the number of clusters, so one workload file serves chip to wafer.
    At most `MAX_INSTANCES` instances: more is refused here, before any arrival is drawn."""
    check_seed(seed, "arrivals")
    proc = spec.get("process", "closed")
    if instances is not None and instances < 1:  # 0 used to mean "the default", -3 "none"
        raise ValueError(f"--instances must be >= 1, got {instances}")
    if instances is not None and instances > MAX_INSTANCES:
        raise ValueError(f"--instances must be <= {MAX_INSTANCES} (MAX_INSTANCES), got {instances}")
    per = spec.get("instances_per_cluster", 16)
    n = instances if instances is not None else max(1, int(per * n_clusters))
    if n > MAX_INSTANCES:
        raise ValueError(
            f"arrival: field 'instances_per_cluster': {per} x {n_clusters} clusters = {n} "
            f"instances, more than {MAX_INSTANCES} (MAX_INSTANCES); pass fewer instances"
        )
    if proc == "batch":
        return Arrivals(n, [0.0] * n, n)
    if proc == "poisson":
        rate = float(spec.get("rate_per_cluster_per_ms", 1.0)) * n_clusters / 1000.0  # per us
        rng, t, times = random.Random(seed ^ 0x5EED), 0.0, []
        for _ in range(n):
            times.append(t)
            t += rng.expovariate(rate)
        return Arrivals(n, times, n)
    if proc == "closed":
        k = max(1, int(spec.get("concurrency_per_cluster", 2) * n_clusters))
        return Arrivals(n, None, min(k, n))
    raise ValueError(f"arrival: field 'process': unknown {proc!r} (poisson | batch | closed)")

"""Building and running one configuration, and the reactive threshold sweep."""

from __future__ import annotations

from octopus.arch import Arch, load_arch
from octopus.owg import load_workflow
from octopus.owg.arrival import make_arrivals
from octopus.owg.sample import CompiledWorkflow, split_stages
from octopus.sched import THRESHOLDS, make_scheduler
from octopus.sim import Simulator


def prepare(workflow, arch, level="high"):
    wf = load_workflow(workflow) if isinstance(workflow, str) else workflow
    a = load_arch(arch) if isinstance(arch, str) else arch
    cw = CompiledWorkflow(split_stages(wf, a.pea_memory_bytes), level)
    return cw, a


def run_one(
    cw: CompiledWorkflow,
    arch: Arch,
    scheduler: str,
    seed: int = 0,
    instances: int | None = None,
    record: bool = False,
    profile: dict | None = None,
    **kw,
) -> Simulator:
    arr = make_arrivals(cw.wf.arrival, arch.n_clusters, seed, instances)
    sched = make_scheduler(scheduler, **kw)
    return Simulator(cw, arch, sched, arr, seed=seed, record=record, profile=profile).run()


def best_reactive(
    cw, arch, seed=0, instances=None, profile=None, thresholds=THRESHOLDS, mappings=None, **kw
):
    """Run `reactive` at every threshold, with every compile-time mapping the architecture
    offers, and keep the fastest: the baseline at its best. Returns (run, threshold); the
    run's scheduler records the mapping, its `best_static` the best static run, and its
    `reactive_grid` every makespan by (mapping, threshold)."""
    profile = profile or cw.profile()
    best, best_th, best_static = None, None, None
    grid: dict[tuple[str, float], float] = {}
    for mp in mappings or arch.baseline_mappings:
        for th in thresholds:
            s = run_one(
                cw,
                arch,
                "reactive",
                seed,
                instances,
                profile=profile,
                threshold=th,
                mapping=mp,
                **kw,
            )
            grid[mp, th] = s.makespan
            if best is None or s.makespan < best.makespan:
                best, best_th = s, th
            if th == float("inf") and (best_static is None or s.makespan < best_static.makespan):
                best_static = s
    best.best_static = best_static
    best.reactive_grid = grid
    return best, best_th

"""Building and running one configuration, and the reactive threshold sweep."""

from __future__ import annotations

from octopus.arch import Arch, load_arch
from octopus.owg import load_workflow
from octopus.owg.arrival import make_arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.sched import THRESHOLDS, make_scheduler
from octopus.sim import Simulator


def prepare(workflow, arch, level="high"):
    wf = load_workflow(workflow) if isinstance(workflow, str) else workflow
    a = load_arch(arch) if isinstance(arch, str) else arch
    cw = CompiledWorkflow(wf, level)
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


def best_reactive(cw, arch, seed=0, instances=None, profile=None, thresholds=THRESHOLDS, **kw):
    """Run `reactive` at every threshold and keep the fastest: the baseline at its best."""
    profile = profile or cw.profile()
    best, best_th = None, None
    for th in thresholds:
        s = run_one(cw, arch, "reactive", seed, instances, profile=profile, threshold=th, **kw)
        if best is None or s.makespan < best.makespan:
            best, best_th = s, th
    return best, best_th

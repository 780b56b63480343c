"""Building and running one configuration, and the reactive threshold sweep."""

from __future__ import annotations

from octopus.arch import Arch, load_arch
from octopus.owg import load_workflow
from octopus.owg.arrival import make_arrivals
from octopus.owg.sample import CompiledWorkflow, split_stages
from octopus.sched import THRESHOLDS, check_scheduler_name, make_scheduler
from octopus.sched.base import mapping_fits
from octopus.sim import Simulator
from octopus.sim.engine import footprint_problems


def prepare(workflow, arch, level="high"):
    wf = load_workflow(workflow) if isinstance(workflow, str) else workflow
    a = load_arch(arch) if isinstance(arch, str) else arch
    cw = CompiledWorkflow(split_stages(wf, a.pea_memory_bytes), level)
    return cw, a


def check_names(where: str, lists: dict[str, tuple[str, list[str]]]) -> None:
    """Resolve, before anything runs, the names a command or grid will use, and raise one
    ValueError listing every one that fails, each with its key. `lists` maps each of
    `workflows`, `architectures`, `schedulers` and `levels` (any may be left out) to the
    key to name in messages (a grid field, a command-line option) and the names:
    workflows and architectures are loaded and validated, schedulers resolved without
    being built (a plugin class is loaded and checked), levels looked up in every
    workflow, and each workflow checked on each architecture (layer groups, footprints).
    Before, a bad name failed only when its run came up, after the runs before it."""
    probs: list[str] = []
    loaded: dict[str, dict] = {"workflows": {}, "architectures": {}, "schedulers": {}}
    loaders = {
        "workflows": load_workflow,
        "architectures": load_arch,
        "schedulers": check_scheduler_name,
    }
    for kind, load in loaders.items():
        key, names = lists.get(kind, ("", []))
        for name in names:
            try:
                loaded[kind][name] = load(name)
            except (ValueError, OSError, ImportError, SyntaxError) as e:  # a plugin's code
                probs += [f"{key}: {name!r}: {p}" for p in _problems(e)]
    wfs, arches = loaded["workflows"], loaded["architectures"]
    key, levels = lists.get("levels", ("", []))
    for lv in levels:
        lacking = [w for w, wf in wfs.items() if lv not in wf.levels]
        if lacking:
            probs.append(f"{key}: {lv!r}: unknown to workflow(s) {', '.join(lacking)}")
    key = lists.get("workflows", ("",))[0]
    for w, wf in wfs.items():
        for a, arch in arches.items():
            try:
                fit = footprint_problems(split_stages(wf, arch.pea_memory_bytes), arch)
            except ValueError as e:
                fit = _problems(e)
            probs += [f"{key}: {w!r} on architecture {a!r}: {p}" for p in fit]
    if probs:
        raise ValueError(
            f"{where}: {len(probs)} problem(s), nothing was run:\n  " + "\n  ".join(probs)
        )


def _problems(e: Exception) -> list[str]:
    """An error's messages: a WorkflowError's problems one by one, else its text."""
    return list(getattr(e, "problems", None) or [str(e)])


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
    mappings = list(mappings or arch.baseline_mappings)
    # a mapping the architecture cannot hold (a cluster smaller than one group per TB) is
    # no option for the baseline; with none that fits, the first run reports why
    mappings = [m for m in mappings if mapping_fits(arch, cw.footprint, m)] or mappings
    for mp in mappings:
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

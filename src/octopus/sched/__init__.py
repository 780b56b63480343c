"""Schedulers: baselines (static, reactive, greedy) and Octopus with switchable strategies."""

from __future__ import annotations

from octopus.sched.api import Scheduler, SchedulerAPI
from octopus.sched.greedy import GreedyScheduler
from octopus.sched.octopus import OctopusScheduler
from octopus.sched.plugins import instantiate, is_spec, register, registered
from octopus.sched.reactive import THRESHOLDS, ReactiveScheduler
from octopus.sched.static import StaticScheduler

# Octopus variants used by the ablation: each adds one strategy to the previous one.
VARIANTS = {
    "octopus-dds": dict(dds=True, adaptive=False, proactive=False),
    "octopus-dds-adaptive": dict(dds=True, adaptive=True, proactive=False),
    "octopus": dict(dds=True, adaptive=True, proactive=True, balancer="diffusion"),
    "octopus-central": dict(dds=True, adaptive=True, proactive=True, balancer="central"),
}
NAMES = ("static", "reactive", "greedy", *VARIANTS)


def make_scheduler(name: str, **kw):
    """Build a scheduler by name (built-in or registered), or from a plugin spec
    `package.module:Class` / `path/to/file.py:Class`. `reactive` takes threshold=, Octopus
    variants their knobs; a plugin class gets `kw` as constructor arguments."""
    if name == "static":
        return StaticScheduler(**kw)
    if name == "greedy":
        return GreedyScheduler()
    if name == "reactive":
        return ReactiveScheduler(**kw)
    if name in VARIANTS:
        return OctopusScheduler(**{**VARIANTS[name], **kw})
    extra = registered()
    if name in extra:
        return extra[name](**kw)
    if is_spec(name):
        return instantiate(name, **kw)
    raise ValueError(
        f"unknown scheduler {name!r} (one of {', '.join(all_names())}, "
        "or package.module:Class, or path/to/file.py:Class)"
    )


def all_names() -> tuple[str, ...]:
    """Every scheduler name: the built-ins, then registered plugins."""
    return (*NAMES, *registered())


__all__ = [
    "NAMES",
    "all_names",
    "register",
    "THRESHOLDS",
    "VARIANTS",
    "Scheduler",
    "SchedulerAPI",
    "make_scheduler",
]

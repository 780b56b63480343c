"""Schedulers: baselines (static, reactive, greedy) and Octopus with switchable strategies."""

from __future__ import annotations

from octopus.sched.api import Scheduler, SchedulerAPI
from octopus.sched.greedy import GreedyScheduler
from octopus.sched.octopus import OctopusScheduler
from octopus.sched.plugins import instantiate, is_spec, load_class, register, registered
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
        s = OctopusScheduler(**{**VARIANTS[name], **kw})
        s.name = name  # reports (summary, trace, plots) name the variant that ran
        return s
    extra = registered()
    if name in extra:
        return extra[name](**kw)
    if is_spec(name):
        return instantiate(name, **kw)
    raise _unknown(name)


def check_scheduler_name(name: str) -> None:
    """Raise what `make_scheduler(name)` would for a name it cannot resolve, without
    building a scheduler: a plugin spec's class is loaded and checked against the
    interface. Lets a grid or a suite refuse a bad name before its first run."""
    if name in NAMES or name in registered():
        return
    if not is_spec(name):
        raise _unknown(name)
    load_class(name)


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown scheduler {name!r} (one of {', '.join(all_names())}, "
        "or package.module:Class, or path/to/file.py:Class)"
    )


def all_names() -> tuple[str, ...]:
    """Every scheduler name: the built-ins, then registered plugins."""
    return (*NAMES, *registered())


__all__ = [
    "NAMES",
    "all_names",
    "check_scheduler_name",
    "register",
    "THRESHOLDS",
    "VARIANTS",
    "Scheduler",
    "SchedulerAPI",
    "make_scheduler",
]

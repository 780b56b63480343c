"""An independent SimPy model of the simple configuration, for cross-checking the core.

Simple configuration: one pool of P identical, always-warm PEAs (no reconfiguration), free
data movement, first come first served, control blocks taking a fixed control latency,
footprint 1. Instances are the same seeded samples; the execution is modelled separately
with SimPy processes and a `simpy.Resource`.

Invocations that become ready at the same instant are served in the order SimPy's chains
of zero-delay events reach the request, which need not be the core's (the order of the
events that readied them): with exact ties of work times and control latencies the two
makespans can differ (docs/octopus.md, "Simple configuration and the SimPy cross-check").
"""

from __future__ import annotations

import simpy

from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow


def simpy_makespan(
    cw: CompiledWorkflow,
    n_peas: int,
    ctrl_us: float,
    tops: float,
    arr: Arrivals,
    seed: int,
    presampled: list | None = None,
) -> tuple[float, int]:
    """Return (makespan, task invocations executed)."""
    env = simpy.Environment()
    pea = simpy.Resource(env, capacity=n_peas)
    T = cw.n_tasks
    state = {"next": 0, "tasks": 0, "end": 0.0}

    def invocation(nd, w, deps, done):
        if deps:
            yield simpy.AllOf(env, deps)
        if nd < T:
            with pea.request() as req:
                yield req
                yield env.timeout(w / tops)
            state["tasks"] += 1
        else:
            yield env.timeout(ctrl_us)
        state["end"] = max(state["end"], env.now)
        done.succeed()

    def instance(idx):
        inst = presampled[idx] if presampled else cw.sample(cw.instance_rng(seed, idx), idx, seed)
        evs = [env.event() for _ in inst.node]
        for k, (nd, w, ps) in enumerate(zip(inst.node, inst.work, inst.preds)):
            env.process(invocation(nd, w, [evs[j] for j in ps], evs[k]))
        yield simpy.AllOf(env, evs)

    def slot():
        while state["next"] < arr.n:
            idx = state["next"]
            state["next"] += 1
            yield env.process(instance(idx))

    def timed(idx, t):
        yield env.timeout(t)
        yield env.process(instance(idx))

    if arr.times is None:
        for _ in range(arr.concurrency):
            env.process(slot())
    else:
        for i, t in enumerate(arr.times):
            env.process(timed(i, t))
    env.run()
    return state["end"], state["tasks"]

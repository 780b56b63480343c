"""Liveness on small and odd architectures (hypothesis): every registered scheduler either
finishes every instance or refuses the architecture up front with a clear ValueError. A
`SimulationStalled` (ready work never placed) is a bug: an architecture that truly cannot
run a workflow is refused at set-up, not after simulated time.

The property test of `test_invariants` runs on one large fabric; here the clusters hold one
to sixteen PEAs, often fewer than the workflow's task blocks need, with footprints of up to
three PEAs, back-pressure and reconfiguration costs. In an open loop, no instance waits for
a later arrival either: what finishes before an arrival finishes as it does without it.
"""

from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from octo_helpers import TUTORIAL_SPEC, arch, fan_branch_loop, task, workflow

from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.sched import all_names, make_scheduler, register
from octopus.sched.plugins import registered
from octopus.sim import Simulator, engine

if "tutorial-shortest-wait" not in registered():
    register("tutorial-shortest-wait", TUTORIAL_SPEC)

# the refusals a scheduler may give at set-up: a footprint larger than a cluster (the core),
# a compile-time partition that cannot give every task block a group (the baselines)
REFUSALS = ("do not fit in a cluster of", "cannot hold one group per task block")

CLUSTERS = [(1, 1), (2, 1), (1, 2), (2, 2)]
PEAS = [(1, 1), (2, 1), (1, 2), (3, 1), (2, 2), (3, 2), (4, 2), (3, 3), (4, 4)]

# a run is declared stalled after this many scheduler ticks in a row with nothing in flight
# (no task running, no decision or arrival to come). The engine allows STALL_TICKS (100000)
# before it gives up on a scheduler that is never quiescent, minutes per stalled example;
# a run of these sizes idle that long with ready work is stuck for any practical purpose
TEST_STALL_TICKS = 2000

works = st.one_of(
    st.floats(1.0, 10.0),  # shorter than a reconfiguration (rc_base 30): waiting may pay
    st.floats(1.0, 200.0),
    st.fixed_dictionaries(
        {"dist": st.just("lognormal"), "mean": st.floats(5, 100), "cv": st.floats(0, 1.5)}
    ),
)


@st.composite
def small_case(draw, clusters_choices=CLUSTERS, peas_choices=PEAS, slots_choices=(0, 1, 2)):
    """An architecture of one to four clusters of one to sixteen PEAs, and a workflow whose
    footprints (1 to 3) fit in a cluster: a chain, optionally forking into two parallel
    tasks and their join, into a fanout, a branch and a loop."""
    clusters = draw(st.sampled_from(clusters_choices))
    peas = draw(st.sampled_from(peas_choices))
    npc = peas[0] * peas[1]
    fps = st.integers(1, min(3, npc))
    n = draw(st.integers(1, 4))
    ids = [f"t{i}" for i in range(n)]
    fork = draw(st.booleans())
    nodes = [
        task(
            tid,
            draw(works),
            [ids[i + 1]] if i + 1 < n else ["pa", "pb"] if fork else ["fan"],
            footprint=draw(fps),
            out_bytes=draw(st.integers(0, 200000)),
            config_bytes=draw(st.integers(0, 100000)),
            **({"join": "pj"} if fork and i + 1 == n else {}),
        )
        for i, tid in enumerate(ids)
    ]
    if fork:
        nodes += [
            task("pa", draw(works), ["pj"], footprint=draw(fps)),
            task("pb", draw(works), ["pj"], footprint=draw(fps)),
            {"id": "pj", "type": "join", "next": ["fan"]},
        ]
    tail = fan_branch_loop(  # keyword arguments are drawn in the order written
        fan_high=draw(st.integers(0, 8)),
        w=draw(works),
        w_kw={"out_bytes": draw(st.integers(0, 50000)), "footprint": draw(fps)},
        x=draw(works),
        y=draw(works),
        z=draw(works),
    )
    for nd in tail:
        if nd["id"] in ("x", "y", "z"):
            nd["footprint"] = draw(fps)
    a = arch(
        clusters=clusters,
        peas=peas,
        hop=draw(st.sampled_from([0.0, 0.05])),
        rc_base=draw(st.sampled_from([0.0, 30.0])),
        slots=draw(st.sampled_from(slots_choices)),
        contention=draw(st.booleans()),
        mappings=draw(st.sampled_from([("replicated",), ("regions",), ("replicated", "regions")])),
    )
    return workflow(nodes + tail, "t0"), a


def knobs(scheduler: str, draw) -> dict:
    """Constructor arguments: the thresholds and periods of the ticking schedulers, and the
    switches of Octopus's strategies (its ablation knobs, each a valid configuration)."""
    kw = {}
    if scheduler in ("reactive", "static") and draw(st.booleans()):
        kw["mapping"] = draw(st.sampled_from(["replicated", "regions"]))
    if scheduler == "reactive":
        kw["threshold"] = draw(st.sampled_from([0.0, 0.25, 1.0, float("inf")]))
        kw["period_us"] = draw(st.sampled_from([5.0, 20.0, 100.0]))
    if scheduler.startswith("octopus"):
        kw["period_us"] = draw(st.sampled_from([5.0, 20.0, 100.0]))
        if draw(st.booleans()):  # the earlier dispatch rules, still valid
            kw.update(oldest_first=False, elastic=False)
        for knob in ("dds", "liveness", "bp_aware", "cost_aware"):
            if not draw(st.integers(0, 3)):
                kw[knob] = False
    return kw


def arrivals(n: int, conc: int, gaps) -> Arrivals:
    """A closed loop of `conc` instances in flight, or (gaps drawn) an open loop."""
    if gaps is None:
        return Arrivals(n, None, min(conc, n))
    times = [0.0]
    for g in gaps[: n - 1]:
        times.append(times[-1] + g)
    times += [times[-1]] * (n - len(times))
    return Arrivals(n, times, n)


def run_or_refuse(doc, a, scheduler, arr, seed, kw):
    """The run, or None when the scheduler refuses the architecture at set-up (a clear
    ValueError); a stall after simulated time fails the test with the case."""
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    try:
        sched = make_scheduler(scheduler, **kw)
        with mock.patch.object(engine, "STALL_TICKS", TEST_STALL_TICKS):
            return Simulator(cw, a, sched, arr, seed=seed, strict=True).run()
    except ValueError as e:
        assert any(r in str(e) for r in REFUSALS), e
        return None


@pytest.mark.parametrize("scheduler", all_names())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=small_case(),
    seed=st.integers(0, 1000),
    n=st.integers(1, 6),
    conc=st.integers(1, 6),
    gaps=st.none() | st.lists(st.sampled_from([0.0, 10.0, 300.0, 5000.0]), max_size=5),
    data=st.data(),
)
def test_every_run_finishes_or_is_refused_up_front(scheduler, case, seed, n, conc, gaps, data):
    doc, a = case
    kw = knobs(scheduler, data.draw)
    sim = run_or_refuse(doc, a, scheduler, arrivals(n, conc, gaps), seed, kw)
    if sim is not None:
        assert sim.finished == n
        assert all(c == 1 for c in sim.inv.n_starts)  # every invocation ran, once


@pytest.mark.parametrize("scheduler", all_names())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # one slot, on one or two clusters of one to four PEAs: where buffer deadlocks happen
    case=small_case(CLUSTERS[:2], [(1, 1), (2, 1), (2, 2)], (1,)),
    seed=st.integers(0, 1000),
    gaps=st.lists(st.sampled_from([0.0, 10.0, 300.0, 5000.0]), min_size=1, max_size=5),
    cut=st.integers(1, 5),
    data=st.data(),
)
def test_an_open_loop_does_not_wait_for_its_later_arrivals(scheduler, case, seed, gaps, cut, data):
    """Nothing waits for the future: the instances that finish before instance m arrives
    finish at the same times when instance m and those after it are left out (the core
    spilled a buffer deadlock only once no arrival was left to come)."""
    doc, a = case
    kw = knobs(scheduler, data.draw)
    n = len(gaps) + 1
    m = min(cut, n - 1)
    full = run_or_refuse(doc, a, scheduler, arrivals(n, n, gaps), seed, kw)
    if full is None:
        return
    times = full.arr.times
    part = run_or_refuse(doc, a, scheduler, arrivals(m, m, gaps), seed, kw)
    assert part.finished == m and full.finished == n

    def before(sim):
        return {(i, f) for i, f in enumerate(sim.instances.finish) if f < times[m]}

    assert before(full) == before(part)

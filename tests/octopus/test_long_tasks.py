"""Long tasks and idle stretches: a scheduler tick that provably changes nothing is not
called, so a task of an hour of simulated time costs what a short one does, and every
result (makespans, start and end times, time accounting, event counts) is the one a run
that calls every tick gives."""

import json
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from octo_helpers import arch, fan_branch_loop, simulate, task, workflow

from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.report.metrics import summarize
from octopus.report.trace import trace_events, write_trace
from octopus.sched import NAMES, make_scheduler
from octopus.sched.api import Scheduler
from octopus.sim import Simulator
from octopus.sim.engine import STALL_TICKS, quiescence_hook
from octopus.sim.events import tick_at_or_after

pytestmark = pytest.mark.timeout(120)

MINUTE, HOUR = 6e7, 3.6e9  # us


def _chain(long_work: float) -> dict:
    return workflow(
        [
            task("a", 1.0, ["b"], out_bytes=0),
            task("b", long_work, ["c"], out_bytes=0),
            task("c", 2.0, out_bytes=0),
        ]
    )


def _naive_ticks(x: float, tick: float, target: float) -> tuple[float, int]:
    n = 0
    while x < target:
        x += tick
        n += 1
    return x, n


@pytest.mark.parametrize(
    "tick", [100.0, 20.0, 0.1, 1 / 3, 37.5, 0.3, 1e-3, 2.5, 0.75, 123.456, 0.5 + 2**-40]
)
def test_the_tick_grid_jump_lands_where_repeated_sums_do(tick):
    """The grid point at or after a target, and the ticks before it, are those of adding
    `tick` one at a time (rounded each time, ties to even included)."""
    rng = random.Random(tick)
    for _ in range(25):
        x = (
            tick * rng.choice([1, 2, 3, 17])
            if rng.random() < 0.7
            else rng.uniform(tick, 999 * tick)
        )
        target = x + tick * (rng.uniform(0, 2e5) if rng.random() < 0.8 else rng.randint(0, 40))
        assert tick_at_or_after(x, tick, target) == _naive_ticks(x, tick, target), (x, target)


def test_the_tick_grid_jump_costs_no_time_in_proportion_to_its_length():
    t0 = time.perf_counter()
    assert tick_at_or_after(100.0, 100.0, HOUR) == (HOUR, 35999999)
    x, n = tick_at_or_after(0.1, 0.1, 1e12)
    assert x >= 1e12 and n > 9e12
    assert time.perf_counter() - t0 < 2.0  # a walk over 1e13 ticks would take hours; the
    # bound is wide so that a busy CI core (the other xdist worker) cannot fail it
    with pytest.raises(OverflowError):
        tick_at_or_after(100.0, 100.0, math.inf)  # 2**60 + 100 rounds back to 2**60


@pytest.mark.parametrize("length", [MINUTE, HOUR])
@pytest.mark.parametrize("scheduler", NAMES)
def test_a_long_task_takes_its_closed_form_makespan_at_once(scheduler, length):
    simulate(_chain(50.0), arch(peas=(2, 2)), scheduler)  # imports and compilation
    t0 = time.perf_counter()
    sim = simulate(_chain(length), arch(peas=(2, 2)), scheduler)
    took = time.perf_counter() - t0
    assert sim.makespan == 1.0 + length + 2.0
    assert [sim.inv.t_start[k] for k in range(3)] == [0.0, 1.0, 1.0 + length]
    tick = sim.sched.tick_us
    if tick:  # every tick up to the first at or after the end counts, called or not
        assert sim.n_events == 3 + math.ceil(sim.makespan / tick)
        assert sim.ticks_skipped > sim.n_events - 5000
    else:
        assert sim.n_events == 3
    assert took < 5.0, f"{scheduler}: {took:.3f} s"  # wide: the tick counts above are the check


def test_the_report_and_trace_of_a_long_run(tmp_path):
    sim = simulate(_chain(HOUR), arch(peas=(2, 2)), "octopus")
    s = summarize(sim)
    end = 1.0 + HOUR + 2.0
    assert s["makespan_us"] == end and s["instances"] == 1 and s["latency_mean_us"] == end
    assert s["utilization"] == pytest.approx(0.25)  # the chain keeps one PEA of 4 busy
    assert sum(s["idle_breakdown"].values()) == pytest.approx(1.0)
    assert s["idle_breakdown"]["busy"] == pytest.approx(0.25)
    assert s["events"] == 3 + math.ceil(end / 100.0)
    for p in range(4):  # each PEA's time adds up to the makespan
        assert sum(sim.time.split(p)) == pytest.approx(end)
    busy = {e["name"]: (e["ts"], e["dur"]) for e in trace_events(sim) if e["ph"] == "X"}
    assert busy == {"a": (0.0, 1.0), "b": (1.0, HOUR), "c": (1.0 + HOUR, 2.0)}
    path = tmp_path / "trace.json"
    write_trace(sim, str(path))
    assert len(json.loads(path.read_text())["traceEvents"]) == len(trace_events(sim))


def test_far_apart_arrivals_are_no_stall():
    """Open loop: nothing is in flight between two arrivals 30 s apart."""
    cw = CompiledWorkflow(parse_workflow(_chain(5.0)), "high")
    a = arch(clusters=(2, 1), peas=(2, 2))
    arr = Arrivals(3, [0.0, 3e7, 6e7], 3)
    sim = Simulator(cw, a, make_scheduler("octopus"), arr).run()
    assert sim.makespan == 6e7 + 8.0
    assert sim.instances.finish == [8.0, 3e7 + 8.0, 6e7 + 8.0]


# ------------------------------------------------------------ identical to every tick


def _every_tick(s):
    """The same scheduler, its `on_tick` redefined below its `quiescent`: the core no longer
    relies on that and calls every tick (the reference)."""
    cls = type(s)
    s.__class__ = type(f"EveryTick{cls.__name__}", (cls,), {"on_tick": cls.on_tick})
    assert quiescence_hook(s) is None
    return s


long_works = st.one_of(
    st.floats(1.0, 3000.0),
    st.fixed_dictionaries(
        {"dist": st.just("lognormal"), "mean": st.floats(50, 2000), "cv": st.floats(0, 1.5)}
    ),
)


@st.composite
def gappy_workflow(draw):
    """A chain into a fanout, a branch and a bounded loop, with tasks of up to a few ms:
    many stretches of several ticks with nothing finishing, some with work queued."""
    n = draw(st.integers(1, 3))
    ids = [f"t{i}" for i in range(n)]
    nodes = [
        task(
            tid,
            draw(long_works),
            [ids[i + 1]] if i + 1 < n else ["fan"],
            footprint=draw(st.integers(1, 2)),
            out_bytes=draw(st.integers(0, 200000)),
            config_bytes=draw(st.integers(0, 100000)),
        )
        for i, tid in enumerate(ids)
    ]
    nodes += fan_branch_loop(  # keyword arguments are drawn in the order written
        fan_high=draw(st.integers(0, 10)),
        w=draw(long_works),
        w_kw={"out_bytes": draw(st.integers(0, 50000))},
        x=draw(long_works),
        y=draw(long_works),
        z=draw(long_works),
    )
    return workflow(nodes, "t0")


TICKING = [
    ("reactive", {}),
    ("reactive", {"threshold": 0.25, "period_us": 20.0}),
    ("reactive", {"mapping": "regions"}),
    ("octopus-dds", {}),
    ("octopus-dds-adaptive", {"period_us": 20.0}),
    ("octopus", {}),
    ("octopus-central", {}),
]


def _outcome(sim) -> tuple:
    s = sim.sched
    return (
        sim.makespan,
        sim.n_events,
        list(sim.inv.t_start),
        list(sim.inv.t_end),
        [list(p) for p in sim.inv.peas],
        [sim.time.split(p) for p in range(sim.arch.n_peas)],
        list(sim.instances.finish),
        sim.physics.n_reconfig,
        sim.buffers.spills,
        getattr(s, "moves", None),
        getattr(s, "migrated", None),
        getattr(s, "preconfigs", None),
    )


@pytest.mark.parametrize("name,kw", TICKING)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=gappy_workflow(),
    seed=st.integers(0, 1000),
    n=st.integers(1, 6),
    conc=st.integers(1, 6),
    slots=st.sampled_from([0, 1, 2]),
    shape=st.sampled_from([((1, 1), (2, 2)), ((2, 1), (2, 2)), ((2, 2), (2, 1))]),
    rc=st.sampled_from([0.0, 30.0]),
)
def test_skipping_idle_ticks_changes_no_result(name, kw, doc, seed, n, conc, slots, shape, rc):
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    a = arch(
        clusters=shape[0],
        peas=shape[1],
        slots=slots,
        rc_base=rc,
        hop=0.05,
        mappings=("replicated", "regions"),
    )
    try:
        runs = []
        for wrap in (lambda s: s, _every_tick):
            arr = Arrivals(n, None, min(conc, n))
            sched = wrap(make_scheduler(name, **kw))
            runs.append(Simulator(cw, a, sched, arr, seed=seed, strict=True).run())
    except ValueError as e:  # the partitioned schedulers' cluster too small: both refuse
        assert "cannot hold one group per task block" in str(e)
        return
    fast, ref = runs
    assert ref.ticks_skipped == 0
    assert _outcome(fast) == _outcome(ref)


QUEUED = [
    ("one", 5000.0, ((2, 1), (1, 1)), 3),
    ("one", 5000.0, ((2, 2), (1, 1)), 5),
    ("two", 5000.0, ((2, 1), (1, 1)), 5),
    ("two", 5000.0, ((2, 1), (2, 1)), 3),
    ("one", 5e5, ((2, 1), (1, 1)), 3),
    ("two", 5e5, ((2, 1), (2, 1)), 5),
]


@pytest.mark.parametrize("name,kw", [*TICKING, ("reactive", {"threshold": 0.0})])
def test_ticks_that_act_while_work_waits_on_long_tasks_are_all_called(name, kw):
    """Work queued behind long tasks on clusters of one or two PEAs: the balancers move it
    between clusters on most ticks (back and forth), the adaptive shares decay tick by
    tick; every such tick is called, and the rest skipped, with the results of calling
    all."""
    acted = skipped = 0
    for shape_name, length, shape, n in QUEUED:
        nodes = [task("a", length, ["b"] if shape_name == "two" else [], out_bytes=1000)]
        if shape_name == "two":
            nodes.append(task("b", 300.0, out_bytes=0))
        cw = CompiledWorkflow(parse_workflow(workflow(nodes)), "high")
        a = arch(clusters=shape[0], peas=shape[1], hop=0.05, mappings=("replicated", "regions"))
        try:
            fast, ref = (
                Simulator(cw, a, wrap(make_scheduler(name, **kw)), Arrivals(n, None, n)).run()
                for wrap in (lambda s: s, _every_tick)
            )
        except ValueError as e:  # a partition of two TBs on one PEA
            assert "cannot hold one group per task block" in str(e)
            continue
        assert _outcome(fast) == _outcome(ref), (shape_name, length, shape, n)
        acted += getattr(fast.sched, "moves", 0) + getattr(fast.sched, "migrated", 0)
        skipped += fast.ticks_skipped
    assert skipped > 0
    if kw.get("threshold", 1.0) < 1.0 or name in ("octopus", "octopus-central"):
        assert acted > 0


@pytest.mark.parametrize("name", ["octopus-dds-adaptive", "octopus", "octopus-central"])
@pytest.mark.parametrize("fan,length,n,conc", [(2, 3e4, 6, 2), (6, 3e4, 8, 3), (2, 3e5, 6, 2)])
def test_the_adaptive_shares_decay_through_a_long_task_as_tick_by_tick(name, fan, length, n, conc):
    """Between the fanouts of instances, a task of 30 or 300 ms: the demand each TBU saw
    decays tick by tick (and the shares with it) down to its fixed point, which takes
    about 2,000 ticks of 100 us; only the ticks after that are skipped. Skipping from the
    first tick that moves no PEA changes these makespans."""
    doc = workflow(
        [
            task("a", 10.0, ["fan"], out_bytes=0),
            {"id": "fan", "type": "fanout", "count": fan, "body": "w", "join": "j"},
            task("w", {"dist": "lognormal", "mean": 40.0, "cv": 1.0}, ["j"], out_bytes=0),
            {"id": "j", "type": "join", "next": ["b"]},
            task("b", length, ["c"], out_bytes=0),
            task("c", {"dist": "lognormal", "mean": 30.0, "cv": 0.8}, out_bytes=0),
        ]
    )
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    a = arch(peas=(4, 2), rc_base=5.0)
    fast, ref = (
        Simulator(cw, a, wrap(make_scheduler(name)), Arrivals(n, None, conc), seed=3).run()
        for wrap in (lambda s: s, _every_tick)
    )
    assert _outcome(fast) == _outcome(ref)
    if length < 1e5:
        assert fast.ticks_skipped == 0
    else:
        assert fast.ticks_skipped > 0


def test_the_suite_skips_ticks_with_results_unchanged():
    """A suite workflow whose tasks leave gaps of several ticks, on a multi-cluster chip."""
    from octopus.runner import prepare

    cw, a = prepare("video_recognition", "chiplet")
    for name in ("reactive", "octopus", "octopus-central"):
        runs = []
        for wrap in (lambda s: s, _every_tick):
            arr = Arrivals(24, None, 24)
            runs.append(Simulator(cw, a, wrap(make_scheduler(name)), arr, seed=1).run())
        assert _outcome(runs[0]) == _outcome(runs[1]), name
        assert runs[0].ticks_skipped > 0 or name != "reactive"


# ------------------------------------------------------------ stalls and runaways


class NeverStarts(Scheduler):
    """Queues everything and starts nothing: a stall once the first tasks are ready."""

    name = "never-starts"
    tick_us = 100.0

    def attach(self, api):
        super().attach(api)
        self.ticks = 0

    def on_ready(self, k, t):
        pass

    def on_free(self, peas, t):
        pass

    def on_tick(self, t):
        self.ticks += 1


class NeverStartsQuiescent(NeverStarts):
    def on_tick(self, t):
        pass

    def quiescent(self):
        return True


def _stall(sched, **kw) -> str:
    cw = CompiledWorkflow(parse_workflow(_chain(5.0)), "high")
    with pytest.raises(RuntimeError) as e:
        Simulator(cw, arch(peas=(2, 2)), sched, Arrivals(2, None, 2), **kw).run()
    return str(e.value)


def test_a_stall_with_a_quiescent_scheduler_is_reported_at_once():
    msg = _stall(NeverStartsQuiescent())
    assert "stalled at t=100 us" in msg
    assert "2 ready task invocations (node 'a') are never started" in msg
    assert "2 instances never finish" in msg and "'never-starts'" in msg


def test_a_stall_with_a_scheduler_that_ticks_is_reported_after_stall_ticks():
    s = NeverStarts()
    msg = _stall(s)
    assert "stalled" in msg and "node 'a'" in msg
    assert s.ticks == STALL_TICKS + 1


def test_a_long_task_is_no_stall_for_a_scheduler_that_ticks_every_tick():
    """Without `quiescent` every tick is called, however long the task: no refusal."""
    sim = simulate(_chain(3e7), arch(peas=(2, 2)), "reactive")
    ref = Simulator(
        sim.cw, sim.arch, _every_tick(make_scheduler("reactive")), Arrivals(1, None, 1)
    ).run()
    assert ref.makespan == sim.makespan == 3e7 + 3.0
    assert ref.n_events == sim.n_events == 3 + math.ceil(ref.makespan / 100.0) > STALL_TICKS

"""Invariants on random workflows and every registered scheduler (hypothesis).

The tutorial scheduler of docs/ is registered here, so it is checked like a built-in one;
every run is strict: the scheduler's views of the state are read-only.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from octo_helpers import TUTORIAL_SPEC, arch, fan_branch_loop, simulate, task, workflow

from octopus.report.metrics import lower_bound
from octopus.sched import all_names, register
from octopus.sched.plugins import registered

if "tutorial-shortest-wait" not in registered():
    register("tutorial-shortest-wait", TUTORIAL_SPEC)

works = st.one_of(
    st.floats(1.0, 200.0),
    st.fixed_dictionaries(
        {"dist": st.just("lognormal"), "mean": st.floats(5, 100), "cv": st.floats(0, 1.5)}
    ),
)


@st.composite
def random_workflow(draw):
    """A chain with an optional fanout, branch and bounded loop; sizes and costs vary."""
    n = draw(st.integers(1, 4))
    nodes, ids = [], [f"t{i}" for i in range(n)]
    for i, tid in enumerate(ids):
        nxt = [ids[i + 1]] if i + 1 < n else ["fan"]
        nodes.append(
            task(
                tid,
                draw(works),
                nxt,
                footprint=draw(st.integers(1, 2)),
                out_bytes=draw(st.integers(0, 200000)),
                config_bytes=draw(st.integers(0, 100000)),
            )
        )
    nodes += fan_branch_loop(  # keyword arguments are drawn in the order written
        fan_high=draw(st.integers(0, 12)),
        w=draw(works),
        w_kw={"out_bytes": draw(st.integers(0, 50000)), "config_bytes": 50000},
        x=draw(works),
        y=draw(works),
        z=draw(works),
    )
    return workflow(nodes, "t0")


KNOBS = {"reactive": {"period_us": 20.0}}  # octopus variants: period_us too (below)


@pytest.mark.parametrize("scheduler", all_names())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=random_workflow(),
    seed=st.integers(0, 1000),
    n=st.integers(1, 6),
    conc=st.integers(1, 6),
    slots=st.sampled_from([0, 1, 2]),
    mapping=st.sampled_from(["regions", "replicated"]),
    legacy=st.booleans(),
)
def test_invariants(doc, scheduler, seed, n, conc, slots, mapping, legacy):
    # the full physical model: back-pressure (slots), link contention, both baseline mappings
    a = arch(
        clusters=(2, 2),
        peas=(4, 4),
        per_die=(1, 2),
        hop=0.02,
        rc_base=1.0,
        slots=slots,
        contention=True,
        mappings=(mapping,),
    )
    kw = dict(KNOBS.get(scheduler, {}))
    if scheduler.startswith("octopus"):
        kw["period_us"] = 20.0
    if scheduler.startswith("octopus") and legacy:  # the earlier dispatch rules, still valid
        kw.update(oldest_first=False, elastic=False)
    sim = simulate(doc, a, scheduler, n=n, concurrency=min(conc, n), seed=seed, strict=True, **kw)
    T, eps = sim.makespan, 1e-6 * max(1.0, sim.makespan)
    assert sim.finished == n
    # exactly once
    assert all(c == 1 for c in sim.inv.n_starts)
    # dependencies respected
    for k, ps in enumerate(sim.inv.preds):
        for j in ps:
            assert sim.inv.t_start[k] >= sim.inv.t_end[j] - eps
    # no PEA runs two things at once (busy and reconfiguration intervals)
    spans = [[] for _ in range(a.n_peas)]
    for k, peas in enumerate(sim.inv.peas):
        for p in peas:
            spans[p].append((sim.inv.t_start[k], sim.inv.t_end[k]))
    for p, s, e, _ in sim.physics.reconf_spans:
        spans[p].append((s, min(e, T)))
    for iv in spans:
        iv.sort()
        for (_, e0), (s1, _) in zip(iv, iv[1:]):
            assert s1 >= e0 - eps
    # utilization <= 1 and every PEA's time is accounted exactly
    for p in range(a.n_peas):
        assert sim.time.busy[p] <= T + eps
        parts = sim.time.split(p)
        assert abs(sum(parts) - T) <= eps
        assert min(parts) >= -eps
    # back-pressure: no PEA is left blocked, and every output slot was released
    assert not any(sim.buffers.is_blocked)
    assert all(u == 0 for u in sim.buffers.used)
    # nothing beats the lower bound
    b = lower_bound(sim)
    assert T >= b["bound_us"] - eps
    assert T >= b["window_bound_us"] - eps

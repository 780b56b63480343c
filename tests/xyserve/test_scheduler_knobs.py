"""Hybrid scheduling knobs: per-request prefill chunk cap and prefix-hit-aware admission."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xyserve.config import EngineConfig
from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.scheduler import Scheduler


def make(
    budget=64,
    chunk=None,
    order="fcfs",
    skips=16,
    reserve=None,
    blocks=512,
    seqs=16,
    partial=True,
    split=None,
):
    kv = KVCacheManager(blocks, 4)
    return Scheduler(
        kv,
        budget,
        seqs,
        4096,
        num_reserved_decode_tokens=reserve,
        max_prefill_chunk_tokens=chunk,
        admission_order=order,
        admission_max_skips=skips,
        partial_prefill_admission=partial,
        split_decode_rows=split,
    )


def req(rid: str, n: int, max_tokens: int = 2, base: int = 0) -> Request:
    return Request(rid, [base + i for i in range(n)], max_tokens)


def step(s: Scheduler):
    out = s.schedule()
    s.update(out, {x.request.request_id: [5] for x in out.stages if x.samples})
    for x in out.stages:
        r = x.request
        if r.num_output_tokens >= r.max_tokens and not r.is_finished:
            s.finish_request(r.request_id, RequestStatus.FINISHED_LENGTH)
    return {x.request.request_id: x.num_tokens for x in out.stages}


def drain(s: Scheduler, limit: int = 500) -> None:
    for _ in range(limit):
        if not s.has_unfinished():
            return
        step(s)
    raise AssertionError("did not finish")


def test_chunk_cap_limits_each_prompt_and_lets_two_prefill_together():
    s = make(budget=64, chunk=16)
    s.add_request(req("a", 100))
    s.add_request(req("b", 100, base=1000))
    assert step(s) == {"a": 16, "b": 16}
    assert step(s) == {"a": 16, "b": 16}
    drain(s)
    s.kv.check_no_leak()


def test_no_cap_is_the_budget_as_before():
    s = make(budget=64)
    s.add_request(req("a", 100))
    s.add_request(req("b", 100, base=1000))
    assert step(s) == {"a": 64}


def test_without_partial_admission_a_new_prompt_joins_only_whole():
    s = make(budget=64, partial=False)
    s.add_request(req("a", 40))
    s.add_request(req("b", 40, base=1000))  # would fit only partly next to a
    s.add_request(req("c", 20, base=2000))
    assert step(s) == {"a": 40}  # b waits (fcfs keeps c behind it)
    assert step(s) == {"a": 1, "b": 40, "c": 20}
    s = make(budget=64, partial=False)
    s.add_request(req("long", 150))  # longer than the budget: still chunked when it leads
    assert step(s) == {"long": 64}
    s = make(budget=64, partial=True)
    s.add_request(req("a", 40))
    s.add_request(req("b", 40, base=1000))
    assert step(s) == {"a": 40, "b": 24}


def cached_then_queue(order: str, skips: int = 16) -> Scheduler:
    """A cached 40-token prompt, then a long uncached prompt and a hit arrive in that order."""
    s = make(budget=16, order=order, skips=skips, seqs=1)
    s.add_request(req("warm", 40))
    drain(s)
    s.add_request(req("long", 200, base=5000))
    s.add_request(Request("hit", list(range(40)) + [9000, 9001], 2))
    return s


def test_fcfs_admits_in_arrival_order():
    s = cached_then_queue("fcfs")
    assert list(step(s)) == ["long"]


def test_prefix_hit_admits_the_cheapest_request_first():
    s = cached_then_queue("prefix_hit")
    first = step(s)
    assert list(first) == ["hit"] and first["hit"] == 42 - 40  # only the uncached tail runs
    drain(s)
    s.kv.check_no_leak()


def test_prefix_hit_resumes_a_preempted_request_before_cheaper_new_ones():
    kv = KVCacheManager(16, 4, enable_prefix_caching=False)
    s = Scheduler(kv, 64, 16, 4096, admission_order="prefix_hit")
    s.add_request(req("a", 30, 20))  # 50 tokens: 13 of the 16 blocks, alone
    s.add_request(req("b", 30, 20, base=1000))
    while not s.num_preemptions:  # a's decode outgrows the 16 blocks: b, the newer, goes
        step(s)
    assert [r.request_id for r in s.waiting] == ["b"]
    s.add_request(req("c", 2, 2, base=2000))  # far cheaper than b's recompute
    admitted = []
    for _ in range(200):
        admitted += [rid for rid in step(s) if rid not in admitted and rid != "a"]
        if not s.has_unfinished():
            break
    assert admitted == ["b", "c"]
    s.kv.check_no_leak()


def test_prefix_hit_passes_a_request_over_at_most_max_skips_times():
    s = make(budget=8, order="prefix_hit", skips=2, seqs=1)
    s.add_request(req("long", 30, base=5000))
    admitted = []
    for i in range(8):  # a new short request arrives every step
        s.add_request(req(f"s{i}", 2, max_tokens=1, base=100 * i))
        admitted += [rid for rid in step(s) if rid not in admitted]
        if "long" in admitted:
            break
    assert admitted.index("long") == 2  # passed over twice, then first


@settings(max_examples=40, deadline=None)
@given(
    lens=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    budget=st.integers(4, 48),
    chunk=st.one_of(st.none(), st.integers(1, 24)),
    order=st.sampled_from(["fcfs", "prefix_hit"]),
    shared=st.booleans(),
    partial=st.booleans(),
    split=st.one_of(st.none(), st.integers(1, 8)),
)
def test_random_workloads_finish_without_leaks(lens, budget, chunk, order, shared, partial, split):
    s = make(
        budget=budget, chunk=chunk, order=order, skips=3, blocks=40, seqs=4, partial=partial,
        split=split,
    )  # fmt: skip
    reqs = [
        req(f"r{i}", n, max_tokens=3, base=0 if shared else 1000 * i) for i, n in enumerate(lens)
    ]
    for r in reqs:
        s.add_request(r)
    steps = 0
    while s.has_unfinished():
        out = step(s)
        assert sum(out.values()) <= budget
        if chunk is not None:
            assert all(n <= max(chunk, 1) for rid, n in out.items())
        steps += 1
        assert steps < 2000, "a request starved"
    assert all(r.num_output_tokens == 3 for r in reqs)
    s.kv.check_no_leak()


def test_knobs_are_validated_and_reach_the_scheduler():
    with pytest.raises(ValueError, match="admission_order"):
        EngineConfig(admission_order="lifo")
    with pytest.raises(ValueError, match="max_prefill_chunk_tokens"):
        EngineConfig(max_prefill_chunk_tokens=0)
    with pytest.raises(ValueError, match="admission_order"):
        make(order="lifo")
    with pytest.raises(ValueError, match="tbt_target_ms"):
        EngineConfig(tbt_target_ms=-1)
    for name in (
        "num_reserved_decode_tokens",
        "num_kv_blocks",
        "max_model_len",
        "max_waiting_requests",
    ):
        with pytest.raises(ValueError, match=name):  # refused, not clamped to 1 or ignored
            EngineConfig(**{name: 0})
    assert EngineConfig(tbt_target_ms=0).scheduler_knobs()["tbt_target_s"] is None
    assert EngineConfig().scheduler_knobs()["tbt_target_s"] == 0.3
    knobs = EngineConfig(
        max_prefill_chunk_tokens=32, admission_order="prefix_hit"
    ).scheduler_knobs()
    s = Scheduler(KVCacheManager(8, 4), 64, 4, 100, **knobs)
    assert s.chunk == 32 and s.admission_order == "prefix_hit"


def test_step_cost_model_recovers_a_linear_cost():
    from xyserve.engine.step_cost import StepCostModel

    m = StepCostModel()
    m.observe(10, 0.02)
    assert m.fit() is None  # too few steps
    for n in (1, 64, 5, 300, 17, 128):
        m.observe(n, 0.01 + 0.001 * n)
    a, b = m.fit()
    assert a == pytest.approx(0.01) and b == pytest.approx(0.001)
    assert m.max_tokens(0.1) == 90
    same = StepCostModel()
    for _ in range(8):
        same.observe(32, 0.05)
    assert same.fit() is None  # one step size: no slope to fit


def test_median_step_cost_ignores_stalled_steps():
    """A few stalled steps do not move the line through each size's median, while they drag
    a least-squares fit over raw times far off."""
    from xyserve.engine.step_cost import MedianStepCost, StepCostModel

    robust, raw = MedianStepCost(window=8), StepCostModel(decay=1.0)
    for i in range(40):
        for n in (1, 5):
            t = 0.002 + 0.0002 * n
            if i % 10 == 3 and n == 1:  # another process held the core: +50 ms
                t += 0.05
            robust.observe(n, t)
            raw.observe(n, t)
    a, b = robust.fit()
    assert a == pytest.approx(0.002) and b == pytest.approx(0.0002)
    a_raw, b_raw = raw.line()
    assert b_raw < 0 and a_raw > 0.005  # the raw fit says more tokens cost less
    one = MedianStepCost(min_steps=2)
    one.observe(3, 0.01)
    one.observe(3, 0.02)
    assert one.line() is None  # one size: no slope
    # The window forgets: a size that got dearer is priced at its recent steps.
    w = MedianStepCost(window=3, min_steps=1)
    for t in (0.001, 0.001, 0.005, 0.005, 0.005):
        w.observe(1, t)
    w.observe(2, 0.006)
    assert w.line() == pytest.approx((0.004, 0.001))
    # So does the horizon: a size not seen lately drops out, and with it the line.
    h = MedianStepCost(horizon=4, min_steps=1)
    h.observe(5, 0.003)
    for _ in range(3):
        h.observe(1, 0.002)
    assert h.line() == pytest.approx((0.00175, 0.00025))
    h.observe(1, 0.002)
    assert h.line() is None and 5 not in h.times


def test_median_step_cost_reuses_medians_only_while_they_hold():
    """Asked after every step, the line (kept medians where a size got no new step and lost
    none to the horizon) equals a fresh model's over the same steps."""
    import random

    from xyserve.engine.step_cost import MedianStepCost

    rng = random.Random(0)
    steps: list[tuple[int, float]] = []
    kept = MedianStepCost(window=5, horizon=12, min_steps=1)
    for _ in range(300):
        n = rng.choice((1, 2, 5, 9)) if rng.random() < 0.9 else 33  # 33: rare, drops out
        steps.append((n, rng.random()))
        kept.observe(*steps[-1])
        fresh = MedianStepCost(window=5, horizon=12, min_steps=1)
        for step in steps:
            fresh.observe(*step)
        want = fresh.line()
        for _ in range(2):  # asked twice between steps: the same
            got = kept.line()
            assert (got is None) == (want is None)
            assert got is None or got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_median_step_cost_counts_a_size_once_it_has_enough_steps():
    """With ``min_size_steps`` 3, a size seen once (a slow step: another process held the
    core) is no point of the line until it has three steps, so it cannot tilt the line."""
    from xyserve.engine.step_cost import MedianStepCost

    tilted, robust = MedianStepCost(min_steps=1), MedianStepCost(min_steps=1, min_size_steps=3)
    for model in (tilted, robust):
        for _ in range(10):
            model.observe(1, 0.0021)
            model.observe(5, 0.0025)
        model.observe(9, 0.02)  # once, stalled
    a, b = robust.line()
    assert a == pytest.approx(0.002) and b == pytest.approx(0.0001)
    a_t, b_t = tilted.line()
    assert a_t < 0.0015 and b_t > 0.001  # the stall made every token look ten times dearer
    for t in (0.0029, 0.0029):
        robust.observe(9, t)
    assert robust.line() == pytest.approx((0.002, 0.0001))  # three steps: the median, 2.9 ms


def test_median_step_cost_refits_every_so_many_steps():
    """With ``refit_every`` 4 the line is the exact one as of the last refit: refitted four
    observations after the one before, and, while it has none, at every observation of a size
    that was not a point of the last fit (steps of the points' sizes cannot make a line)."""
    import random

    from xyserve.engine.step_cost import MedianStepCost

    rng = random.Random(1)
    lazy = MedianStepCost(window=5, horizon=12, min_steps=3, refit_every=4, min_size_steps=2)
    exact = MedianStepCost(window=5, horizon=12, min_steps=3, min_size_steps=2)
    lines, points = {}, {}
    new_size = False  # a size that was not a point of the last refit, observed since
    fitted = None  # the observation count at the lazy model's last refit
    refits = 0
    done = []  # the lazy model's refits
    fit = lazy._line
    lazy._line = lambda: done.append(lazy.n) or fit()
    sizes = [1] * 30 + [rng.choice((1, 2, 5)) for _ in range(170)]  # one size at first: no line
    for n, size in enumerate(sizes, start=1):
        step = (size, 0.001 * size + rng.random() * 1e-4)
        lazy.observe(*step)
        exact.observe(*step)
        lines[n] = exact.line()
        # the sizes with min_size_steps steps within the horizon (none before min_steps)
        points[n] = {x for x, m in exact._medians.items() if m[2] >= 2} if n >= 3 else set()
        new_size = new_size or size not in points.get(fitted, set())
        if fitted is None or n - fitted >= 4 or (lines[fitted] is None and new_size):
            fitted, refits, new_size = n, refits + 1, False
        for _ in range(2):  # asked twice between steps: the same
            got, want = lazy.line(), lines[fitted]
            assert (got is None) == (want is None)
            assert got is None or got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert lines[30] is None and lines[40] is not None
    assert len(done) == refits
    assert 45 < refits < 60
    # a new size, then one of the last fit's, before the line is asked: the line is there
    late = MedianStepCost(window=5, horizon=12, min_steps=3, refit_every=100)
    for size in (1, 1, 1):
        late.observe(size, 0.001 * size)
        assert late.line() is None
    late.observe(2, 0.002)
    late.observe(1, 0.001)
    assert late.line() == pytest.approx((0.0, 0.001), abs=1e-12)


class StepClock:
    """Every step lasts 10 ms + 1 ms per token, as seen by the scheduler's clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_tbt_target_cuts_prefill_next_to_decodes_to_fit_the_target():
    clock = StepClock()
    kv = KVCacheManager(512, 4)
    s = Scheduler(kv, 256, 16, 4096, tbt_target_s=0.1, min_prefill_tokens=8, clock=clock)
    sizes = []

    def timed_step():
        out = s.schedule()
        clock.t += 0.01 + 0.001 * out.num_tokens
        s.update(out, {x.request.request_id: [5] for x in out.stages if x.samples})
        return {x.request.request_id: x.num_tokens for x in out.stages}

    for i in range(4):  # steps of varied sizes teach the model
        s.add_request(req(f"d{i}", 20 + 30 * i, max_tokens=200, base=1000 * i))
        sizes.append(sum(timed_step().values()))
    s.add_request(req("long", 500, base=9000))
    step_tokens = timed_step()
    # 100 ms target = 10 ms + 90 tokens: the decodes (4) and at most 86 prefill tokens
    assert step_tokens["long"] == 90 - 4
    assert sum(step_tokens.values()) == 90
    # with no decode waiting, the whole budget goes to prefill
    s2 = Scheduler(KVCacheManager(512, 4), 256, 16, 4096, tbt_target_s=0.1, clock=clock)
    s2.cost = s.cost
    s2.add_request(req("solo", 500))
    assert s2.schedule().num_tokens == 256


def test_an_unattainable_tbt_target_does_not_throttle_prefill():
    from xyserve.engine.step_cost import StepCostModel

    slow = StepCostModel()
    for n in (1, 8, 64, 128):
        slow.observe(n, 0.5 + 0.01 * n)  # even one decode takes 510 ms
    slow.observe = lambda tokens, seconds: None  # keep the model fixed: no real timings
    s = Scheduler(KVCacheManager(512, 4), 256, 16, 4096, tbt_target_s=0.3)
    s.cost = slow
    s.add_request(req("d", 4, max_tokens=50))
    step(s)
    s.add_request(req("long", 500, base=9000))
    assert step(s) == {"long": 255, "d": 1}


@pytest.mark.parametrize(
    "knob",
    [
        {"tbt_target_ms": 200},
        {"max_prefill_chunk_tokens": 32},
        {"partial_prefill_admission": False},
        {"admission_max_skips": 2},
        {"num_reserved_decode_tokens": 8},
        {"split_prefill_decode": "off"},
    ],
)
def test_hybrid_knobs_are_refused_with_the_baseline_policy(knob):
    """The baseline policy would ignore them: a knob set with it is an error naming the knob."""
    with pytest.raises(ValueError, match=next(iter(knob))):
        EngineConfig(scheduler_policy="baseline", **knob)
    EngineConfig(scheduler_policy="hybrid", **knob)  # accepted where it applies
    EngineConfig(scheduler_policy="baseline")  # the defaults alone are fine


def test_baseline_accepts_the_knob_values_that_describe_it():
    """FCFS admission and no step-time target are what the baseline policy does anyway."""
    EngineConfig(scheduler_policy="baseline", admission_order="fcfs", tbt_target_ms=0)


def test_split_steps_alternate_prefill_and_decode_steps():
    """With split steps, prefill work runs alone and the decodes it delayed run alone next;
    without, they share one step."""
    for split, want in ((None, [{"a": 1, "b": 20}]), (4, [{"b": 20}, {"a": 1, "b": 1}])):
        s = make(budget=64, split=split)
        s.add_request(req("a", 10, max_tokens=8))
        assert step(s) == {"a": 10}
        s.add_request(req("b", 20, max_tokens=8, base=1000))
        assert [step(s) for _ in want] == want
    # a chunked prompt: chunk, decodes, chunk, decodes, ... (the decodes wait one step each)
    s = make(budget=64, split=4)
    s.add_request(req("a", 10, max_tokens=8))
    step(s)
    s.add_request(req("long", 100, max_tokens=3, base=1000))
    got = [step(s) for _ in range(5)]
    # (a prefill-only step keeps no reserve for the decodes: they have the next step)
    assert got == [{"long": 64}, {"a": 1}, {"long": 36}, {"a": 1, "long": 1}, {"a": 1, "long": 1}]
    drain(s)
    s.kv.check_no_leak()


def test_split_steps_only_where_the_decodes_are_few():
    """More decode tokens waiting than ``split_decode_rows``: one mixed step, as without it."""
    s = make(budget=64, split=2)
    for i in range(3):
        s.add_request(req(f"d{i}", 4, max_tokens=8, base=100 * i))
    assert step(s) == {"d0": 4, "d1": 4, "d2": 4}
    s.add_request(req("p", 20, max_tokens=2, base=1000))
    assert step(s) == {"p": 20, "d0": 1, "d1": 1, "d2": 1}


def test_split_prefill_decode_reaches_the_engines_scheduler(tmp_path):
    """auto follows the CPU fused decode call of a float32 model (its row limit, or off
    without it); on splits any step; off and the baseline policy never; a bad mode is
    refused."""
    from xyserve.engine.engine import LLMEngine

    with pytest.raises(ValueError, match="split_prefill_decode"):
        EngineConfig(split_prefill_decode="always")
    with pytest.raises(ValueError, match="split_prefill_decode"):
        EngineConfig(scheduler_policy="baseline", split_prefill_decode="off")
    with pytest.raises(ValueError, match="split_decode_rows"):
        make(split=0)
    assert EngineConfig().split_decode_rows(8) == 8  # auto: the fused call's rows
    assert EngineConfig().split_decode_rows(None) is None  # none: a GPU, the simulation
    assert EngineConfig(split_prefill_decode="on").split_decode_rows(None) == 512

    def rows(**kw):
        e = LLMEngine(EngineConfig(model="xy-tiny", num_kv_blocks=64, **kw))
        fused = e.runner.fused
        return e.scheduler.split_decode_rows, (fused.max_rows if fused is not None else None)

    got, fused = rows(cpu_fused_decode="on")
    assert got == fused == 1
    assert rows(cpu_fused_decode="off")[0] is None
    assert rows(cpu_fused_decode="off", split_prefill_decode="on")[0] == 512
    assert rows(cpu_fused_decode="on", split_prefill_decode="off")[0] is None
    assert rows(cpu_fused_decode="on", scheduler_policy="baseline")[0] is None
    # bfloat16: the fused call runs its decodes, but auto keeps mixed steps (on AMX the eager
    # GEMMs take decodes beside a prefill chunk for less); on still splits
    got, fused = rows(cpu_fused_decode="on", dtype="bfloat16")
    assert got is None and fused == 1
    assert rows(cpu_fused_decode="on", dtype="bfloat16", split_prefill_decode="on")[0] == 512

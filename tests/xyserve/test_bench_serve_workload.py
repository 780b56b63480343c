"""bench serve's workload files and arrival processes: validation and seeded determinism."""

from __future__ import annotations

import json
import statistics

import pytest

from xyserve.bench import arrivals as arr
from xyserve.bench import serve_workload as wl

PACKAGED = ["sharegpt", "sonnet_prefill_heavy", "sonnet_decode_heavy", "shared_prefix", "agentic"]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_workloads_validate_and_sample(name):
    work = wl.load(name)
    reqs = wl.sample(work, 40, vocab_size=1000, seed=1, max_model_len=2048)
    assert len(reqs) == 40
    for r in reqs:
        assert 1 <= len(r.prompt_ids) and len(r.prompt_ids) + r.output_len <= 2048
        assert all(wl.FIRST_TOKEN_ID <= t < 1000 for t in r.prompt_ids)
        assert work.output_len.rows[0][0] <= r.output_len <= work.output_len.max


def test_sharegpt_means_follow_the_cited_statistics():
    work = wl.load("sharegpt")
    assert work.prompt_len.mean == pytest.approx(161.31, rel=0.05)
    assert work.output_len.mean == pytest.approx(337.99, rel=0.05)
    reqs = wl.sample(work, 2000, 32000, seed=0)
    assert statistics.mean(r.output_len for r in reqs) == pytest.approx(337.99, rel=0.08)


def test_sonnet_shapes():
    for name, out in (("sonnet_prefill_heavy", 16), ("sonnet_decode_heavy", 256)):
        reqs = wl.sample(wl.load(name), 200, 32000, seed=0)
        assert statistics.mean(len(r.prompt_ids) for r in reqs) == pytest.approx(462, rel=0.03)
        assert {r.output_len for r in reqs} == {out}


def test_same_seed_same_requests_other_seed_others():
    work = wl.load("shared_prefix")
    a = wl.sample(work, 30, 500, seed=3)
    b = wl.sample(work, 30, 500, seed=3)
    c = wl.sample(work, 30, 500, seed=4)
    assert [(r.prompt_ids, r.output_len) for r in a] == [(r.prompt_ids, r.output_len) for r in b]
    assert [r.prompt_ids for r in a] != [r.prompt_ids for r in c]


def test_multi_turn_resends_history_and_keeps_turn_order():
    reqs = wl.sample(wl.load("shared_prefix"), 60, 5000, seed=0)
    by_session: dict[int, list[wl.BenchRequest]] = {}
    for r in reqs:
        by_session.setdefault(r.session, []).append(r)
    assert any(len(turns) > 1 for turns in by_session.values())
    for turns in by_session.values():
        assert [t.turn for t in turns] == list(range(len(turns)))
        for prev, nxt in zip(turns, turns[1:]):
            assert nxt.prompt_ids[: len(prev.prompt_ids)] == prev.prompt_ids
    # requests of one prefix group share the system prompt
    groups: dict[int, list[list[int]]] = {}
    for r in reqs:
        groups.setdefault(r.prefix_group, []).append(r.prompt_ids)
    for prompts in groups.values():
        assert len({tuple(p[:256]) for p in prompts}) == 1


def test_prompts_are_clipped_to_the_model_length():
    reqs = wl.sample(wl.load("agentic"), 30, 1000, seed=0, max_model_len=600)
    assert all(len(r.prompt_ids) + r.output_len <= 600 for r in reqs)
    assert any(r.extra["clipped"] for r in reqs)


BASE = {
    "schema": wl.SCHEMA,
    "name": "w",
    "description": "d",
    "prompt_len": [[1, 4, 1]],
    "output_len": [[1, 2, 1]],
}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"schema": "nope"}, "field 'schema' must be"),
        ({"prompt_len": []}, "prompt_len: must be a non-empty list"),
        ({"prompt_len": [[5, 4, 1]]}, "prompt_len[0]: needs 1 <= lo <= hi"),
        ({"output_len": [[1, 2, -1]]}, "output_len[0]: weight must be a positive number"),
        ({"output_len": [[1, 2.5, 1]]}, "output_len[0]: must be [lo, hi, weight]"),
        ({"shared_prefix": {"num_prefixes": 0, "len": [[1, 2, 1]]}}, "num_prefixes"),
        ({"multi_turn": {"turns": [3, 1]}}, "multi_turn.turns"),
        ({"arrival": {"burstiness": 0}}, "arrival.burstiness"),
        ({"extra_field": 1}, "unknown fields ['extra_field']"),
        ({"name": ""}, "'name' must be a non-empty string"),
        # a misspelled key inside a part was dropped without a word
        ({"arrival": {"burstyness": 0.5}}, "unknown fields in arrival: ['burstyness']"),
        (
            {"shared_prefix": {"num_prefixes": 2, "len": [[1, 2, 1]], "lenght": 1}},
            "unknown fields in shared_prefix: ['lenght']",
        ),
        ({"multi_turn": {"turns": [1, 3], "think_s": 2}}, "unknown fields in multi_turn"),
        ({"multi_turn": {"turns": [True, 3]}}, "multi_turn.turns"),
    ],
)
def test_invalid_workloads_get_clear_errors(patch, message):
    with pytest.raises(wl.WorkloadError) as e:
        wl.parse({**BASE, **patch}, "w.json")
    assert message in str(e.value) and "w.json" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(wl.WorkloadError, match="no such file"):
        wl.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(wl.WorkloadError, match="not valid JSON"):
        wl.load(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE))
    assert wl.load(good).name == "w"


def test_gamma_arrivals_are_seeded_with_the_right_mean_and_burstiness():
    a = arr.gamma_arrivals(4000, rate=4.0, burstiness=1.0, seed=1)
    assert a == arr.gamma_arrivals(4000, rate=4.0, burstiness=1.0, seed=1)
    assert a != arr.gamma_arrivals(4000, rate=4.0, burstiness=1.0, seed=2)
    gaps = [y - x for x, y in zip([0.0] + a, a)]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.05)
    # coefficient of variation: 1 for Poisson, 1/sqrt(shape) for gamma
    for shape in (1.0, 0.25):
        g = arr.gamma_arrivals(4000, 4.0, shape, seed=1)
        gaps = [y - x for x, y in zip([0.0] + g, g)]
        cv = statistics.pstdev(gaps) / statistics.mean(gaps)
        assert cv == pytest.approx(shape**-0.5, rel=0.1)
    assert arr.gamma_arrivals(3, float("inf")) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="positive"):
        arr.gamma_arrivals(3, 0.0)


def test_trace_arrivals_follow_the_segments():
    trace = arr.load_trace("qps_trace_dynamic")
    times = arr.trace_arrivals(3000, trace, seed=0, scale=2.0)
    assert times == arr.trace_arrivals(3000, trace, seed=0, scale=2.0)
    assert times == sorted(times)
    cycle = trace.duration_s
    # count arrivals in each segment over the repeated cycles: rate x scale x duration x cycles
    cycles = int(times[-1] // cycle)
    assert cycles >= 3
    start = 0.0
    for seg in trace.segments:
        n = sum(
            1 for t in times if t < cycles * cycle and start <= t % cycle < start + seg.duration_s
        )
        expect = seg.rate * 2.0 * seg.duration_s * cycles
        assert n == pytest.approx(expect, rel=0.2)
        start += seg.duration_s


def test_invalid_traces():
    with pytest.raises(arr.TraceError, match="schema"):
        arr.parse_trace({"schema": "x"})
    base = {"schema": arr.TRACE_SCHEMA, "segments": [{"duration_s": 1, "rate": 0}]}
    with pytest.raises(arr.TraceError, match="every segment has rate 0"):
        arr.parse_trace(base)
    base["segments"] = [{"duration_s": -1, "rate": 1}]
    with pytest.raises(arr.TraceError, match=r"segments\[0\]"):
        arr.parse_trace(base)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_trace_scale_that_is_not_a_positive_number_is_refused(scale):
    """A NaN scale drew no arrival and looped for ever; inf failed inside random.gammavariate."""
    trace = arr.load_trace("qps_trace_dynamic")
    with pytest.raises(ValueError, match="trace scale"):
        arr.trace_arrivals(3, trace, scale=scale)


def test_a_trace_with_a_misspelled_field_is_refused():
    """A trace's "burstyness" left the trace Poisson without a word; a segment's "rate_qps"
    was reported as a missing rate only by chance of the other checks."""
    base = {"schema": arr.TRACE_SCHEMA, "segments": [{"duration_s": 1, "rate": 1}]}
    with pytest.raises(arr.TraceError, match=r"unknown fields \['burstyness'\]"):
        arr.parse_trace({**base, "burstyness": 0.5}, "t.json")
    seg = {"duration_s": 1, "rate": 1, "ramp": True}
    with pytest.raises(arr.TraceError, match=r"segments\[0\]: unknown fields \['ramp'\]"):
        arr.parse_trace({**base, "segments": [seg]}, "t.json")
    assert arr.parse_trace({**base, "name": "n", "description": "d"}).name == "n"


def test_arrivals_and_requests_of_one_seed_draw_different_numbers():
    """Both drew from random.Random(seed): the first Poisson gap was -log(1 - u) / rate for
    the very u that picked the first request's lengths, so gaps and lengths were correlated."""
    import math
    import random

    for seed in range(20):
        u = random.Random(seed).random()  # the first number wl.sample draws
        gap = arr.gamma_arrivals(1, rate=1.0, burstiness=1.0, seed=seed)[0]
        assert not math.isclose(gap, -math.log(1.0 - u))

"""The scheduling core, without torch: token budget, chunking, reserve, policies, preemption."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.scheduler import Scheduler


def make(policy="hybrid", budget=64, blocks=256, bs=4, seqs=16, reserve=None, cache=True):
    kv = KVCacheManager(blocks, bs, enable_prefix_caching=cache)
    return Scheduler(kv, budget, seqs, 4096, policy=policy, num_reserved_decode_tokens=reserve)


def req(rid: str, n: int, max_tokens: int = 4, base: int = 0) -> Request:
    return Request(rid, [base + i for i in range(n)], max_tokens)


def run_step(s: Scheduler, token: int = 7):
    out = s.schedule()
    sampled = {st.request.request_id: [token] for st in out.stages if st.samples}
    s.update(out, sampled)
    for st_ in out.stages:
        r = st_.request
        if r.num_output_tokens >= r.max_tokens and not r.is_finished:
            s.finish_request(r.request_id, RequestStatus.FINISHED_LENGTH)
    return out


def test_core_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import xyserve.engine.scheduler, xyserve.engine.kv_cache, xyserve.plan.token_table\n"
        "import xyserve.sampling_params\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_budget_is_respected_and_long_prompt_is_chunked():
    s = make(budget=32)
    s.add_request(req("a", 100))
    sizes = []
    while s.has_unfinished():
        out = run_step(s)
        assert out.num_tokens <= 32
        sizes.append(out.num_tokens)
    assert sizes[:3] == [32, 32, 32]  # the prompt is chunked to the budget
    assert s.kv.num_free_blocks == s.kv.num_blocks


def test_hybrid_mixes_prefill_with_reserved_decodes():
    s = make(budget=32, reserve=4)
    for i in range(3):
        s.add_request(req(f"d{i}", 5, max_tokens=50, base=100 * i))
    run_step(s)  # the three short prompts prefill together
    s.add_request(req("long", 200, base=1000))
    out = s.schedule()
    kinds = {st.request.request_id: st.num_tokens for st in out.stages}
    assert kinds["long"] == 32 - 3  # prefill takes all but the decodes' tokens
    assert all(kinds[f"d{i}"] == 1 for i in range(3))  # decodes run in the same step


def test_reserve_limits_prefill_share_when_many_decodes():
    s = make(budget=32, reserve=8, seqs=64)
    for i in range(20):
        s.add_request(req(f"d{i}", 1, max_tokens=100, base=10 * i))
    run_step(s)  # 20 one-token prompts
    s.add_request(req("long", 500, base=5000))
    out = s.schedule()
    n_long = sum(st.num_tokens for st in out.stages if st.request.request_id == "long")
    n_dec = sum(st.num_tokens for st in out.stages if st.request.request_id != "long")
    assert n_long == 32 - 8 and n_dec == 8


def test_baseline_runs_whole_prefills_alone_then_decodes():
    s = make(policy="baseline", budget=32)
    s.add_request(req("a", 10, max_tokens=3))
    run_step(s)
    s.add_request(req("b", 100, max_tokens=3, base=500))
    out = s.schedule()
    # b's whole prompt runs alone, beyond the budget, with no decode of a
    assert [(x.request.request_id, x.num_tokens) for x in out.stages] == [("b", 100)]
    s.update(out, {"b": [1]})
    out = s.schedule()
    assert sorted(x.request.request_id for x in out.stages) == ["a", "b"]
    assert all(x.num_tokens == 1 for x in out.stages)


def test_max_num_seqs_bounds_concurrency():
    s = make(seqs=2)
    for i in range(5):
        s.add_request(req(f"r{i}", 3, base=10 * i))
    out = s.schedule()
    assert len(out.stages) == 2 and s.num_waiting == 3


def test_preemption_recomputes_and_loses_nothing():
    s = make(budget=64, blocks=12, bs=4, cache=False)
    for i in range(4):
        s.add_request(req(f"r{i}", 8, max_tokens=12, base=100 * i))
    finished = {}
    steps = 0
    while s.has_unfinished():
        out = run_step(s)
        for st_ in out.stages:
            if st_.request.is_finished:
                finished[st_.request.request_id] = st_.request
        steps += 1
        assert steps < 500
    assert s.num_preemptions > 0
    assert sorted(finished) == [f"r{i}" for i in range(4)]
    assert all(r.num_output_tokens == 12 for r in finished.values())
    s.kv.check_no_leak()


@pytest.mark.parametrize("order", ["fcfs", "prefix_hit"])
def test_preemption_never_takes_the_oldest_running_request(order):
    """Under K/V pressure the latest admitted request is the victim, so the oldest running one
    always progresses; every request still finishes (the cache holds any one request whole)."""
    kv = KVCacheManager(10, 4, enable_prefix_caching=True)  # 40 slots; one request needs 24
    s = Scheduler(kv, 64, 8, 4096, admission_order=order)
    reqs = [req(f"r{i}", 8, max_tokens=16, base=100 * i) for i in range(5)]
    for r in reqs:
        s.add_request(r)
    finish_order = []
    for _ in range(600):
        if not s.has_unfinished():
            break
        oldest = s.running[0] if s.running else None
        out = run_step(s)
        assert oldest is None or oldest not in out.preempted
        finish_order += [st.request.request_id for st in out.stages if st.request.is_finished]
    assert not s.has_unfinished() and s.num_preemptions > 0
    assert sorted(finish_order) == [r.request_id for r in reqs]
    s.kv.check_no_leak()


def test_speculative_tokens_are_scheduled_and_accounted():
    s = make(budget=64)
    r = req("a", 6, max_tokens=20)
    s.add_request(r)
    run_step(s)
    r.spec_token_ids = [11, 12, 13]
    out = s.schedule()
    (stage,) = out.stages
    assert stage.num_tokens == 4 and stage.num_spec_tokens == 3 and stage.samples
    s.update(out, {"a": [99]}, num_accepted={"a": 2})
    assert r.output_token_ids == [7, 11, 12, 99]
    assert r.num_computed_tokens == r.num_tokens - 1


@settings(max_examples=40, deadline=None)
@given(
    lens=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    outs=st.integers(1, 6),
    budget=st.integers(2, 48),
    blocks=st.integers(12, 40),
    policy=st.sampled_from(["hybrid", "baseline"]),
    shared=st.booleans(),
)
def test_random_workloads_finish_without_starvation_or_leaks(
    lens, outs, budget, blocks, policy, shared
):
    s = make(policy=policy, budget=budget, blocks=blocks, bs=4, seqs=8)
    reqs = []
    for i, n in enumerate(lens):
        base = 0 if shared else 1000 * i  # shared: prompts are prefixes of one another
        reqs.append(req(f"r{i}", n, max_tokens=outs, base=base))
        s.add_request(reqs[-1])
    steps = 0
    while s.has_unfinished():
        out = run_step(s, token=3)
        if policy == "hybrid":
            assert out.num_tokens <= budget
        steps += 1
        assert steps < 2000, "a request starved"
    assert all(r.num_output_tokens == outs for r in reqs)
    s.kv.check_no_leak()


def test_bad_inputs():
    s = make()
    with pytest.raises(ValueError):
        Scheduler(s.kv, 8, 8, 100, policy="nope")
    s.add_request(req("a", 3))
    with pytest.raises(ValueError, match="duplicate"):
        s.add_request(req("a", 3))
    with pytest.raises(ValueError, match="max_model_len"):
        s.add_request(req("b", 5000))


@pytest.mark.parametrize("prompt_b, budget", [(25, 8), (22, 6), (28, 12)])
def test_a_running_prefill_never_makes_the_oldest_decode_preempt_itself(prompt_b, budget):
    """A newer prompt still being chunked leaves the blocks that older decodes need: short of
    blocks, it preempts itself, not the oldest running request."""
    kv = KVCacheManager(8, 4, enable_prefix_caching=False)  # each request fits alone
    s = Scheduler(kv, budget, 8, 4096, num_reserved_decode_tokens=1, admission_order="fcfs")
    s.add_request(req("a", 2, max_tokens=24))
    s.add_request(req("b", prompt_b, max_tokens=2, base=100))
    for _ in range(300):
        if not s.has_unfinished():
            break
        oldest = s.running[0] if s.running else None
        out = run_step(s)
        assert oldest is None or oldest not in out.preempted
    assert not s.has_unfinished()  # (each case preempts the oldest without the reservation)
    s.kv.check_no_leak()


@pytest.mark.parametrize("policy", ["hybrid", "baseline"])
def test_a_verify_larger_than_the_budget_is_trimmed_not_stalled(policy):
    """Proposals beyond the budget are dropped (``adaptive: false`` proposes
    ``num_speculative_tokens`` whatever the budget): the stage still verifies the rest and
    samples. The baseline policy once left such a decode out of every step, and with it the
    whole engine: ``schedule`` returned nothing forever while the request was unfinished."""
    s = make(policy=policy, budget=4)
    r = req("a", 3, max_tokens=20)
    s.add_request(r)
    run_step(s)
    r.spec_token_ids = [11, 12, 13, 14, 15]
    out = s.schedule()
    (stage,) = out.stages
    assert stage.num_tokens == 4 and stage.num_spec_tokens == 3 and stage.samples
    assert r.spec_token_ids == [11, 12, 13]


@pytest.mark.parametrize("order", ["fcfs", "prefix_hit"])
def test_requests_sharing_a_prompt_compute_it_once(order):
    """n samples of one prompt (or requests arriving with one system prompt) were admitted side
    by side, each computing the whole shared prompt: blocks are matchable only once computed.
    Now the others wait for the first one's blocks and compute only their last token; a request with a prompt of its own is admitted past them, in the same step."""
    kv = KVCacheManager(256, 4, enable_prefix_caching=True)
    s = Scheduler(kv, 256, 16, 4096, admission_order=order)
    for i in range(4):
        s.add_request(req(f"s{i}", 30, max_tokens=3))  # 7 whole blocks and 2 tokens
    s.add_request(req("other", 10, max_tokens=3, base=500))
    out = run_step(s)
    assert sorted((st.request.request_id, st.num_tokens) for st in out.stages) == [
        ("other", 10),
        ("s0", 30),
    ]
    out = run_step(s)  # s0's 29 tokens are matched: whole blocks and a copied partial one
    admitted = {st.request.request_id: st for st in out.stages if st.context_len == 29}
    assert sorted(admitted) == ["s1", "s2", "s3"]
    assert all(st.num_tokens == 1 for st in admitted.values())
    while s.has_unfinished():
        run_step(s)
    s.kv.check_no_leak()


def test_a_shared_prompt_is_computed_again_without_the_prefix_cache():
    s = make(budget=256, cache=False)
    for i in range(2):
        s.add_request(req(f"s{i}", 30))
    out = run_step(s)
    assert [st.num_tokens for st in out.stages] == [30, 30]


def test_a_verify_short_of_blocks_drops_proposals_rather_than_preempt_itself():
    """A decoding request whose proposals need a block the cache does not have, while its real
    token fits the block it holds: it preempted itself (its K/V lost, to be recomputed) for
    tokens it only might have kept; here its proposals had taken the step's whole budget, so
    the step ran nothing at all (found by test_feature_soak). Proposals are optional: now it
    drops as many as it takes to fit rather than preempting itself."""
    kv = KVCacheManager(2, 6, enable_prefix_caching=False)  # a block each, none to spare
    s = Scheduler(kv, 4, 8, 4096, admission_order="fcfs")
    a, b = req("a", 2, max_tokens=20), req("b", 2, max_tokens=20, base=100)
    s.add_request(a)
    s.add_request(b)
    run_step(s)  # both prompts
    run_step(s)  # a decode each: 4 tokens, 3 computed; the decodes' turn goes to b next
    b.spec_token_ids = [11, 12, 13]  # b's stage: positions 3 to 6, the budget; 6 needs a block
    out = s.schedule()
    assert not out.preempted and b in s.running
    assert [(st.request.request_id, st.num_tokens, st.num_spec_tokens) for st in out.stages] == [
        ("b", 3, 2)  # the proposals that fit its block; a's turn is next step
    ]
    assert b.spec_token_ids == [11, 12]
    s.update(out, {"b": [99]}, num_accepted={"b": 1})
    assert b.output_token_ids == [7, 7, 11, 99] and b.num_computed_tokens == 5


def test_a_schedule_whose_requests_were_all_preempted_schedules_the_rest():
    """Split steps: prefill work and decodes take turns. When the decodes' turn came and its
    one decode, short of a block, had to preempt itself (the other request, older, is never
    the victim), the step ran nothing, though the older request's prefill could run in the
    blocks just freed (the server's engine thread then sleeps 5 ms; found by
    test_feature_soak). A schedule whose stages' requests were all preempted now schedules
    again, without them."""
    kv = KVCacheManager(9, 4, enable_prefix_caching=False)
    s = Scheduler(
        kv, 4, 8, 4096, max_prefill_chunk_tokens=1, admission_order="fcfs", split_decode_rows=4
    )
    s.add_request(req("p", 19, max_tokens=4))
    s.add_request(req("d", 1, max_tokens=30, base=100))
    preempted = []
    for _ in range(300):
        if not s.has_unfinished():
            break
        out = run_step(s)
        assert out.stages, "a step with work left ran nothing"
        preempted += [r.request_id for r in out.preempted]
    assert not s.has_unfinished() and "d" in preempted
    s.kv.check_no_leak()

"""vLLM's priority scheduling policy: the scheduling core without torch, then the engine,
the offline API and the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import Server, run_server

from xyserve.config import EngineConfig
from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.scheduler import Scheduler


def _sched(blocks=256, bs=4, seqs=16, budget=64, order="fcfs", policy="priority", base="hybrid"):
    kv = KVCacheManager(blocks, bs, enable_prefix_caching=True)
    return Scheduler(
        kv, budget, seqs, 4096, policy=base, admission_order=order, scheduling_policy=policy
    )


def _req(rid: str, n: int, priority: int = 0, max_tokens: int = 4, base: int = 0) -> Request:
    return Request(rid, [base + i for i in range(n)], max_tokens, priority=priority)


def _step(s: Scheduler) -> tuple[list[str], list[str]]:
    """One step: (ids finished, ids preempted)."""
    out = s.schedule()
    s.update(out, {g.request.request_id: [7] for g in out.stages if g.samples})
    done = []
    for stage in out.stages:
        r = stage.request
        if r.num_output_tokens >= r.max_tokens and not r.is_finished:
            s.finish_request(r.request_id, RequestStatus.FINISHED_LENGTH)
            done.append(r.request_id)
    return done, [r.request_id for r in out.preempted]


def _finish_order(s: Scheduler, limit: int = 1000) -> list[str]:
    order = []
    for _ in range(limit):
        if not s.has_unfinished():
            return order
        order += _step(s)[0]
    raise AssertionError("requests did not finish")


@pytest.mark.parametrize("order", ["fcfs", "prefix_hit"])
@pytest.mark.parametrize("base", ["hybrid", "baseline"])
def test_admission_takes_the_best_class_first(order, base):
    """One sequence at a time: requests run by priority, FCFS within a class."""
    s = _sched(seqs=1, order=order, base=base)
    for rid, p in [("low1", 5), ("mid", 1), ("low2", 5), ("top", -3), ("mid2", 1)]:
        s.add_request(_req(rid, 8, p, base=100 * len(s.requests)))
    assert _finish_order(s) == ["top", "mid", "mid2", "low1", "low2"]
    s.kv.check_no_leak()


def test_prefix_hit_reorders_within_a_class_only():
    """A lower-priority request whose prompt is cached (cheap to start) does not pass a
    higher-priority one; within a class, prefix_hit still takes it first."""
    for low, first in ((5, "high"), (0, "cheap")):
        s = _sched(seqs=1, order="prefix_hit")
        s.add_request(_req("warm", 16))
        _finish_order(s)  # its prompt's blocks stay in the prefix cache
        s.add_request(_req("high", 16, 0, base=500))
        s.add_request(_req("cheap", 16, low))
        assert _finish_order(s)[0] == first


def test_fcfs_keeps_arrival_order():
    """Under fcfs the queue is arrival order (the engine refuses a priority there: below)."""
    s = _sched(seqs=1, policy="fcfs")
    for rid in ("a", "b", "c"):
        s.add_request(_req(rid, 8, base=100 * len(s.requests)))
    assert _finish_order(s) == ["a", "b", "c"]


def test_a_request_short_of_blocks_preempts_the_lowest_class_first():
    """Under K/V pressure the victim is the lowest priority's newest request, even when it is
    older than the higher-priority ones; under fcfs it would be the newest."""
    for policy, victim in (("priority", "old_low"), ("fcfs", "new_high")):
        s = _sched(blocks=10, bs=4, budget=64, policy=policy)  # 40 slots
        s.add_request(_req("old_low", 8, 0 if policy == "fcfs" else 9, max_tokens=16, base=0))
        _step(s)  # old_low runs first, alone
        s.add_request(_req("new_high", 8, 0, max_tokens=16, base=500))
        preempted = []
        for _ in range(200):
            if not s.has_unfinished():
                break
            preempted += _step(s)[1]
        assert preempted and preempted[0] == victim, (policy, preempted)
        assert not s.has_unfinished()
        s.kv.check_no_leak()


def test_a_preempted_request_resumes_at_the_head_of_its_class():
    from xyserve.engine.scheduler import SchedulerOutput

    s = _sched(seqs=4)
    for rid, p, base in (("a", 1, 0), ("b", 1, 50), ("c", 0, 90)):
        s.add_request(_req(rid, 4, p, base=base))
    _step(s)
    assert {r.request_id for r in s.running} == {"a", "b", "c"}
    assert [r.request_id for r in s.running] == ["c", "a", "b"]  # seniority: class, then age
    s.add_request(_req("d", 4, 1, base=200))
    s._preempt(s.requests["b"], SchedulerOutput())
    s.add_request(_req("e", 4, 0, base=300))
    assert [r.request_id for r in s.waiting] == ["e", "b", "d"]


@settings(max_examples=30, deadline=None)
@given(
    reqs=st.lists(st.tuples(st.integers(1, 30), st.integers(-2, 2)), min_size=1, max_size=10),
    budget=st.integers(2, 48),
    blocks=st.integers(12, 40),
    order=st.sampled_from(["fcfs", "prefix_hit"]),
    base=st.sampled_from(["hybrid", "baseline"]),
)
def test_random_prioritised_workloads_finish_without_leaks(reqs, budget, blocks, order, base):
    s = _sched(blocks=blocks, budget=budget, seqs=4, order=order, base=base)
    made = [_req(f"r{i}", n, p, max_tokens=3, base=1000 * i) for i, (n, p) in enumerate(reqs)]
    for r in made:
        s.add_request(r)
    _finish_order(s, limit=3000)
    assert all(r.num_output_tokens == 3 for r in made)
    s.kv.check_no_leak()


# ---- the engine, offline and served ----------------------------------------------------------
def test_offline_priority_orders_the_work(tiny_llama: Path):
    from xyserve import LLM, SamplingParams

    llm = LLM(str(tiny_llama), max_num_seqs=1, scheduling_policy="priority")
    eng = llm.llm_engine
    started: list[str] = []
    schedule = eng.scheduler.schedule

    def spy():  # noqa: ANN202
        out = schedule()
        started.extend(
            st.request.request_id for st in out.stages if st.request.request_id not in started
        )
        return out

    eng.scheduler.schedule = spy
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    prompts = ["alpha beta", "gamma delta", "epsilon zeta"]
    outs = llm.generate(prompts, params, use_tqdm=False, priority=[2, 0, 1])
    assert [started.index(o.request_id) for o in outs] == [2, 0, 1]
    alone = [llm.generate(p, params, use_tqdm=False)[0] for p in prompts]
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in alone]
    with pytest.raises(ValueError, match="one value per prompt"):
        llm.generate(prompts, params, priority=[1])
    fcfs = LLM(str(tiny_llama))
    with pytest.raises(ValueError, match="needs the priority scheduling policy") as e:
        fcfs.generate(prompts, params, priority=[0, 1, 0], use_tqdm=False)
    assert e.value.param == "priority"
    assert not fcfs.llm_engine.groups  # nothing of the batch was admitted
    with pytest.raises(ValueError, match="scheduling_policy must be one of"):
        EngineConfig(model=str(tiny_llama), scheduling_policy="lifo")


@pytest.fixture(scope="module")
def servers(tiny_llama: Path) -> Iterator[tuple[Server, Server]]:
    cfg = dict(model=str(tiny_llama), served_model_name="tiny", max_model_len=256, device="cpu")
    with run_server(EngineConfig(**cfg, scheduling_policy="priority")) as prio:
        with run_server(EngineConfig(**cfg)) as fcfs:
            yield prio, fcfs


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_the_server_takes_priority_only_under_the_priority_policy(servers, path):
    prio, fcfs = servers
    body = {"max_tokens": 2, "priority": 3}
    body |= {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    r = httpx.post(f"{prio.url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{fcfs.url}{path}", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority", r.text
    r = httpx.post(f"{prio.url}{path}", json={**body, "priority": 1.5}, timeout=60)
    assert r.status_code == 400
    prio.assert_clean()
    fcfs.assert_clean()

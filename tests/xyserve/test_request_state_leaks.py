"""No per-request state outlives its request.

A long-running server must not grow with the requests it has served. The K/V blocks have
their own check (``KVCacheManager.check_no_leak``); this file checks every other container
that takes an entry per request or per sample: the engine's groups and child index, the
scheduler's queues and skip counts, the K/V manager's block tables and commit marks, the
speculative decoder's per-request estimates and failures, the proposers' own state (the
n-gram token arrays; the draft model's shadows, distributions and K/V cache), and the async
server's sinks and inbox.

Each engine is driven through the ways a request ends: a stop string, a stop token id (and
EOS where the model says it), ``max_tokens``, an abort while waiting, while running, after a
preemption, an ``n = 3`` group aborted part-way, a request failed inside a step by its
sampling and one by its output processing, a proposer that raises for one request,
``LLM.generate`` withdrawing a batch with a refused prompt and aborting one interrupted
between steps, and, through ``AsyncLLM``, a multi-prompt add withdrawn part-way, clients that
disconnect (close their stream), one whose task is cancelled and one whose event loop closes.
A small K/V cache makes requests preempt each other and a small token budget chunks prompts.
Afterwards every container must be empty. The helper :func:`request_containers` names each
container, so a failure names the one that leaked, and :func:`unclassified_containers` fails
when one of the audited objects grows a container that is in neither list, so the audit
cannot go stale silently.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from xyserve import LLM, SamplingParams
from xyserve.engine import engine as engine_module
from xyserve.engine.engine import LLMEngine
from xyserve.engine.intake import RequestValidationError
from xyserve.engine.sampler import SampleResult
from xyserve.server.async_engine import AsyncLLM

from tiny_models import CORPUS


# ---- the audit -------------------------------------------------------------------------------
def _owners(eng: LLMEngine, server: AsyncLLM | None = None) -> dict[str, object]:
    """The objects that hold per-request state, by the name the failure messages use."""
    owners: dict[str, object] = {
        "engine": eng,
        "scheduler": eng.scheduler,
        "kv": eng.kv,
        "intake": eng.intake,
        "output": eng.output,
        "runner": eng.runner,
    }
    if eng.spec is not None:
        owners["spec"] = eng.spec
        owners["proposer"] = eng.spec.proposer
        draft_kv = getattr(eng.spec.proposer, "kv", None)
        if draft_kv is not None:
            owners["draft_kv"] = draft_kv
    if server is not None:
        owners["async"] = server
    return owners


# Containers that take an entry per request or per sample, by owner. Each must be empty once
# every request has ended.
PER_REQUEST = {
    "engine": ("groups", "_child_to_group"),
    "scheduler": ("waiting", "running", "requests", "_skips"),
    "kv": ("req_blocks", "_committed", "pending_copies"),
    "spec": ("acceptance", "in_run", "failed", "_live"),
    # the n-gram proposer's token arrays; the draft's shadows and their distributions q
    "proposer": ("_tokens", "shadows", "_probs"),
    "draft_kv": ("req_blocks", "_committed", "pending_copies"),
    "async": ("_sinks", "_inbox"),
}

# Containers of the same objects that are not per request, and why.
NOT_PER_REQUEST = {
    "engine": ("served_model_names", "default_sampling_params", "eos_token_ids"),  # config
    # every block, the free list and the LRU list of cached blocks: bounded by num_blocks
    "kv": ("blocks", "_free", "_evictable"),
    "draft_kv": ("blocks", "_free", "_evictable"),
    # per depth of a chain over all requests; a tree's nodes per level (config); proposer
    # passes by how many requests a call proposed for (at most max_num_seqs keys)
    "spec": ("depth_tries", "depth_hits", "tree_sizes", "pass_cost"),
    "intake": ("eos_token_ids", "_grammar_cache"),  # by grammar content, at most 64
    "output": ("eos_token_ids",),
    "runner": ("kv_caches",),  # one K/V tensor pair per layer
}

# Filled and emptied inside one call (schedule, or the engine thread's drain): never seen
# holding anything between steps, so not asked to have been used.
TRANSIENT = {"kv.pending_copies", "draft_kv.pending_copies", "async._inbox"}


def request_containers(eng: LLMEngine, server: AsyncLLM | None = None) -> dict[str, Sized]:
    """Every per-request container of the engine (and of ``server``), named ``owner.attr``;
    a proposer has only the attributes of its kind."""
    found: dict[str, Sized] = {}
    for owner, obj in _owners(eng, server).items():
        for attr in PER_REQUEST.get(owner, ()):
            if hasattr(obj, attr):
                found[f"{owner}.{attr}"] = getattr(obj, attr)
    return found


def request_state(eng: LLMEngine, server: AsyncLLM | None = None) -> dict[str, int]:
    """The size of every per-request container, by name."""
    return {name: len(c) for name, c in request_containers(eng, server).items()}


def unclassified_containers(eng: LLMEngine, server: AsyncLLM | None = None) -> list[str]:
    """Containers on the audited objects that are in neither ``PER_REQUEST`` nor
    ``NOT_PER_REQUEST``: a new one must be classified (and, if per request, checked here)."""
    out = []
    for owner, obj in _owners(eng, server).items():
        known = set(PER_REQUEST.get(owner, ())) | set(NOT_PER_REQUEST.get(owner, ()))
        for attr, value in vars(obj).items():
            if isinstance(value, dict | set | list | deque) and attr not in known:
                out.append(f"{owner}.{attr}")
    return out


def assert_no_request_state(eng: LLMEngine, server: AsyncLLM | None = None) -> None:
    """Nothing of any request is left: every per-request container empty, every block of the
    target's cache and of a draft's cache free or (cached) evictable."""
    left = {name: n for name, n in request_state(eng, server).items() if n}
    assert not left, f"per-request state left after every request ended: {left}"
    assert not eng.has_unfinished_requests()
    eng.kv.check_no_leak()
    draft_kv = getattr(eng.spec.proposer, "kv", None) if eng.spec is not None else None
    if draft_kv is not None:
        draft_kv.check_no_leak()
    new = unclassified_containers(eng, server)
    assert not new, f"containers not audited: {new} (add each to PER_REQUEST or NOT_PER_REQUEST)"


# ---- the workload ----------------------------------------------------------------------------
@dataclass
class Planned:
    """One request of the mixed run: added at step ``arrive``, aborted once it has
    ``abort_after`` output tokens or at step ``abort_step`` (whatever its state then), or
    left to end by itself."""

    rid: str
    prompt: str
    params: SamplingParams
    arrive: int = 0
    abort_after: int | None = None
    abort_step: int | None = None
    aborted: bool = False


FAIL_SAMPLING = "fail-sampling"  # its rows' sampling errors at its first token
FAIL_OUTPUT = "fail-output"  # its output processing raises at its second token
FAIL_PROPOSER = "fail-proposer"  # the proposer raises whenever it is in the batch
PLANTED = (FAIL_SAMPLING, FAIL_OUTPUT, FAIL_PROPOSER)


def workload(prompts: list[str], stops: list[str], stop_ids: list[int]) -> list[Planned]:
    """Requests arriving over the first steps: greedy, seeded and unseeded sampling, ``n`` of
    1 and 3, stop strings, stop token ids, EOS, ``max_tokens``, aborts, and the three planted
    failures."""
    greedy = dict(temperature=0.0)
    plan: list[Planned] = []
    for i in range(12):
        kind = [greedy, dict(temperature=0.8, seed=i), dict(temperature=0.9)][i % 3]
        params = SamplingParams(
            n=3 if i % 4 == 1 else 1,
            max_tokens=6 + (i * 5) % 19,
            stop=stops if i % 3 == 2 else None,
            stop_token_ids=stop_ids if i % 6 == 4 else None,
            ignore_eos=i % 2 == 0,
            **kind,
        )
        plan.append(Planned(f"r{i}", prompts[i % len(prompts)], params, arrive=i // 3))
    sampled = dict(temperature=0.8, max_tokens=16, ignore_eos=True)
    plan += [
        # a long prompt: the prefix_hit admission passes it over (a skip count) until then
        Planned(
            "abort-waiting", prompts[0] * 2, SamplingParams(**greedy, max_tokens=8), 0, abort_step=2
        ),
        Planned("abort-running", prompts[1], SamplingParams(**sampled), 0, 3),
        Planned("abort-group", prompts[2], SamplingParams(n=3, **sampled), 1, 4),
        Planned(FAIL_SAMPLING, prompts[3], SamplingParams(n=3, **sampled), 2),
        Planned(FAIL_OUTPUT, prompts[4], SamplingParams(n=3, **sampled), 2),
        Planned(FAIL_PROPOSER, prompts[1], SamplingParams(**greedy, max_tokens=12), 0),
    ]
    return plan


def plant_failures(eng: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``FAIL_SAMPLING`` fail in the sampler at its first token and ``FAIL_OUTPUT`` in
    output processing at its second (each fails its whole group inside a step:
    ``LLMEngine._fail``), and the proposer raise whenever ``FAIL_PROPOSER`` is in its batch
    (``SpecDecoder.failed``). The sampler knows a row by its group's params object."""
    real_sample = engine_module.sample
    real_finish = eng.output.finish_reason

    def sample(logits, rows, *args, **kwargs):  # noqa: ANN001, ANN202 - the sampler's own
        results = real_sample(logits, rows, *args, **kwargs)
        group = eng.groups.get(FAIL_SAMPLING)
        for i, row in enumerate(rows):
            if group is not None and row.params is group.params and not row.output_ids:
                results[i] = SampleResult(-1, None, [], 0, error="planted sampling failure")
        return results

    def finish_reason(group, child):  # noqa: ANN001, ANN202 - OutputProcessor's own
        if group.request_id == FAIL_OUTPUT and len(child.request.output_token_ids) >= 2:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "planted output failure")
        return real_finish(group, child)

    monkeypatch.setattr(engine_module, "sample", sample)
    monkeypatch.setattr(eng.output, "finish_reason", finish_reason)
    if eng.spec is not None:
        proposer = eng.spec.proposer
        real_propose = proposer.propose

        def propose(requests, caps):  # noqa: ANN001, ANN202 - the proposer's own
            for r in requests:
                group = eng._child_to_group.get(r.request_id, (None,))[0]
                if group is not None and group.request_id == FAIL_PROPOSER:
                    raise RuntimeError("planted proposer failure")
            return real_propose(requests, caps)

        monkeypatch.setattr(proposer, "propose", propose)


@dataclass
class Run:
    """What a mixed run did: each container's peak size between steps, the finished samples
    by how they ended (``length``, ``error``, and a stop by ``string``, ``token`` id or
    ``eos``), and whether a request waiting after a preemption was aborted."""

    peak: dict[str, int]
    ends: Counter
    preempted_abort: bool = False


def run_offline(eng: LLMEngine, plan: list[Planned]) -> Run:
    """Step the engine through ``plan``: arrivals and aborts between steps, and one abort of
    a request waiting after a preemption when one comes (one that no other end is planned
    for, so every planned end still happens)."""
    run = Run(dict.fromkeys(request_state(eng), 0), Counter())
    unplanned = {
        p.rid
        for p in plan
        if p.abort_after is None and p.abort_step is None and p.rid not in PLANTED
    }
    step = 0
    while True:
        for p in plan:
            if p.arrive == step:
                eng.add_request(p.prompt, p.params, request_id=p.rid)
        for p in plan:
            group = eng.groups.get(p.rid)
            if group is None or p.aborted:
                continue
            most = max(c.request.num_output_tokens for c in group.children)
            if p.abort_step == step or (p.abort_after is not None and most >= p.abort_after):
                assert eng.abort_request(p.rid)
                p.aborted = True
        if not run.preempted_abort:  # a request back in the queue after a preemption
            for r in eng.scheduler.waiting:
                group = eng._child_to_group.get(r.request_id, (None,))[0]
                if r.num_preemptions and group is not None and group.request_id in unplanned:
                    run.preempted_abort = eng.abort_request(group.request_id)
                    break
        for name, n in request_state(eng).items():
            run.peak[name] = max(run.peak[name], n)
        if not eng.has_unfinished_requests() and step > max(p.arrive for p in plan):
            break
        for out in eng.step():
            if out.finished:
                run.ends.update(_end(c.finish_reason, c.stop_reason) for c in out.outputs)
        step += 1
        assert step < 2000, "the run does not end"
    return run


def _end(finish_reason: str, stop_reason: int | str | None) -> str:
    """How a sample ended: its finish reason, a stop told apart by what stopped it."""
    if finish_reason != "stop":
        return finish_reason
    return {str: "string", int: "token"}.get(type(stop_reason), "eos")


def check_exercised(eng: LLMEngine, run: Run) -> None:
    """The run went where it is meant to: every per-request container held something at some
    point, requests were preempted (one aborted so), aborted and failed, and ended by a stop
    and by length."""
    unused = [n for n, size in run.peak.items() if size == 0 and n not in TRANSIENT]
    assert not unused, f"containers never used by the run (the check would be vacuous): {unused}"
    assert eng.scheduler.num_preemptions > 0 and run.preempted_abort
    assert eng.num_aborted_requests >= 4
    assert eng.num_failed_requests == 2
    assert run.ends["string"] and run.ends["token"] and run.ends["length"], run.ends


# ---- the offline API's paths -----------------------------------------------------------------
class Interrupted(Exception):
    """Raised between steps, as a KeyboardInterrupt in ``LLM.generate`` would be."""


def run_llm_paths(llm: LLM, prompts: list[str]) -> None:
    """``LLM.generate``'s own ends: a batch whose last prompt is refused withdraws the ones
    already added, and an exception between steps aborts every request of the batch."""
    eng = llm.llm_engine
    params = SamplingParams(temperature=0.8, max_tokens=20, ignore_eos=True, n=3)
    too_long = {"prompt_token_ids": [1] * (eng.max_model_len + 1)}
    with pytest.raises(RequestValidationError):
        llm.generate([*prompts[:3], too_long], params)
    assert_no_request_state(eng)
    real_step, steps = eng.step, [0]

    def interrupted() -> list:
        steps[0] += 1
        if steps[0] > 4:
            raise Interrupted
        return real_step()

    eng.step = interrupted
    try:
        with pytest.raises(Interrupted):
            llm.generate(prompts, params)
    finally:
        del eng.step  # the class's method again
    assert steps[0] > 4
    assert_no_request_state(eng)


# ---- the async server's paths ----------------------------------------------------------------
def run_async(eng: LLMEngine, prompts: list[str]) -> None:
    """Serve requests through ``AsyncLLM`` on ``eng``: some read to the end, some closed by
    their client after the first output (a disconnect), one task cancelled mid-stream, one
    whose event loop closes before any output is read. Then, with the engine thread still up
    (its shutdown aborts whatever it still holds, which would hide a leak), wait for every
    container to empty."""
    server = AsyncLLM(eng)
    full = SamplingParams(temperature=0.0, max_tokens=6)
    long = SamplingParams(temperature=0.8, max_tokens=40, ignore_eos=True, n=3)

    async def to_end(i: int) -> None:
        async for _ in server.generate(prompts[i % len(prompts)], full, f"a-end{i}"):
            pass

    async def disconnect(i: int) -> None:
        gen = server.generate(prompts[i % len(prompts)], long, f"a-gone{i}")
        async for _ in gen:
            break
        await gen.aclose()  # the route's generator closed: its stream aborts the request

    async def cancel() -> None:
        """A task cancelled once it has an output, as a route's task is on a disconnect."""
        started = asyncio.Event()

        async def read() -> None:
            async for _ in server.generate(prompts[0], long, "a-cancel"):
                started.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def main() -> None:
        # a multi-prompt add that fails part-way (a duplicate id) withdraws what it added
        with pytest.raises(RequestValidationError):
            await server.add_requests(prompts[:2], long, ["a-dup", "a-dup"])
        await asyncio.gather(
            *(to_end(i) for i in range(3)), *(disconnect(i) for i in range(3)), cancel()
        )

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        # an add whose client's loop closes at once: its outputs have nowhere to go
        asyncio.run(server.add_request(prompts[1], long, "a-loop-closed"))
        deadline = time.monotonic() + 30
        while any(request_state(eng, server).values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = {n: size for n, size in request_state(eng, server).items() if size}
        assert not left, f"per-request state left after every async request ended: {left}"
    finally:
        server.shutdown()
    assert_no_request_state(eng, server)


def prompt_token_ids(eng: LLMEngine, prompts: list[str]) -> list[int]:
    """Every token id of ``prompts``: stop ids that a model continuing them is sure to say."""
    return sorted({t for p in prompts for t in eng.tokenizer.encode(p)})


# ---- the tests -------------------------------------------------------------------------------
SMALL_CACHE = dict(
    block_size=4,
    num_kv_blocks=28,  # 112 tokens: a few requests at once, then preemption
    max_model_len=96,
    max_num_batched_tokens=32,  # prompts are chunked
    max_num_seqs=16,
    enable_prefix_caching=True,
    admission_order="prefix_hit",  # its skip counts are per request
    tbt_target_ms=None,  # no step timing decides the schedule
    disable_progress_bar=True,
)


def test_no_request_state_outlives_its_request(tiny_llama: Path, monkeypatch) -> None:
    """The plain engine (no speculation): every per-request container is empty after the
    mixed run, and again after the async server's run on the same engine."""
    llm = LLM(str(tiny_llama), **SMALL_CACHE)
    eng = llm.llm_engine
    prompts = [c[:60] for c in CORPUS[:5]]
    plan = workload(prompts, ["e", " ", "o"], prompt_token_ids(eng, prompts))
    plant_failures(eng, monkeypatch)
    check_exercised(eng, run_offline(eng, plan))
    assert_no_request_state(eng)
    run_llm_paths(llm, prompts)
    run_async(eng, prompts)


SPEC_PROMPTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + ",
    "import os\nimport sys\n\n\ndef main():\n    print(os.getcwd())\n    print(sys",
    "for i in range(10):\n    for j in range(10):\n        for k in range(",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = ",
    "x = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2,",
]


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3},
        # the bundled xy-tiny's default draft is xy-tiny-draft; adaptive off: every request
        # that can be proposed for is, so the draft holds state for most of them
        {"method": "draft_model", "num_speculative_tokens": 3, "adaptive": False},
    ],
    ids=["ngram", "draft_model"],
)
def test_no_speculative_state_outlives_its_request(spec: dict[str, Any], monkeypatch) -> None:
    """Speculative decoding on the bundled xy-tiny: the same mixed run, and the proposer's
    state (n-gram arrays; the draft's shadows, distributions and K/V blocks) and the adaptive
    controller's estimates are gone with their requests."""
    llm = LLM("xy-tiny", speculative_config=spec, **SMALL_CACHE)
    eng = llm.llm_engine
    plan = workload(SPEC_PROMPTS, ["\n\n", "):", "= "], prompt_token_ids(eng, SPEC_PROMPTS))
    plant_failures(eng, monkeypatch)
    check_exercised(eng, run_offline(eng, plan))
    assert eng.spec.stats.num_drafts > 0
    assert_no_request_state(eng)
    run_llm_paths(llm, SPEC_PROMPTS)
    run_async(eng, SPEC_PROMPTS)

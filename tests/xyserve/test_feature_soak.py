"""A seeded, randomized soak of the real engine, its features mixed in one batch.

Per speculative method (ngram, draft_model, tree), a few engines of random configuration, each
made to use every mechanism: a K/V cache of 64 to 128 tokens against a max_model_len of 64
(preemption), a token budget of 5 to 24 (chunked prefills, trimmed verifies), prefix caching
(prompts share prefixes, ``n > 1`` samples share their prompt), block sizes of 1 to 16, split
or mixed steps, the fused or the eager decode call, each attention and GEMM backend, both
schedulers and their knobs, ``adaptive`` mostly off (no timing decides anything: a failing seed
replays). The first engine of each method has the smallest cache and the most proposals. The
target is the tiny Llama with a second EOS id that it often says; the draft, its weights plus
noise (it is accepted often, not always).

Requests arrive at random steps, with random mixes of greedy, seeded and unseeded sampling,
``n`` of 1 to 3, ``max_tokens`` (or none: up to max_model_len), ``min_tokens``, stop ids and
stop strings (drawn from what the model says after the prompt, so they hit), EOS, logprobs,
prompt logprobs, penalties, ``logit_bias``, structured outputs (choice, regex, JSON schema),
aborts at random steps, and ids sent again once their request is gone.

Checked, per request: it finishes with ``stop`` or ``length`` (or was aborted, and gets no
output after that); ``max_tokens`` and ``min_tokens`` hold; the text holds no stop string
before its cut; a completed grammar parses; streamed outputs only grow; a greedy or seeded
request gives exactly the tokens, text and finish of the same request run alone on a plain
engine (no speculation, preemption, prefix cache or chunking), with logprobs and prompt
logprobs within 1e-4 (ranks and top-k may differ only where HF's float32 logprobs tie within
1e-5). After every step: the target cache's books (blocks held by running requests only,
reference counts, each block in one state), the draft's state held for running requests only,
no step empty while work waits, the oldest running request never preempted (the cache holds
max_model_len tokens), no stage past max_model_len, the budget kept. After every workload: nothing left running, no block
held in either cache (cached prefix blocks only as evictable), the engine's counters of tokens,
aborts and finish reasons equal to what the requests got.

``XYSERVE_SOAK_ENGINES`` and ``XYSERVE_SOAK_SEEDS`` (engines per method, workloads per engine)
soak longer.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.engine.engine import LLMEngine

from tiny_models import CORPUS

MAX_MODEL_LEN = 64  # caches of 64 to 128 tokens: a few requests at once, then preemption
MAX_PROMPT = 48
MAX_TOKENS = 16
TOL = 1e-4
TIE = 1e-5  # logprobs closer than this may order either way (float32 noise)

SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "boolean"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
CHOICES = ["yes", "no", "maybe"]
REGEX = "[a-d]{1,4}x"
EOS = [0, 7]  # 7 ('#') is among the tokens the tiny model says most: EOS ends many requests


@pytest.fixture(scope="module")
def target(tiny_llama: Path, tmp_path_factory) -> Path:
    """The tiny Llama with two EOS ids, one of them a token it often says."""
    path = tmp_path_factory.mktemp("soak-target")
    shutil.copytree(tiny_llama, path, dirs_exist_ok=True)
    gen = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": EOS}))
    return path


@pytest.fixture(scope="module")
def draft(target: Path, tmp_path_factory) -> Path:
    """A draft of the target's vocabulary that agrees with it often, not always: its weights
    plus noise (a random model of another seed would almost never be accepted)."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("soak-draft")
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.005)  # about half accepted
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def reference(target: Path) -> Reference:
    llm = LLM(
        str(target),
        max_model_len=MAX_MODEL_LEN,
        block_size=8,
        num_kv_blocks=64,
        enable_prefix_caching=False,
        max_num_batched_tokens=512,
        tbt_target_ms=None,
        cpu_fused_decode="off",
        disable_progress_bar=True,
    )
    assert llm.llm_engine.eos_token_ids == set(EOS)
    return Reference(llm)


class Reference:
    """Each request run alone on a plain engine, memoised by its prompt and parameters."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.tok = llm.get_tokenizer()
        self._memo: dict[str, object] = {}
        self._hf = None

    def run(self, prompt: list[int], params: SamplingParams):
        key = repr((prompt, params))
        if key not in self._memo:
            eng = self.llm.llm_engine
            out = self.llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
            assert eng.scheduler.num_preemptions == 0 and not eng.has_unfinished_requests()
            self._memo[key] = out
        return self._memo[key]

    def hf_row(self, ids: list[int]) -> torch.Tensor:
        """HF's float32 log distribution after ``ids`` (to explain a tie)."""
        if self._hf is None:
            from transformers import AutoModelForCausalLM

            path = self.llm.llm_engine.model_path
            self._hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        with torch.no_grad():
            return torch.log_softmax(self._hf(torch.tensor([ids])).logits[0, -1].float(), -1)

    def probe(self, prompt: list[int]):
        """What greedy decoding says after ``prompt`` (stops are drawn from it)."""
        return self.run(
            prompt, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        )


# ---- workloads ----------------------------------------------------------------------------
@dataclass
class Spec:
    rid: str
    prompt: list[int]
    params: SamplingParams
    arrival: int  # the step it is added at (a resend: steps after the one before it is gone)
    kind: str  # greedy | seeded | sampled
    grammar: str | None = None
    abort_at: int | None = None  # the step it is aborted at, if still in flight
    abort_after: int | None = None  # ... or once it has streamed this many tokens
    resend: Spec | None = None  # sent under the same id once this one is gone
    outputs: list = field(default_factory=list)  # every RequestOutput streamed
    aborted: bool = False


def prompt_pool(tok, rng: random.Random) -> list[list[int]]:
    """Prompts that share prefixes (a few stems, cut and extended), repeat text (n-gram
    proposals find matches) or are random, of 1 to ``MAX_PROMPT`` tokens; ids of special
    tokens are left out."""
    texts = sorted(set(CORPUS))
    stems = [tok.encode(t, add_special_tokens=False) for t in texts]
    stems = [(s * 4)[:MAX_PROMPT] for s in stems]
    pool = []
    for _ in range(10):
        stem = rng.choice(stems)
        cut = rng.randint(1, len(stem))
        tail = [rng.randrange(5, tok.vocab_size) for _ in range(rng.randint(0, 8))]
        pool.append((stem[:cut] + tail)[:MAX_PROMPT])
    for n in (1, rng.randint(2, 30), rng.randint(2, MAX_PROMPT)):
        pool.append([rng.randrange(5, tok.vocab_size) for _ in range(n)])
    return pool


def make_params(rng: random.Random, ref: Reference, prompt: list[int], long: float) -> tuple:
    """Random sampling parameters for ``prompt``; ``long``: the chance of no max_tokens (up
    to max_model_len). Returns them, greedy/seeded/sampled, and the grammar's kind or None."""
    kind = rng.choice(["greedy", "greedy", "greedy", "seeded", "sampled"])
    kw: dict = {"max_tokens": rng.randint(1, MAX_TOKENS), "n": rng.choice([1, 1, 1, 2, 3])}
    if rng.random() < long:
        kw["max_tokens"] = None
    if kind == "greedy":
        kw["temperature"] = 0.0
    else:
        kw["temperature"] = rng.choice([0.7, 1.0])
        kw["top_p"] = rng.choice([1.0, 0.9])
        kw["top_k"] = rng.choice([0, 0, 20])
        kw["min_p"] = rng.choice([0.0, 0.0, 0.05])
        if kind == "seeded":
            kw["seed"] = rng.randrange(1000)
    if rng.random() < 0.2:
        kw[rng.choice(["presence_penalty", "frequency_penalty"])] = 0.5
    if rng.random() < 0.1:
        kw["repetition_penalty"] = 1.3
    probe = ref.probe(prompt).outputs[0]
    if rng.random() < 0.3:  # a token the model says after this prompt
        kw["stop_token_ids"] = [rng.choice(probe.token_ids)]
    # a piece of what the model says (never U+FFFD: the text of bytes that are not yet, or
    # never, a whole character) and a common letter
    text = probe.text.replace("\ufffd", "")
    if rng.random() < 0.4 and text:
        i = rng.randrange(len(text))
        kw["stop"] = [text[i : i + rng.randint(1, 4)], rng.choice(["o", "e", " ", "#"])]
        kw["include_stop_str_in_output"] = rng.random() < 0.3
    if rng.random() < 0.25:
        kw["min_tokens"] = rng.randint(1, kw["max_tokens"] or MAX_TOKENS)
    kw["ignore_eos"] = rng.random() < 0.3
    kw["skip_special_tokens"] = rng.random() < 0.8
    if rng.random() < 0.3:
        kw["logprobs"] = rng.choice([0, 2])
    if rng.random() < 0.2:
        kw["prompt_logprobs"] = rng.choice([0, 3])
    if rng.random() < 0.05:
        kw["logit_bias"] = {rng.randrange(5, 300): 5.0}
    grammar = None
    if rng.random() < 0.15:
        grammar = rng.choice(["choice", "regex", "json"])
        kw["structured"] = {grammar: {"choice": CHOICES, "regex": REGEX, "json": SCHEMA}[grammar]}
        kw["max_tokens"] = None  # room for the grammar to complete
        if "stop_token_ids" in kw:  # a token the grammar may need
            said = {"choice": "".join(CHOICES), "regex": "abcdx", "json": '{"a":1,"b":true}'}
            kw["stop_token_ids"] = [
                rng.choice(ref.tok.encode(said[grammar], add_special_tokens=False))
            ]
    return SamplingParams(**kw), kind, grammar


def repeats(tokens: list[int]) -> bool:
    """Whether a pair of tokens comes twice."""
    pairs = list(zip(tokens, tokens[1:]))
    return len(set(pairs)) < len(pairs)


def make_workload(seed: int, ref: Reference, long: float) -> list[Spec]:
    """8 to 14 requests arriving over the first steps; some aborted, and some of those sent
    again under the same id later (an id is free once its request is gone). ``long``: the
    chance that a request has no max_tokens."""
    rng = random.Random(seed)
    pool = prompt_pool(ref.tok, rng)
    # prompts after which the model repeats itself: there n-gram proposals are accepted
    loops = [p for p in pool if repeats(ref.probe(p).outputs[0].token_ids)] or pool
    specs = []
    for i in range(rng.randint(8, 14)):
        prompt = rng.choice(loops if rng.random() < 0.3 else pool)
        params, kind, grammar = make_params(rng, ref, prompt, long)
        sp = Spec(f"s{seed}-{i}", prompt, params, rng.randint(0, 12), kind, grammar)
        specs.append(sp)
        if rng.random() < 0.2:  # aborted at a step (waiting, often), or once it has tokens
            if rng.random() < 0.5:
                sp.abort_at = sp.arrival + rng.randint(0, 30)
            else:
                sp.abort_after = rng.randint(1, 8)
            if rng.random() < 0.5:
                prompt = rng.choice(pool)
                params, kind, grammar = make_params(rng, ref, prompt, long)
                sp.resend = Spec(sp.rid, prompt, params, rng.randint(0, 4), kind, grammar)
                specs.append(sp.resend)
    return specs


# ---- checks -------------------------------------------------------------------------------
def check_books(eng: LLMEngine) -> None:
    """The target cache's books between steps: blocks held by running requests only, each
    block's reference count its number of holders, every block in exactly one state; the
    draft's state (its cache among it) held for running requests only."""
    kv, s = eng.kv, eng.scheduler
    running = {r.request_id for r in s.running}
    assert set(kv.req_blocks) == running, (sorted(kv.req_blocks), sorted(running))
    users = [0] * kv.num_blocks
    for table in kv.req_blocks.values():
        for b in table:
            users[b] += 1
    assert [b.ref_count for b in kv.blocks] == users
    free, evictable = set(kv._free), set(kv._evictable)
    used = {i for i, n in enumerate(users) if n}
    assert len(free) == len(kv._free) and not free & evictable and not used & (free | evictable)
    assert len(free | evictable | used) == kv.num_blocks
    assert all(kv.blocks[b].registered and kv.blocks[b].tokens for b in evictable)
    proposer = eng.spec.proposer
    if hasattr(proposer, "shadows"):  # the draft's state: running requests' only, at once
        assert set(proposer.shadows) <= running, (sorted(proposer.shadows), sorted(running))
        assert set(proposer.kv.req_blocks) <= set(proposer.shadows)


def check_no_leak(eng: LLMEngine) -> None:
    """Nothing left: no request anywhere, every block of either cache free or evictable."""
    s = eng.scheduler
    assert not eng.has_unfinished_requests() and not eng.groups and not eng._child_to_group
    assert not s.running and not s.waiting and not s.requests
    eng.kv.check_no_leak()
    proposer = eng.spec.proposer
    if hasattr(proposer, "kv"):  # the draft's cache: no prefix caching, so all free
        proposer.kv.check_no_leak()
        assert len(proposer.kv._free) == proposer.kv.num_blocks and not proposer.shadows
    assert not eng.spec.acceptance and not eng.spec.failed


def counters(eng: LLMEngine) -> dict:
    """The engine's counters of generated tokens, aborts and finish reasons, as its metrics
    give them (``LLM.get_metrics``), which must agree with its own counts."""
    got = {}
    for m in eng.metrics.snapshot():
        if m.name == "xyserve:request_success":
            got[m.labels["finished_reason"]] = m.value
        elif m.name in ("xyserve:generation_tokens", "xyserve:request_aborted"):
            got[m.name.removeprefix("xyserve:")] = m.value
    assert got["generation_tokens"] == eng.num_generation_tokens
    assert got["request_aborted"] == eng.num_aborted_requests
    return got


def check_counters(eng: LLMEngine, before: dict, specs: list[Spec]) -> None:
    """The workload's tokens and finishes, as the engine counted them: every token a request
    was given (streamed before its abort, or kept in its output; none cut after a stop),
    each aborted request, each sample's finish reason."""
    now = counters(eng)
    want = dict.fromkeys(now, 0)
    for sp in specs:
        last = sp.outputs[-1].outputs if sp.outputs else []
        want["generation_tokens"] += sum(len(c.token_ids) for c in last)
        want["request_aborted"] += sp.aborted
        for c in last:
            if c.finish_reason is not None:
                want[c.finish_reason] += 1
    assert {k: now[k] - before[k] for k in now} == want


def same_logprobs(ref: Reference, a, b, contexts, k: int | None, what: str) -> None:
    """Logprob entries equal to ``TOL``, and the same ranks and top-k tokens except where
    float noise decides them: a rank counts the tokens with a strictly higher logprob, so a
    token within ``TIE`` of the entry's token (in HF's float32 row after ``contexts[i]``) may
    count in one engine and not in the other; likewise at the k-th place of the top-k."""
    assert (a is None) == (b is None), what
    if a is None:
        return
    assert len(a) == len(b), what
    for i, (ea, eb) in enumerate(zip(a, b)):
        assert (ea is None) == (eb is None), (what, i)
        if ea is None:
            continue
        for t in ea.keys() & eb.keys():
            assert ea[t].logprob == pytest.approx(eb[t].logprob, abs=TOL), (what, i, t)
            if ea[t].rank != eb[t].rank:
                row = ref.hf_row(contexts[i])
                ties = int(((row - row[t]).abs() < TIE).sum()) - 1
                assert abs(ea[t].rank - eb[t].rank) <= ties, (what, i, t, ea[t], eb[t])
        if ea.keys() != eb.keys():
            row = ref.hf_row(contexts[i])
            kth = float(row.topk(k).values[-1])
            for t in ea.keys() ^ eb.keys():
                assert abs(float(row[t]) - kth) < TIE, (what, i, t, ea, eb)


def check_request(sp: Spec, ref: Reference) -> None:
    """One request's outputs on their own, then against the reference."""
    p = sp.params
    where = f"{sp.rid} ({sp.kind}, {sp.grammar}) {p}"
    for a, b in zip(sp.outputs, sp.outputs[1:]):  # streamed outputs only grow
        for ca, cb in zip(a.outputs, b.outputs):
            assert cb.token_ids[: len(ca.token_ids)] == ca.token_ids, where
    if sp.aborted:
        return
    assert sp.outputs and sp.outputs[-1].finished, f"{where}: never finished"
    out = sp.outputs[-1]
    assert out.error is None, f"{where}: {out.error}"
    assert len(out.outputs) == p.n
    for c in out.outputs:
        assert c.finish_reason in ("stop", "length"), where
        n = len(c.token_ids)
        max_tokens = p.max_tokens or MAX_MODEL_LEN - len(sp.prompt)
        assert 1 <= n <= max_tokens, where
        if c.finish_reason == "length":
            assert n == max_tokens, where
        elif sp.grammar is None:
            assert n >= p.min_tokens, where
        body = c.text
        if isinstance(c.stop_reason, str):
            assert c.finish_reason == "stop" and c.stop_reason in p.stop_strings, where
            if p.include_stop_str_in_output:
                assert body.endswith(c.stop_reason), where
                body = body[: -len(c.stop_reason)]
        elif c.finish_reason == "stop":
            # a stop id or EOS: as vLLM, its own text (kept with include_stop_str_in_output)
            # is not searched for stop strings
            body = ref.tok.decode(c.token_ids[:-1], skip_special_tokens=p.skip_special_tokens)
        if not p.min_tokens:  # cut where the first stop string ends (none before min_tokens)
            assert not any(s in body for s in p.stop_strings), (where, c.text)
        if sp.grammar is not None and c.finish_reason == "stop" and c.stop_reason is None:
            if sp.grammar == "choice":
                assert c.text in CHOICES, (where, c.text)
            elif sp.grammar == "regex":
                assert re.fullmatch(REGEX, c.text), (where, c.text)
            else:
                got = json.loads(c.text)
                assert set(got) == {"a", "b"} and 0 <= got["a"] <= 99, (where, c.text)
    want = ref.run(sp.prompt, p)
    prompt_ctx = [sp.prompt[:i] for i in range(len(sp.prompt))]
    same_logprobs(
        ref,
        out.prompt_logprobs,
        want.prompt_logprobs,
        prompt_ctx,
        p.prompt_logprobs,
        f"{where}: prompt",
    )
    if sp.kind == "sampled":
        return
    for c, w in zip(out.outputs, want.outputs):
        got = (c.token_ids, c.text, c.finish_reason, c.stop_reason)
        assert got == (w.token_ids, w.text, w.finish_reason, w.stop_reason), (where, c.index)
        ctx = [sp.prompt + c.token_ids[:i] for i in range(len(c.token_ids))]
        same_logprobs(ref, c.logprobs, w.logprobs, ctx, p.logprobs, f"{where}: sample {c.index}")


# ---- the soak -----------------------------------------------------------------------------
def run_workload(eng: LLMEngine, specs: list[Spec]) -> None:
    """Step the engine until every request is through, arrivals and aborts between steps;
    every schedule and the books after every step and abort are checked."""
    live: dict[str, Spec] = {}
    sched = eng.scheduler
    schedule = type(sched).schedule

    def checked_schedule():
        oldest = sched.running[0] if sched.running else None
        out = schedule(sched)
        # the newest requests are preempted first, and the cache holds max_model_len tokens:
        # the oldest running request always fits
        assert oldest is None or oldest not in out.preempted, f"{oldest.request_id} preempted"
        assert out.stages or not sched.has_unfinished(), "a step with work left ran nothing"
        assert sched.policy != "hybrid" or out.num_tokens <= sched.budget
        # nor does a stage take more slots than the context has (a token tree's nodes among)
        assert all(st.kv_len <= MAX_MODEL_LEN for st in out.stages)
        return out

    sched.schedule = checked_schedule
    resent = {id(sp.resend) for sp in specs if sp.resend is not None}
    pending = [sp for sp in specs if id(sp) not in resent]
    step = 0

    def gone(sp: Spec) -> None:  # its id is free: the request sent again under it is due
        if sp.resend is not None:
            sp.resend.arrival += step + 1
            pending.append(sp.resend)

    while pending or eng.has_unfinished_requests():
        assert step < 3000, "the workload did not finish"
        pending.sort(key=lambda sp: sp.arrival)
        while pending and pending[0].arrival <= step:
            sp = pending.pop(0)
            assert sp.rid not in eng.groups
            eng.add_request({"prompt_token_ids": sp.prompt}, sp.params, request_id=sp.rid)
            live[sp.rid] = sp
        for sp in list(live.values()):
            got = sum(len(c.token_ids) for c in sp.outputs[-1].outputs) if sp.outputs else 0
            due = sp.abort_at == step or (sp.abort_after is not None and got >= sp.abort_after)
            if due and sp.rid in eng.groups:
                assert eng.abort_request(sp.rid)
                sp.aborted = True
                del live[sp.rid]
                gone(sp)
                check_books(eng)
        for out in eng.step():
            sp = live[out.request_id]
            assert not sp.aborted, f"{sp.rid}: an output after its abort"
            assert not (sp.outputs and sp.outputs[-1].finished), f"{sp.rid}: after its finish"
            sp.outputs.append(out)
            if out.finished:
                del live[sp.rid]
                gone(sp)
        check_books(eng)
        step += 1
    assert not live


def engine_args(rng: random.Random, method: str, draft: Path, tight: bool) -> dict:
    """A random engine: block size, a cache of 64 to 128 tokens, budget, knobs, speculation.
    ``tight``: the smallest cache and 8 sequences at once, so that requests are preempted, the
    most proposals (every test of the soak then preempts, proposes, accepts and rejects), and
    split steps (prefill work and decodes in turn) under that pressure."""
    bs = rng.choice([1, 2, 4, 8, 16])
    k = rng.randint(2 if tight else 1, 5)
    spec: dict = {"method": method, "num_speculative_tokens": k}
    # off: k proposals whenever allowed; on, timing decides how many (outputs stay the same)
    spec["adaptive"] = not tight and rng.random() < 0.25
    if method == "ngram":
        lo = 1 if tight else rng.randint(1, 2)
        spec.update(prompt_lookup_min=lo, prompt_lookup_max=lo + rng.randint(0, 2))
    else:
        spec["model"] = str(draft)
    if method == "tree":  # a chain per top-2 first token, a dynamic tree, a static tree
        shape = rng.choice(["width", "nodes", "branching"])
        if shape == "width":
            spec["tree_width"] = 2
        elif shape == "nodes":
            spec.update(tree_width=3, tree_nodes=rng.randint(1, 3 * k))
        else:
            spec["tree_branching"] = rng.choice([[2, 1, 1], [3, 2], [1, 2, 1, 1]])
    if not tight and rng.random() < 0.15:
        spec["disable_by_batch_size"] = rng.randint(2, 4)
    budget = rng.choice([5, 8, 16, 24])
    args = dict(
        block_size=bs,
        num_kv_blocks=(MAX_MODEL_LEN if tight else rng.randint(MAX_MODEL_LEN, 2 * MAX_MODEL_LEN))
        // bs,
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=budget,
        max_num_seqs=8 if tight else rng.choice([1, 2, 4, 8]),
        enable_prefix_caching=True,
        tbt_target_ms=None,
        cpu_fused_decode=rng.choice(["on", "off"]),
        attention_backend=rng.choice(["meta", "meta", "sdpa", "reference"]),
        gemm_backend=rng.choice(["smooth", "torch"]),
        speculative_config=spec,
    )
    if not tight and rng.random() < 0.15:
        args["scheduler_policy"] = "baseline"
        args["admission_order"] = "fcfs"
    else:
        args.update(
            split_prefill_decode="on" if tight else rng.choice(["on", "off"]),
            admission_order=rng.choice(["fcfs", "prefix_hit"]),
            partial_prefill_admission=rng.random() < 0.7,
            max_prefill_chunk_tokens=rng.choice([None, rng.randint(1, budget)]),
            num_reserved_decode_tokens=rng.choice([None, rng.randint(1, budget)]),
        )
    return args


METHODS = ["ngram", "draft_model", "tree"]
# engines per method and workloads per engine: XYSERVE_SOAK_ENGINES=40 soaks longer
ENGINES = int(os.environ.get("XYSERVE_SOAK_ENGINES", "2"))
SEEDS = int(os.environ.get("XYSERVE_SOAK_SEEDS", "4"))


@pytest.mark.parametrize("method", METHODS)
def test_mixed_feature_soak(method, target, draft, reference, one_torch_thread):
    totals = dict(preemptions=0, drafted=0, accepted=0, hits=0, aborted=0)
    for e in range(ENGINES):
        rng = random.Random(f"{method}-{e}")
        args = engine_args(rng, method, draft, tight=e == 0)
        llm = LLM(str(target), disable_progress_bar=True, **args)
        eng = llm.llm_engine
        for seed in range(SEEDS):
            specs = make_workload(rng.randrange(1 << 30), reference, 0.2 if e == 0 else 0.1)
            before = counters(eng)
            try:
                run_workload(eng, specs)
                for sp in specs:
                    check_request(sp, reference)
                check_no_leak(eng)
                check_counters(eng, before, specs)
            except AssertionError as err:
                raise AssertionError(f"engine {e} {args}, workload {seed}: {err}") from err
            totals["aborted"] += sum(sp.aborted for sp in specs)
        totals["preemptions"] += eng.scheduler.num_preemptions
        totals["drafted"] += eng.spec.stats.num_draft_tokens
        totals["accepted"] += eng.spec.stats.num_accepted_tokens
        totals["hits"] += eng.kv.num_hit_tokens
    # the soak exercised what it is for
    assert all(totals.values()), totals
    assert totals["accepted"] < totals["drafted"], totals  # some proposals were rejected

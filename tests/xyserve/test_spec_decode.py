"""Speculative decoding: config refusals, n-gram proposals, acceptance rules, engine identity."""

from __future__ import annotations

import math

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.config import EngineConfig
from xyserve.engine.request import Request
from xyserve.engine.sampler import SampleRow
from xyserve.spec.config import SpeculativeConfig
from xyserve.spec.decoder import CONTINUE_PRIOR, MIN_FIT_STEPS, PRIOR_ACCEPTANCE, SpecDecoder
from xyserve.spec.ngram import NgramProposer, propose_ngram
from xyserve.spec.verify import verify_tokens

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}


# ---- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, words",
    [
        ({"method": "medusa", "num_speculative_tokens": 2}, "unknown method"),
        ({"method": "foo"}, "unknown method"),  # the method first, then what it needs
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, "unknown keys"),
        ({"method": "ngram"}, "required"),
        ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4}, "exceed"),
        ({"method": "ngram", "num_speculative_tokens": 2, "model": "x"}, "takes no 'model'"),
        ({"method": "ngram", "num_speculative_tokens": 2, "tree_width": 3}, "for method 'tree'"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_branching": []}, "non-empty"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_branching": [8, 8]}, "at most"),
        (
            {"method": "tree", "num_speculative_tokens": 2, "tree_branching": [2], "tree_width": 3},
            "not both",
        ),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_nodes": 0}, "tree_nodes"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_beam": 2}, "dynamic trees"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_nodes": 3, "tree_beam": 0}, "beam"),
        # width 2, depth 2, beam 1: the root's 2 children, then 2 children of the best one
        ({"method": "tree", "num_speculative_tokens": 2, "tree_nodes": 5}, "grows at most 4 nodes"),
        (
            {"method": "tree", "num_speculative_tokens": 2, "tree_nodes": 7, "tree_beam": 2},
            "grows at most 6 nodes",
        ),
        # absurd sizes are refused before anything is built from them
        ({"method": "ngram", "num_speculative_tokens": 10**12}, "num_speculative_tokens"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_depth": 10**9}, "tree_depth"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_width": 400}, "tree_width"),
        ({"method": "tree", "num_speculative_tokens": 3, "tree_width": 40}, "120 nodes"),
        ({"method": "tree", "num_speculative_tokens": 40}, "80 nodes"),
        ({"method": "tree", "num_speculative_tokens": 2, "tree_branching": [10**12]}, "at most"),
        (
            {"method": "tree", "num_speculative_tokens": 2, "tree_branching": [64] * 10**6},
            "levels",
        ),
        ({"method": "draft_model", "num_speculative_tokens": 2, "model": 5}, "model must be"),
        ({"method": "draft_model", "num_speculative_tokens": 2, "model": ""}, "model must be"),
        ({"method": "ngram", "num_speculative_tokens": 2, "draft_token_map": False}, "takes no"),
        (
            {"method": "draft_model", "num_speculative_tokens": 2, "draft_token_map": True},
            "a token map file or false",
        ),
        (
            {"method": "draft_model", "num_speculative_tokens": 2, "draft_token_map": ""},
            "a token map file or false",
        ),
        ('{"method": ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_speculative_config_is_refused_by_name(bad, words):
    with pytest.raises(ValueError, match=words):
        EngineConfig(speculative_config=bad)


def test_dynamic_tree_nodes_up_to_what_the_tree_grows_are_accepted():
    from xyserve.spec.tree import max_candidates

    for beam, most in ((1, 4), (2, 6)):
        spec = {"method": "tree", "num_speculative_tokens": 2, "tree_beam": beam}
        cfg = SpeculativeConfig.parse({**spec, "tree_nodes": most})
        shape = cfg.tree_shape
        assert max_candidates(shape.branching, shape.beam, len(shape.branching)) == most


def test_speculative_config_accepts_vllm_keys_as_dict_or_json():
    c = EngineConfig(speculative_config='{"method": "ngram", "num_speculative_tokens": 3}')
    assert c.speculative_config["num_speculative_tokens"] == 3
    spec = SpeculativeConfig.parse(c.speculative_config)
    assert (spec.method, spec.prompt_lookup_min, spec.prompt_lookup_max) == ("ngram", 1, 3)


def test_server_flag_takes_json():
    from xyserve.server.cli import parse_args

    _, cfg = parse_args(
        ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}']
    )
    assert cfg.speculative_config["method"] == "ngram"
    with pytest.raises(SystemExit):
        parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 0}'])


# ---- n-gram proposals ---------------------------------------------------------------------
def _slow_ngram(tokens: list[int], k: int, lo: int, hi: int) -> list[int]:
    """The obvious loop: longest suffix n-gram first, then its latest earlier occurrence,
    whose continuation is copied token by token from the growing text (an overlapping copy)."""
    for n in range(min(hi, len(tokens) - 1), lo - 1, -1):
        suffix = tokens[-n:]
        for end in range(len(tokens) - 2, n - 2, -1):
            if tokens[end - n + 1 : end + 1] == suffix:
                text = list(tokens)
                for j in range(k):
                    text.append(text[end + 1 + j])
                return text[len(tokens) :]
    return []


def test_ngram_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        length = int(torch.randint(1, 40, (), generator=g))
        alphabet = int(torch.randint(2, 6, (), generator=g))
        toks = torch.randint(0, alphabet, (length,), generator=g).tolist()
        lo = int(torch.randint(1, 3, (), generator=g))
        hi = lo + int(torch.randint(0, 3, (), generator=g))
        assert propose_ngram(toks, 3, lo, hi) == _slow_ngram(toks, 3, lo, hi), (toks, lo, hi)
    assert propose_ngram([1, 2, 3, 4, 1, 2, 3], 3, 1, 3) == [4, 1, 2]
    assert propose_ngram([7, 8, 9], 3, 1, 3) == []
    # Period-2 text: the latest match is one period back, and the proposal keeps repeating.
    assert propose_ngram([5, 1, 2, 1, 2, 1, 2], 5, 1, 3) == [1, 2, 1, 2, 1]
    assert propose_ngram([1, 2, 3, 4, 1, 2, 3], 6, 1, 3) == [4, 1, 2, 3, 4, 1]


# ---- acceptance rules ---------------------------------------------------------------------
def _row(params: SamplingParams, gen=None, out=None) -> SampleRow:
    return SampleRow(params, [1, 2], list(out or []), gen, [])


def test_greedy_accepts_while_argmax_matches():
    logits = torch.full((4, 10), -5.0)
    for i, t in enumerate([3, 4, 7, 1]):
        logits[i, t] = 5.0
    res = verify_tokens(logits, [3, 4, 5], _row(SamplingParams(temperature=0)), [])
    assert (res.token_ids, res.num_accepted) == ([3, 4, 7], 2)
    res = verify_tokens(logits, [3, 4, 7], _row(SamplingParams(temperature=0)), [])
    assert (res.token_ids, res.num_accepted) == ([3, 4, 7, 1], 3)  # all accepted: the bonus


def test_a_steps_own_argmax_decides_plain_greedy_rows_only():
    """``verify_tokens(..., argmax)``: the step's argmax (the CPU fused call's) stands for a
    plain greedy request's rows; a penalised one scans its penalised logits itself."""
    logits = torch.full((3, 10), -5.0)
    for i, t in enumerate([3, 4, 7]):
        logits[i, t] = 5.0
    given = [3, 6, 2]  # differs from the logits' argmax at row 1: shows who reads it
    plain = _row(SamplingParams(temperature=0))
    res = verify_tokens(logits, [3, 4], plain, [], argmax=given)
    assert (res.token_ids, res.num_accepted) == ([3, 6], 1)
    assert verify_tokens(logits, [3, 4], plain, []).token_ids == [3, 4, 7]
    penalised = _row(SamplingParams(temperature=0, repetition_penalty=1.1))
    assert verify_tokens(logits, [3, 4], penalised, [], argmax=given).token_ids == [3, 4, 7]


def test_min_tokens_blocks_eos_inside_the_run():
    logits = torch.zeros((3, 10))
    logits[:, 0] = 9.0  # EOS is every row's argmax
    logits[:, 5] = 8.0
    p = SamplingParams(temperature=0, min_tokens=2)
    res = verify_tokens(logits, [5, 5], _row(p), [0])
    assert res.token_ids == [5, 5, 0]  # EOS blocked at positions 0 and 1 only


def _chi_square_ok(counts: torch.Tensor, expected: torch.Tensor) -> bool:
    """Pearson's test at p = 0.001 (Wilson-Hilferty critical value), bins with mass only."""
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token outside the target's support was emitted"
    obs, exp = counts[keep].double(), expected[keep].double()
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = int(keep.sum()) - 1
    z = 3.09
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat < crit


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_rejection_sampling_keeps_the_target_distribution(top_p):
    """The first emitted token is distributed as p, whatever the (one-hot or sampled) proposal."""
    torch.manual_seed(0)
    logits = torch.randn(3, 8) * 1.5
    params = SamplingParams(temperature=1.0, top_p=top_p)
    p = torch.softmax(logits[0], -1)
    if top_p < 1:
        from xyserve.engine.sampler import filter_logits

        p = torch.softmax(filter_logits(logits[0].clone(), params), -1)
    q = torch.softmax(torch.randn(2, 8), -1)
    # a draft with a token map (spec.token_map) proposes from part of the vocabulary only
    q_mapped = q * (torch.arange(8) % 2 == 0)
    q_mapped /= q_mapped.sum(-1, keepdim=True)
    gen = torch.Generator().manual_seed(1)
    trials = 4000
    for draft_probs in (None, q, q_mapped):
        counts = torch.zeros(8)
        accepted = 0
        for _ in range(trials):
            if draft_probs is None:
                draft = [int(torch.argmax(p))] * 2  # a deterministic proposal
            else:
                draft = [int(torch.multinomial(draft_probs[i], 1, generator=gen)) for i in range(2)]
            res = verify_tokens(logits, draft, _row(params, gen), [], draft_probs)
            counts[res.token_ids[0]] += 1
            accepted += res.num_accepted > 0
        assert 0 < accepted < trials  # both branches ran
        assert _chi_square_ok(counts, p * trials)


# ---- the engine ---------------------------------------------------------------------------
class OracleProposer:
    """Proposes a reference continuation, corrupted at some positions (tests only)."""

    def __init__(
        self, reference: dict[tuple[int, ...], list[int]], vocab: int, corrupt: bool = True
    ) -> None:
        self.reference = reference
        self.vocab = vocab
        self.corrupt = corrupt

    def propose(self, requests: list[Request], caps: dict[str, int]) -> dict[str, list[int]]:
        out = {}
        for r in requests:
            ref = self.reference[tuple(r.prompt_token_ids)]
            o = r.num_output_tokens
            toks = list(ref[o : o + caps[r.request_id]])
            if self.corrupt and toks and o % 3 == 1:  # a wrong last proposal: a partial acceptance
                toks[-1] = (toks[-1] + 1) % self.vocab
            if toks:
                out[r.request_id] = toks
        return out


def _prompts() -> list[list[int]]:
    shared = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    return [
        shared + [30 + i, 40, 41, 42, 30 + i, 40, 41] + [50 + i] * (3 * i) for i in range(6)
    ] + [[7, 8, 9, 7, 8, 9, 7, 8]]


ENGINE = dict(
    skip_tokenizer_init=True,
    max_num_batched_tokens=24,  # prompts are chunked
    block_size=4,
    num_kv_blocks=40,  # seven requests cannot all fit: preemption
    enable_prefix_caching=True,
)


def _generate(llm: LLM, prompts, params):
    return [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """Greedy outputs without speculation (and with logprobs), one engine for the module."""
    llm = LLM(str(tiny_llama), **ENGINE)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    return llm, _generate(llm, _prompts(), params)


# off: verify rows share steps with prefill chunks; on: they never do (split steps)
@pytest.mark.parametrize("split", ["off", "on"])
def test_greedy_ngram_output_identical_with_chunking_prefix_cache_preemption(
    tiny_llama, reference, split
):
    _, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, split_prefill_decode=split, **ENGINE)
    sched = llm.llm_engine.scheduler
    schedule, mixed = sched.schedule, []

    def spy():  # per step: a verify stage beside a prefill stage
        out = schedule()
        kinds = {st.num_spec_tokens > 0 for st in out.stages if st.num_spec_tokens or st.is_prefill}
        mixed.append(len(kinds) == 2)
        return out

    sched.schedule = spy
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    got = _generate(llm, _prompts(), params)
    assert any(mixed) == (split == "off")
    for a, b in zip(ref, got):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs):
            assert la.keys() == lb.keys()
            for t in la:
                assert la[t].logprob == pytest.approx(lb[t].logprob, abs=1e-4)
    eng = llm.llm_engine
    assert eng.scheduler.num_preemptions > 0
    assert eng.spec.stats.num_drafts > 0
    eng.kv.check_no_leak()


def test_oracle_proposals_accept_runs_and_stay_identical(tiny_llama, reference):
    ref_llm, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, **ENGINE)
    table = {tuple(p): o.token_ids for p, o in zip(_prompts(), ref)}
    llm.llm_engine.spec.proposer = OracleProposer(table, ref_llm.llm_engine.model.cfg.vocab_size)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = _generate(llm, _prompts(), params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    stats = llm.llm_engine.spec.stats
    assert stats.num_accepted_tokens > stats.num_drafts  # runs of several tokens were accepted
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens  # and some were rejected
    names = {m.name: m for m in llm.get_metrics()}
    assert names["xyserve:spec_decode_num_accepted_tokens"].value == stats.num_accepted_tokens
    per_pos = names["xyserve:spec_decode_num_accepted_tokens_per_pos"].values
    assert per_pos[0] >= per_pos[1] >= per_pos[-1] and sum(per_pos) == stats.num_accepted_tokens
    llm.llm_engine.kv.check_no_leak()

    # Stops and max_tokens inside an accepted run cut the output exactly where plain decoding
    # stops; min_tokens holds the stop back.
    prompts = _prompts()
    for case in range(3):
        params = []
        for o in ref:
            stop = [o.token_ids[5]]
            params.append(
                [
                    SamplingParams(temperature=0, max_tokens=24, stop_token_ids=stop),
                    SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
                    SamplingParams(temperature=0, max_tokens=24, stop_token_ids=stop, min_tokens=9),
                ][case]
            )
        want = _generate(ref_llm, prompts, params)
        have = _generate(llm, prompts, params)
        assert [(o.token_ids, o.finish_reason) for o in have] == [
            (o.token_ids, o.finish_reason) for o in want
        ]
        lengths = [len(o.token_ids) for o in want]
        assert [all(n <= 6 for n in lengths), all(n == 7 for n in lengths), min(lengths) >= 9][case]
    llm.llm_engine.kv.check_no_leak()


def test_no_leaked_blocks_after_aborts(tiny_llama, reference):
    ref_llm, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, **ENGINE)
    table = {tuple(p): o.token_ids for p, o in zip(_prompts(), ref)}
    eng = llm.llm_engine
    eng.spec.proposer = OracleProposer(table, ref_llm.llm_engine.model.cfg.vocab_size)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    ids = [eng.add_request({"prompt_token_ids": p}, params) for p in _prompts()]
    for step in range(12):
        eng.step()
        if step in (4, 8):
            eng.abort_request(ids[step // 4])
    while eng.has_unfinished_requests():
        eng.step()
    eng.kv.check_no_leak()
    assert eng.spec.stats.num_accepted_tokens > 0


def test_sampled_outputs_keep_the_distribution_in_the_engine(tiny_llama, reference):
    """Temperature 1 (and top-k), many seeds: tokens 2 and 3 agree with plain sampling."""
    ref_llm, ref = reference
    prompt = _prompts()[-1]
    greedy = {tuple(prompt): ref[-1].token_ids}
    n = 400
    params = [
        SamplingParams(temperature=1.0, top_k=3, max_tokens=4, ignore_eos=True, seed=s)
        for s in range(n)
    ]
    plain = LLM(str(tiny_llama), skip_tokenizer_init=True, max_num_seqs=256)
    spec = LLM(
        str(tiny_llama),
        skip_tokenizer_init=True,
        max_num_seqs=256,
        speculative_config={"method": "ngram", "num_speculative_tokens": 2, "adaptive": False},
    )
    spec.llm_engine.spec.proposer = OracleProposer(greedy, 10**6, corrupt=False)
    a = [o.outputs[0].token_ids for o in plain.generate([{"prompt_token_ids": prompt}] * n, params)]
    b = [o.outputs[0].token_ids for o in spec.generate([{"prompt_token_ids": prompt}] * n, params)]
    assert spec.llm_engine.spec.stats.num_accepted_tokens > 0
    for pos in (1, 2):
        ca, cb = _counts([t[pos] for t in a]), _counts([t[pos] for t in b])
        keys = sorted(set(ca) | set(cb))
        # Two-sample chi-square (equal sizes): sum (a - b)^2 / (a + b), df = bins - 1.
        stat = sum((ca.get(k, 0) - cb.get(k, 0)) ** 2 / (ca.get(k, 0) + cb.get(k, 0)) for k in keys)
        df = max(1, len(keys) - 1)
        crit = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
        assert stat < crit, (pos, ca, cb)


def _counts(xs: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def test_adaptive_allocation_speculates_less_in_a_large_batch():
    cfg = SpeculativeConfig("ngram", 4)
    dec = SpecDecoder(cfg, max_model_len=1000, budget=512)
    reqs = [Request(str(i), [1, 2, 3, 1, 2, 3, 1, 2], 50) for i in range(64)]
    for r in reqs:
        r.num_computed_tokens = r.num_tokens - 1
    dec.propose(reqs[:1])
    single = len(reqs[0].spec_token_ids)
    reqs[0].spec_token_ids = []
    dec.propose(reqs)
    batch = sum(len(r.spec_token_ids) for r in reqs) / len(reqs)
    assert single >= 3 and batch < single  # prior 0.5: long chains alone, fewer in a batch


def test_continuation_estimate_starts_at_its_prior_and_follows_what_verifies_show():
    """Depth j's chance given depth j - 1 was accepted: the prior before any verify, then the
    observed rate (a chain accepted in full raises it, one cut at that depth lowers it)."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    assert dec.continues(1) == pytest.approx(CONTINUE_PRIOR)
    dec.depth_tries[False][1] = 200  # depth 1 tried 200 times after depth 0, never kept
    assert dec.continues(1) < 0.05
    dec.depth_tries[False][2], dec.depth_hits[False][2] = 200, 200
    assert dec.continues(2) > 0.95
    assert dec.continues(1, in_run=True) == pytest.approx(CONTINUE_PRIOR)  # kept apart


def _chain_logits(tokens: list[int], vocab: int = 10) -> torch.Tensor:
    """Logits whose argmax row by row is ``tokens``."""
    logits = torch.full((len(tokens), vocab), -5.0)
    for i, t in enumerate(tokens):
        logits[i, t] = 5.0
    return logits


def test_chains_after_a_whole_accept_and_after_a_rejection_are_counted_apart():
    """A request whose last chain was accepted whole is in a run: its next chain's depths are
    counted (and estimated) apart from those of a request whose last chain was cut, and the
    allocation reads the estimate of the request's own state."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    greedy = _row(SamplingParams(temperature=0))
    # "a": whole chains (in a run from its second verify on); "b": cut after the first token
    for _ in range(30):
        assert (
            dec.verify("a", _chain_logits([3, 4, 5, 6, 7]), [3, 4, 5, 6], greedy, []).num_accepted
            == 4
        )
        assert (
            dec.verify("b", _chain_logits([3, 4, 5, 6, 7]), [3, 9, 9, 9], greedy, []).num_accepted
            == 1
        )
    assert dec.in_run == {"a": True, "b": False}
    assert dec.depth_tries[True][1] == dec.depth_hits[True][1] == 29  # a's first verify: no run
    assert dec.depth_hits[True][3] == 29
    assert dec.depth_tries[False][1] == 31 and dec.depth_hits[False][1] == 1
    assert dec.depth_tries[False][2] == 1  # b's chains stop at depth 1
    assert dec.continues(1, in_run=True) > 0.95 > 0.2 > dec.continues(1)
    # the allocation: a long chain for the request in a run, a short one for the other
    for rid in ("a", "b"):
        dec.acceptance[rid] = 0.5
    keep = dec._allocate(2, {"a": [1] * 4, "b": [1] * 4})
    assert keep["a"] == 4 and keep.get("b", 0) <= 1
    # an empty or partly accepted chain ends the run; a verify of a tree starts none
    dec.verify("a", _chain_logits([3, 4, 5]), [3, 9], greedy, [])
    assert not dec.in_run["a"]
    dec.verify("a", _chain_logits([3, 4]), [3], greedy, [], tree_parents=[-1])
    assert not dec.in_run["a"]


def test_a_new_request_starts_from_the_engines_first_proposal_acceptance():
    """A request of a few dozen tokens verifies too few chains for its own estimate to move far
    from where it starts: it starts from the share of first proposals the engine has seen
    accepted (over every request, smoothed toward PRIOR_ACCEPTANCE), not from 1 in 2."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    greedy = _row(SamplingParams(temperature=0))
    assert dec.prior() == PRIOR_ACCEPTANCE
    for i in range(36):  # 32 of 36 first proposals accepted, each on its own request
        draft = [3, 4] if i % 9 else [9, 4]
        dec.verify(f"old{i}", _chain_logits([3, 4, 5]), draft, greedy, [])
    assert dec.prior() == pytest.approx((32 + 4 * PRIOR_ACCEPTANCE) / 40)
    # a step-cost line of a fixed part worth 3 tokens, four requests decoding (the others
    # with proposals pending): the first level's bar is 4 in 7, which a fresh request clears
    # from the engine's estimate (0.85), and not from 1 in 2
    for size in (2, 4, 6):
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, 3e-4 + 1e-4 * size)
    assert dec._allocate(4, {"new": [1] * 4}).get("new", 0) >= 1
    dec.first_hits = dec.first_tries = 0
    assert dec._allocate(4, {"new": [1] * 4}) == {}
    # its own verifies then move its estimate from the engine's
    dec.first_hits, dec.first_tries = 32, 36
    dec.verify("new", _chain_logits([3, 4]), [9], greedy, [])
    assert dec.acceptance["new"] == pytest.approx(0.85 * (1 - 0.2))


def test_a_trees_verify_counts_how_far_the_drafts_own_chain_was_accepted():
    """The estimates are of the draft's own chain, and a tree's verify teaches them as that
    chain's verify would: how far its top chain (node 0, then each chain node's first child)
    was accepted, whatever sibling path the target took. (Counted from chains only, the
    engine's first-proposal share stayed at its prior under method tree, and once a step line
    with a small fixed part was fitted the allocation declined every step.)"""
    from xyserve.spec import tree

    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    greedy = _row(SamplingParams(temperature=0))
    parents = tree.from_branching([2, 1, 1])  # nodes 0,1 | 2,3 | 4,5; top chain 0, 2, 4
    assert tree.top_chain(parents) == [0, 2, 4]
    assert tree.top_chain((-1, 0, -1, 1, 0)) == [0, 1, 3]  # first children, not levels
    draft = [3, 4, 6, 7, 1, 2]
    # the target follows the top chain whole: three of three
    follow = _chain_logits([3, 6, 0, 1, 0, 9, 0])
    res = dec.verify("a", follow, draft, greedy, [], tree_parents=parents)
    assert res.path == [0, 2, 4]
    assert (dec.first_tries, dec.first_hits) == (1, 1)
    assert dec.depth_tries[False][1:3] == dec.depth_hits[False][1:3] == [1, 1]
    assert dec.acceptance["a"] > dec.prior() - 0.2  # three accepts from where it started
    # the target takes the sibling path (node 1, then 3): the top chain's first proposal is
    # rejected, though the verify accepted two tokens
    side = torch.full((7, 10), -5.0)
    side[0, 4] = side[2, 7] = side[4, 8] = 5.0
    res = dec.verify("b", side, draft, greedy, [], tree_parents=parents)
    assert (res.path, res.num_accepted) == ([1, 3], 2)
    assert (dec.first_tries, dec.first_hits) == (2, 1)
    assert dec.depth_tries[False][1] == 1  # nothing past a rejected first proposal
    assert dec.acceptance["b"] < PRIOR_ACCEPTANCE
    assert dec.in_run == {"a": False, "b": False}  # a tree starts no run


def test_a_batch_that_stopped_proposing_keeps_the_last_step_line():
    """A large batch that declines makes steps of one size: once the other sizes leave the
    cost model's horizon there is no line, and a few nearby sizes can fit a flat one. Either
    used to read as "speculation pays" (a default fixed cost, or tokens for free), and every
    request proposed at once, behind a catch-up pass over its tokens since its last proposal.
    The last line with a positive slope decides until the steps fit one again."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    for size in (1, 2, 3):  # a fixed part worth 5 tokens
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, 5e-4 + 1e-4 * size)
    line = dec.step_line()
    assert line == pytest.approx((5e-4, 1e-4))
    n = 64
    levels = {str(i): [1] * 4 for i in range(n)}
    dec.acceptance.update(dict.fromkeys(levels, 0.8))  # under the bar of 64 / (5 + 64)
    assert dec._allocate(n, levels) == {}
    for _ in range(dec.cost.horizon):  # only batch-64 steps since
        dec.cost.observe(n, 5e-4 + 1e-4 * n)
    assert dec.cost.line() is None and dec.step_line() == line
    assert dec._allocate(n, levels) == {}
    for i in range(2 * MIN_FIT_STEPS):  # nearby sizes whose noise fits a downward line
        dec.cost.observe(n - 1 + i % 2, 6e-3 - 1e-4 * (i % 2))
    assert dec.cost.line()[1] < 0 and dec.step_line() == line
    assert dec._allocate(n, levels) == {}
    for i in range(4 * MIN_FIT_STEPS):  # or a steep one with no fixed part (F = 0: bar 1)
        dec.cost.observe(n - 1 + i % 2, 8.4e-3 + 3e-4 * (i % 2))
    assert dec.cost.line()[0] < 0 and dec.step_line() == line
    for i in range(4 * MIN_FIT_STEPS):  # or a gentle one whose fixed part is 57 tokens
        dec.cost.observe(n - 1 + i % 2, 6e-3 + 5e-5 * (i % 2))
    ab = dec.cost.line()
    assert ab[0] > 0 and ab[1] > 0 and dec.step_line() == line
    assert dec._allocate(n, levels) == {}
    # ... at batch 1 a request that clears the kept line's bar still proposes
    dec.acceptance["one"] = 0.9
    assert dec._allocate(1, {"one": [1] * 4})
    # and a line with a positive fixed part and slope over spread sizes replaces it
    for size in (1, 2, 3):
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, 40e-4 + 1e-4 * size)
    assert dec.step_line() != line and dec._allocate(n, levels)


def test_a_line_with_no_fixed_part_is_not_kept_nor_read_as_free_steps():
    """Spread sizes can fit a line with no fixed part (noise): one below zero is not kept,
    and one barely above is read as ``MIN_FIXED_COST`` tokens, so that the first level's bar
    (n / (F + n)) stays below 1 and a request can still clear it."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    for size in (1, 3):
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, -1e-4 + 2e-4 * size)
    assert dec.cost.line()[0] < 0 and dec.step_line() is None
    for size in (1, 3):
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, 1e-7 + 1e-4 * size)
    assert dec.step_line() == pytest.approx((1e-7, 1e-4))
    dec.acceptance["r"] = 0.9
    assert dec._allocate(1, {"r": [1] * 4})


def test_a_declining_batch_probes_one_request_until_it_clears_the_bar():
    """Four requests, a bar of 4 in 7 (a fixed part of 3 tokens), first proposals mostly
    rejected: nothing clears the bar, so nothing would be proposed, observed, or revised. A
    probe gives one request one proposal after 64 declined steps, then 128, 256..., one request
    at a time; once a probe's proposal is accepted the next step probes again, until that
    request clears the bar and proposes on its own."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=2000, budget=512)
    greedy = _row(SamplingParams(temperature=0))
    for size in (2, 4, 6):
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, 3e-4 + 1e-4 * size)
    for i in range(40):  # 10 of 40 first proposals accepted
        dec.verify(f"old{i}", _chain_logits([3, 4, 5]), [3, 4] if i < 10 else [9, 4], greedy, [])
    dec.proposer_level_tokens = lambda requests=1: 0.0  # no price (not this machine's timing)
    reqs = [Request(str(i), [1, 2, 3] * 4, 1000) for i in range(4)]
    asked_at, longest = [], 0
    for step in range(500):
        for r in reqs:
            r.num_computed_tokens = r.num_tokens - 1
        dec.propose(reqs)
        asked = [r for r in reqs if r.spec_token_ids]
        assert len(asked) <= 1, step  # never the whole batch at once
        for r in asked:
            asked_at.append(step)
            toks = r.spec_token_ids
            longest = max(longest, len(toks))
            accept = step > 400  # rejected, until the third probe
            target = toks + [7] if accept else [t + 1 for t in toks] + [7]
            dec.verify(r.request_id, _chain_logits(target), toks, greedy, [])
            r.output_token_ids += target[: len(toks) if accept else 0]
            r.spec_token_ids = []
        for r in reqs:
            r.output_token_ids.append(1 + step % 3)
    assert asked_at[:3] == [63, 63 + 128, 63 + 128 + 256]
    n = len(asked_at)
    assert asked_at[3:] == list(range(448, 448 + n - 3))  # then every step
    assert 4 <= dec.num_probes <= 6 and longest > 1  # and then on its own, longer chains
    # where one request's proposal cannot pay whatever its acceptance (a level priced at a
    # token: 4.9 / 9 < 4 / 7), accepted probes stop once its estimate clears the bar
    dec.proposer_level_tokens = lambda requests=1: 1.0
    dec.acceptance["9"] = dec.prior()
    r = Request("9", [1, 2, 3] * 4, 1000)
    probes = dec.num_probes
    batch = [*reqs[:3], r]
    for step in range(200):
        for q in batch:
            q.num_computed_tokens = q.num_tokens - 1
        dec.declined_steps = dec.probe_every - 1 if step == 0 else dec.declined_steps
        dec.propose(batch)
        for q in batch:
            if q.spec_token_ids:
                toks = q.spec_token_ids
                dec.verify(q.request_id, _chain_logits(toks + [7]), toks, greedy, [])
                q.output_token_ids += toks
                q.spec_token_ids = []
            q.output_token_ids.append(1)
    assert 1 <= dec.num_probes - probes <= 6


def test_a_pass_cost_learned_in_large_batches_does_not_price_out_a_lone_request():
    """A proposer pass runs a row of each request it proposes for, so its cost is kept by that
    count: calls for 16 requests that cost 20 tokens' worth a pass do not price one request's
    proposals (say after a busy spell, a single user at batch 1) as if a pass still cost that.
    An unmeasured count takes the nearest one below it, or the fewest above it scaled down,
    so a guess errs low and the proposals it lets through measure the real cost."""
    dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
    for size in (1, 3, 5):  # a step line of a fixed part worth 4 tokens, 1e-4 s a token
        for _ in range(MIN_FIT_STEPS):
            dec.cost.observe(size, 4e-4 + 1e-4 * size)
    dec.acceptance["a"] = 0.7
    dec.pass_cost = {16: [2e-3 * 10, 10]}  # ten passes of 16 requests, 2 ms each: 20 tokens
    assert dec.proposer_level_tokens(16) == pytest.approx(20.0)
    assert dec.proposer_level_tokens(32) == pytest.approx(20.0)
    assert dec.proposer_level_tokens(1) == pytest.approx(20.0 / 16)
    assert dec._allocate(1, {"a": [1] * 4}).get("a", 0) >= 1
    dec.pass_cost[1] = [1e-3, 1]  # measured: 10 tokens a pass for one request
    assert dec.proposer_level_tokens(2) == pytest.approx(10.0)
    assert dec._allocate(1, {"a": [1] * 4}) == {}


def test_allocation_shortcut_gives_what_the_full_loop_gives():
    """``_allocate`` returns at once where no first level can pay (the requests' acceptance
    against the bar and the proposer pass); over random batches, acceptances, trees, step
    costs and proposer costs it must decide exactly as the full level-by-level loop does (and
    the shortcut must fire in some of them, with and without a proposer cost)."""
    g = torch.Generator().manual_seed(7)
    fired = 0
    by_pass = 0
    for trial in range(300):
        dec = SpecDecoder(SpeculativeConfig("ngram", 4), max_model_len=1000, budget=512)
        for size in (1, 2, 3):  # a step-cost line: a fixed part and a per-token slope
            for _ in range(MIN_FIT_STEPS):
                a_s, b_s = 1e-4 * (1 + trial % 9), 1e-5 * (1 + trial % 5)
                dec.cost.observe(size, a_s + b_s * size)
        # a proposer pass worth 0 to 6 tokens for fewer than 8 requests, 0 to 9 for more
        dec.pass_cost = {1: [(trial % 4) * 2 * b_s, 1], 8: [(trial % 7) * 1.5 * b_s, 1]}
        n = int(torch.randint(1, 40, (), generator=g))
        levels = {}
        for i in range(n):
            rid = str(i)
            dec.acceptance[rid] = float(torch.rand((), generator=g)) ** 3
            width = int(torch.randint(1, 3, (), generator=g))
            levels[rid] = [
                width * (j + 1) for j in range(int(torch.randint(1, 5, (), generator=g)))
            ]
        fast, full = dec._allocate(n, levels), dec._allocate(n, levels, shortcut=False)
        assert fast == full, (trial, fast, full)
        # the budget has room for every level here, so the test is exact, not only necessary
        firsts = {rid: sizes[0] for rid, sizes in levels.items()}
        assert dec._first_level_pays(n, levels, firsts) == bool(full), trial
        fired += not full
        if not full:  # count where only the proposer pass's cost kept every level out
            dec.pass_cost = {}
            by_pass += bool(dec._allocate(n, levels, shortcut=False))
    assert 0 < fired < 300
    assert by_pass > 0


# ---- draft model --------------------------------------------------------------------------
def test_draft_vocabulary_mismatch_and_missing_draft_are_refused(tiny_llama):
    spec = {"method": "draft_model", "num_speculative_tokens": 2, "model": "xy-tiny-draft"}
    with pytest.raises(ValueError, match="vocabulary"):
        LLM(str(tiny_llama), skip_tokenizer_init=True, speculative_config=spec)
    with pytest.raises(ValueError, match="'model' .* is required"):
        LLM(
            str(tiny_llama),
            skip_tokenizer_init=True,
            speculative_config={"method": "draft_model", "num_speculative_tokens": 2},
        )


def _map_file(tmp_path, **fields) -> str:
    import json

    from xyserve.spec.token_map import SCHEMA

    data = {"schema": SCHEMA, "vocab_size": 4096, "token_ids": list(range(1, 11)), **fields}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"vocab_size": 100}, "field 'vocab_size' is 100, but the draft has 4096"),
        ({"token_ids": [1, 4096]}, "outside the vocabulary of 4096: \\[4096\\]"),
        ({"token_ids": [1, 2**70]}, "outside the vocabulary of 4096"),
        ({"token_ids": [1, 2, 1]}, "repeats ids"),
        ({"token_ids": []}, "non-empty list"),
        ({"token_ids": [1, "a"]}, "non-empty list"),
        ({"schema": "xyserve.draft-token-map/9"}, "field 'schema'"),
    ],
)
def test_a_bad_draft_token_map_is_refused_naming_the_file_and_field(tmp_path, fields, words):
    from xyserve.spec.token_map import load_token_map

    path = _map_file(tmp_path, **fields)
    with pytest.raises(ValueError, match=words) as e:
        LLM(
            "xy-tiny",
            speculative_config={
                "method": "draft_model",
                "num_speculative_tokens": 2,
                "draft_token_map": path,
            },
        )
    assert path in str(e.value)
    with pytest.raises(ValueError, match="no such file"):
        load_token_map(tmp_path / "missing.json", 4096)


def test_a_token_map_on_a_draft_off_the_fused_path_is_refused(tmp_path):
    """The map lives in the fused call's packed lm_head: given for a draft that runs through
    the model runner (here in bfloat16), it is refused, not ignored; the draft's own map
    file is then left unused (that is the default, not a request)."""
    spec = {"method": "draft_model", "num_speculative_tokens": 2}
    with pytest.raises(ValueError, match="needs the fused draft forward"):
        LLM(
            "xy-tiny",
            dtype="bfloat16",
            speculative_config={**spec, "draft_token_map": _map_file(tmp_path)},
        )
    llm = LLM("xy-tiny", dtype="bfloat16", speculative_config=spec)
    assert llm.llm_engine.spec.proposer.fused is None


def test_a_tree_wider_than_the_drafts_token_map_is_refused(tmp_path):
    """A node's children are distinct tokens of the map (its 10 tokens, whatever the rows it
    is rounded up to on this host): a wider tree is refused, naming the map's file."""
    path = _map_file(tmp_path)
    spec = {"method": "tree", "num_speculative_tokens": 1, "draft_token_map": path}
    with pytest.raises(ValueError, match="tree_width is 11, but the draft's token map") as e:
        LLM("xy-tiny", speculative_config={**spec, "tree_width": 11})
    assert path in str(e.value) and "has 10 tokens" in str(e.value)
    llm = LLM("xy-tiny", speculative_config={**spec, "tree_width": 10})
    assert llm.llm_engine.spec.proposer.fused.map_size == 10


def test_token_map_command_keeps_the_most_frequent_tokens(tmp_path):
    import json

    from tokenizers import Tokenizer

    from xyserve.cli import main
    from xyserve.models import DEFAULT_DRAFT_MODEL, resolve_model
    from xyserve.spec.token_map import SCHEMA, load_token_map

    draft = resolve_model(DEFAULT_DRAFT_MODEL)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.py").write_text("def f(x):\n    return x + x\n" * 30)
    (texts / "b.txt").write_text("import os\n" * 50)
    (texts / "c.py").write_text("while True:\n    pass\n" * 5)
    out = tmp_path / "map.json"
    args = ["--model", str(draft), "--text", str(texts), "--pattern", "*.py", "--size", "6"]
    assert main(["token-map", *args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA and data["vocab_size"] == 4096
    tok = Tokenizer.from_file(str(draft / "tokenizer.json"))
    counts: dict[int, int] = {}
    for name in ("a.py", "c.py"):  # b.txt does not match the pattern
        for t in tok.encode((texts / name).read_text()).ids:
            counts[t] = counts.get(t, 0) + 1
    want = sorted(counts, key=lambda t: (-counts[t], t))[:6]
    assert data["token_ids"] == want
    assert load_token_map(out, 4096).tolist() == want
    with pytest.raises(SystemExit) as e:
        main(["token-map", "--model", str(draft), "--text", str(texts), "--size", "0"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    "bad,good,words",
    [
        ({"tree_width": 17}, {"tree_width": 16}, "tree_width is 17, but the draft's vocabulary"),
        ({"tree_width": 17, "tree_depth": 2, "tree_nodes": 20}, None, "tree_width is 17"),
        ({"tree_branching": [2, 17]}, {"tree_branching": [2, 16]}, "tree_branching entry is 17"),
    ],
)
def test_a_tree_wider_than_the_drafts_vocabulary_is_refused(tmp_path, bad, good, words):
    """A node's children are distinct draft tokens: a tree_width over the vocabulary (16
    tokens here) was accepted, and every proposal then carried tokens the draft never chose
    (none accepted past the first level)."""
    from tiny_models import build_model

    path = str(build_model(tmp_path, with_tokenizer=False, vocab_size=16))
    spec = {"method": "tree", "num_speculative_tokens": 2, "model": path}
    with pytest.raises(ValueError, match=words):
        LLM(path, skip_tokenizer_init=True, dtype="float32", speculative_config={**spec, **bad})
    if good is not None:  # as wide as the vocabulary: taken
        LLM(path, skip_tokenizer_init=True, dtype="float32", speculative_config={**spec, **good})


def test_draft_model_equal_to_target_accepts_everything_and_stays_identical(tiny_llama, reference):
    """The target as its own draft: every greedy proposal is accepted; caches do not leak."""
    _, ref = reference
    spec = {"method": "draft_model", "num_speculative_tokens": 3, "model": str(tiny_llama)}
    spec["adaptive"] = False  # k proposals every step
    llm = LLM(str(tiny_llama), speculative_config=spec, **ENGINE)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = _generate(llm, _prompts(), params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    stats = llm.llm_engine.spec.stats
    assert stats.num_drafts > 0 and stats.acceptance_rate > 0.95
    # Sampled: q equals p, so proposals are accepted (up to float) and outputs stay seeded.
    sampled = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=5)
    before = stats.num_accepted_tokens
    a = _generate(llm, _prompts()[:3], sampled)
    b = _generate(llm, _prompts()[:3], sampled)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert stats.num_accepted_tokens > before
    llm.llm_engine.kv.check_no_leak()
    llm.llm_engine.spec.proposer.kv.check_no_leak()


def test_a_seeded_sampled_request_gives_its_plain_output_whatever_is_proposed(
    tiny_llama, reference
):
    """A seeded sampled request gives the tokens it gives without speculation, with the
    adaptive controller on and in batches of any size: each position takes one draw from
    its generator however many tokens were proposed. (Its own proposals' acceptance drew
    extra numbers from the generator before, so outputs changed with the proposal lengths,
    which step timing and the batch decide: the same request run twice differed.)"""
    ref_llm, _ = reference
    prompts = _prompts()
    params = [
        SamplingParams(
            temperature=0.6 + 0.1 * (i % 3),
            top_p=0.95,
            presence_penalty=0.3 * (i % 2),
            max_tokens=16,
            ignore_eos=True,
            seed=11 + i,
        )
        for i in range(len(prompts))
    ]
    want = [o.token_ids for o in _generate(ref_llm, prompts, params)]
    draft = {"method": "draft_model", "num_speculative_tokens": 3, "model": str(tiny_llama)}
    for spec in (NGRAM, draft):
        llm = LLM(str(tiny_llama), speculative_config=spec, **ENGINE)
        for batch in (len(prompts), 2, len(prompts)):
            got = _generate(llm, prompts[:batch], params[:batch])
            assert [o.token_ids for o in got] == want[:batch], spec["method"]
        eng = llm.llm_engine
        assert eng.spec.stats.num_accepted_tokens > 0
        eng.kv.check_no_leak()


def test_an_abort_frees_the_drafts_blocks_at_once(tiny_llama):
    """An aborted request's draft state (its K/V blocks in the draft's cache) is freed with
    it, not at the next proposal: an engine left idle by the abort makes none."""
    spec = {"method": "draft_model", "num_speculative_tokens": 3, "model": str(tiny_llama)}
    llm = LLM(str(tiny_llama), speculative_config={**spec, "adaptive": False}, **ENGINE)
    eng = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    rid = eng.add_request({"prompt_token_ids": _prompts()[0]}, params)
    proposer = eng.spec.proposer
    while not proposer.shadows:  # until the draft holds blocks for it
        eng.step()
    assert proposer.kv.req_blocks
    eng.abort_request(rid)
    assert not eng.has_unfinished_requests()
    eng.kv.check_no_leak()
    proposer.kv.check_no_leak()
    assert not proposer.shadows and not eng.spec.acceptance


def test_bundled_pair_greedy_identity(tmp_path):
    """xy-tiny with its bundled draft (the default), as a chain and as a tree, and with a token
    map of 64 tokens (most target tokens outside it): the same greedy text in fewer steps."""
    import json

    from xyserve.models import DEFAULT_DRAFT_MODEL, resolve_model
    from xyserve.spec.token_map import FILE_NAME

    bundled = json.loads((resolve_model(DEFAULT_DRAFT_MODEL) / FILE_NAME).read_text())
    small = tmp_path / "map.json"
    small.write_text(json.dumps({**bundled, "token_ids": bundled["token_ids"][:64]}))
    prompts = ["def fibonacci(n):\n    ", "import os\nimport sys\n\n\ndef main():\n"]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    base = LLM("xy-tiny", disable_progress_bar=True)
    spec = LLM(
        "xy-tiny",
        disable_progress_bar=True,
        speculative_config={"method": "draft_model", "num_speculative_tokens": 4},
    )
    tree = LLM(
        "xy-tiny",
        disable_progress_bar=True,
        speculative_config={"method": "tree", "num_speculative_tokens": 4, "adaptive": False},
    )
    mapped = LLM(
        "xy-tiny",
        disable_progress_bar=True,
        speculative_config={
            "method": "draft_model",
            "num_speculative_tokens": 4,
            "adaptive": False,
            "draft_token_map": str(small),
        },
    )
    assert mapped.llm_engine.spec.proposer.fused.head_rows == 64
    a = base.generate(prompts, params)
    for llm in (spec, tree, mapped):
        b = llm.generate(prompts, params)
        assert [o.outputs[0].text for o in a] == [o.outputs[0].text for o in b]
        assert llm.llm_engine.num_steps < base.llm_engine.num_steps
        assert llm.llm_engine.spec.stats.num_accepted_tokens > 0
        llm.llm_engine.spec.proposer.kv.check_no_leak()


def test_the_samples_of_a_seeded_request_stay_independent_under_a_draft():
    """n = 2 at temperature 1, seeded, with the bundled draft proposing: the two samples of a
    request agree on a token about as often as without speculation (sum p^2)."""
    prompt = "def fibonacci(n):\n    "
    n = 400
    params = [
        SamplingParams(n=2, temperature=1.0, max_tokens=3, ignore_eos=True, seed=2 * s)
        for s in range(n)
    ]
    spec = {"method": "draft_model", "num_speculative_tokens": 4, "adaptive": False}
    agree = {}
    for name, cfg in (("plain", None), ("draft", spec)):
        llm = LLM("xy-tiny", disable_progress_bar=True, max_num_seqs=256, speculative_config=cfg)
        outs = llm.generate([prompt] * n, params, use_tqdm=False)
        agree[name] = sum(
            o.outputs[0].token_ids[p] == o.outputs[1].token_ids[p] for o in outs for p in (1, 2)
        )
        if cfg is not None:
            assert llm.llm_engine.spec.stats.num_accepted_tokens > 0
    a, b = agree["draft"], agree["plain"]
    assert (a - b) / math.sqrt(a + b) < 3.09, agree  # one-sided, p = 0.001


# ---- token trees --------------------------------------------------------------------------
def test_tree_shape_mask_and_moves():
    from xyserve.spec import tree

    # Branching [2, 1, 1]: two chains of three, in level order: 0,1 | 2,3 | 4,5.
    parents = tree.from_branching([2, 1, 1])
    assert parents == (-1, -1, 0, 1, 2, 3)
    assert tree.children(-1, 6, parents) == [0, 1] and tree.children(1, 6, parents) == [3]
    assert tree.children(3, 5, parents) == []  # a trimmed tree keeps its shape
    assert tree.stage_positions(10, 7, 6, parents) == [10, 11, 11, 12, 12, 13, 13]
    mask = tree.stage_mask(7, 6, parents)  # the root (last real token) then six nodes
    assert mask[0] == (True,) + (False,) * 6
    assert mask[4] == (True, False, True, False, True, False, False)  # node 3: root, 1, itself
    chain = tree.chain(3)
    assert chain == (-1, 0, 1) and tree.children(1, 3, chain) == tree.children(1, 3, None)
    assert tree.stage_mask(4, 3, chain) == tuple(
        tuple(j <= i for j in range(4)) for i in range(4)
    )  # a chain is causal
    with pytest.raises(ValueError, match="earlier node"):
        tree.validate((-1, 2, 0))
    # Accepted path 1 -> 3: node 1 moves from position 20+1 to 20+0, node 3 from 20+3 to
    # 20+1, all in the sixth block (physical block 1, slots 4..7).
    assert tree.path_moves([1, 3], 20, [5, 6, 7, 8, 9, 1], 4) == [(5, 4), (7, 5)]


def _dense_tree_reference(parents, context_len, lead):
    """Positions and mask from each node's full path of node ids (a node sees a node whose
    path is a prefix of its own): no parent walk shared with spec.tree."""
    paths = []
    for p in parents:
        paths.append((paths[p] if p >= 0 else ()) + (len(paths),))
    pos = list(range(context_len, context_len + lead)) + [
        context_len + lead + len(path) - 1 for path in paths
    ]
    n = lead + len(parents)
    mask = [
        [j <= i for j in range(n)] if i < lead else [j < lead for j in range(n)] for i in range(n)
    ]
    for i, pi in enumerate(paths):
        for j, pj in enumerate(paths):
            mask[lead + i][lead + j] = pi[: len(pj)] == pj
    return pos, tuple(tuple(r) for r in mask)


@pytest.mark.parametrize(
    "branching", [[1, 1, 1], [2, 1, 1, 1], [3, 2, 1], [2, 2, 2], [4], [1, 3, 1]]
)
def test_tree_mask_and_positions_match_a_dense_reference(branching):
    from xyserve.spec import tree

    parents = tree.from_branching(branching)
    tree.validate(parents)
    for lead in (1, 3):
        for num_spec in (len(parents), max(1, len(parents) - 2)):  # trimmed trees too
            pos, mask = _dense_tree_reference(parents[:num_spec], 7, lead)
            assert tree.stage_positions(7, lead + num_spec, num_spec, parents) == pos
            assert tree.stage_mask(lead + num_spec, num_spec, parents) == mask


def test_greedy_tree_accepts_the_longest_matching_path():
    from xyserve.spec import tree

    parents = tree.from_branching([2, 1, 1])  # nodes 0,1 | 2,3 | 4,5
    logits = torch.full((7, 10), -5.0)
    # Target argmax: root -> 4 (node 1), after node 1 -> 7 (node 3), after node 3 -> 8.
    logits[0, 4] = 5.0
    logits[2, 7] = 5.0
    logits[4, 8] = 5.0
    draft = [3, 4, 6, 7, 1, 2]
    res = verify_tokens(logits, draft, _row(SamplingParams(temperature=0)), [], None, parents)
    # The second chain is followed; node 5 (token 2) fails against 8: the target's token.
    assert (res.token_ids, res.num_accepted, res.path) == ([4, 7, 8], 2, [1, 3])


def test_tree_output_identical_with_chunking_prefix_cache_preemption(tiny_llama, reference):
    _, ref = reference
    spec = {"method": "tree", "num_speculative_tokens": 3, "tree_width": 3}
    spec["model"] = str(tiny_llama)
    llm = LLM(str(tiny_llama), speculative_config=spec, **ENGINE)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = _generate(llm, _prompts(), params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    assert llm.llm_engine.spec.stats.num_accepted_tokens > 0
    # Sampled requests get chains (verified with the draft's q) in the same engine.
    sampled = _generate(llm, _prompts()[:2], SamplingParams(max_tokens=8, seed=1))
    assert all(len(o.token_ids) > 0 for o in sampled)
    llm.llm_engine.kv.check_no_leak()
    llm.llm_engine.spec.proposer.kv.check_no_leak()


def test_dynamic_tree_output_identical_and_its_nodes_are_a_valid_tree(tiny_llama, reference):
    from xyserve.spec import tree

    _, ref = reference
    spec = {"method": "tree", "num_speculative_tokens": 4, "tree_width": 2, "tree_nodes": 5}
    spec["model"] = str(tiny_llama)
    llm = LLM(str(tiny_llama), speculative_config=spec, **ENGINE)
    seen = []
    decoder = llm.llm_engine.spec
    original = decoder.proposer.propose

    def spy(requests, caps):
        out = original(requests, caps)
        seen.extend((r.spec_tree_parents, out.get(r.request_id, [])) for r in requests)
        return out

    decoder.proposer.propose = spy
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = _generate(llm, _prompts(), params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    trees = [(p, toks) for p, toks in seen if p is not None]
    assert trees and all(len(p) == len(toks) <= 5 for p, toks in trees)
    for p, toks in trees:
        tree.validate(p)
        for node in range(len(p)):  # siblings are distinct tokens
            kids = tree.children(node - 1, len(p), p)
            assert len({toks[k] for k in kids}) == len(kids)
    assert any(tree.level_sizes(p) != [1] * len(p) for p, _ in trees)  # some do branch
    llm.llm_engine.kv.check_no_leak()
    llm.llm_engine.spec.proposer.kv.check_no_leak()


def test_a_tree_that_kept_only_its_top_chain_is_verified_as_a_chain():
    """A dynamic tree keeps its likeliest nodes; where those are one chain, the request is
    verified as a chain (causal rows, nothing to move after acceptance), and a tree that
    branches stays a tree."""

    class Shapes:
        def __init__(self, parents):
            self.parents = parents

        def propose(self, requests, caps):
            for r in requests:
                r.spec_tree_parents = self.parents
            return {r.request_id: [5, 6, 7][: len(self.parents)] for r in requests}

    cfg = SpeculativeConfig("tree", 4, adaptive=False, tree_nodes=3)
    for parents, kept in (((-1, 0, 1), None), ((-1, -1, 0), (-1, -1, 0))):
        dec = SpecDecoder(cfg, max_model_len=1000, budget=512, proposer=Shapes(parents))
        r = Request("a", [1, 2, 3, 4], 50)
        r.num_computed_tokens = r.num_tokens - 1
        dec.propose([r])
        assert (r.spec_token_ids, r.spec_tree_parents) == ([5, 6, 7], kept)


def test_a_tree_takes_no_more_slots_than_the_context_has_left(tiny_llama):
    """Each node of a token tree takes a K/V slot in the verify step, but only the tree's depth
    was capped by what the context has left: near max_model_len a tree of width 3 took more
    slots than max_model_len, more than a cache of max_model_len tokens (the least an engine
    runs with) holds, so a request alone preempted itself, was recomputed, and did so again
    step after step until its depth cap reached 0 (found by test_feature_soak). Now a tree
    keeps at most the nodes the context has slots for."""
    spec = {"method": "tree", "num_speculative_tokens": 3, "tree_width": 3, "adaptive": False}
    spec["model"] = str(tiny_llama)
    kw = dict(skip_tokenizer_init=True, block_size=4, max_model_len=32, tbt_target_ms=None)
    # a cache of max_model_len tokens, no prefix cache: a preempted request recomputes it all
    llm = LLM(
        str(tiny_llama), num_kv_blocks=8, enable_prefix_caching=False, speculative_config=spec, **kw
    )
    eng = llm.llm_engine
    schedule, kv_lens = eng.scheduler.schedule, []

    def spy():
        out = schedule()
        kv_lens.extend(st.kv_len for st in out.stages)
        return out

    eng.scheduler.schedule = spy
    prompt = _prompts()[0]  # 19 tokens: 13 to generate
    params = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    got = _generate(llm, [prompt], params)[0]
    want = _generate(LLM(str(tiny_llama), **kw), [prompt], params)[0]
    assert got.token_ids == want.token_ids and len(got.token_ids) == 13
    assert eng.spec.stats.num_accepted_tokens > 0
    assert max(kv_lens) <= 32 and eng.scheduler.num_preemptions == 0, max(kv_lens)
    eng.kv.check_no_leak()
    eng.spec.proposer.kv.check_no_leak()


def test_disable_by_batch_size_stops_proposals():
    cfg = SpeculativeConfig("ngram", 3, disable_by_batch_size=2, adaptive=False)
    dec = SpecDecoder(cfg, max_model_len=1000, budget=512)
    reqs = [Request(str(i), [1, 2, 3, 1, 2, 3, 1, 2], 50) for i in range(2)]
    for r in reqs:
        r.num_computed_tokens = r.num_tokens - 1
    dec.propose(reqs)
    assert all(not r.spec_token_ids for r in reqs)
    dec.propose(reqs[:1])
    assert reqs[0].spec_token_ids == [3, 1, 2]


def test_n_children_each_verify_their_own_proposals(tiny_llama, reference):
    ref_llm, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, **ENGINE)
    table = {tuple(p): o.token_ids for p, o in zip(_prompts(), ref)}
    llm.llm_engine.spec.proposer = OracleProposer(table, ref_llm.llm_engine.model.cfg.vocab_size)
    params = SamplingParams(n=2, temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts()[:3]], params)
    for o, r in zip(outs, ref):
        assert [c.token_ids for c in o.outputs] == [r.token_ids[:12]] * 2
    assert llm.llm_engine.spec.stats.num_accepted_tokens > 0
    llm.llm_engine.kv.check_no_leak()


def test_logit_bias_requests_decode_without_proposals(tiny_llama, reference):
    """Verification does not apply logit_bias, so such requests are never proposed for: their
    output equals the unspeculated engine's with the same bias."""
    base, _ = reference
    spec = {"method": "draft_model", "num_speculative_tokens": 3, "model": str(tiny_llama)}
    llm = LLM(str(tiny_llama), speculative_config=spec, **ENGINE)
    params = SamplingParams(
        temperature=0, max_tokens=12, ignore_eos=True, logit_bias={5: 100.0, 6: 50.0}
    )
    got = _generate(llm, _prompts()[:3], params)
    want = _generate(base, _prompts()[:3], params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert llm.llm_engine.spec.stats.num_drafts == 0
    llm.llm_engine.kv.check_no_leak()


class RaisingProposer:
    """Raises on every other call: a proposer bug must not fail the requests or the step."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    def propose(self, requests, caps):
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("proposer bug")
        return self.inner.propose(requests, caps)


def test_a_failing_proposer_costs_proposals_not_requests(tiny_llama, reference):
    _, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, **ENGINE)
    eng = llm.llm_engine
    eng.spec.proposer = RaisingProposer(eng.spec.proposer)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = _generate(llm, _prompts(), params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    assert all(o.finish_reason == "length" for o in got)
    assert eng.spec.proposer.calls > 2 and eng.spec.stats.num_drafts > 0
    assert eng.num_failed_requests == 0
    eng.kv.check_no_leak()


def test_a_proposer_failing_for_one_request_costs_that_requests_proposals_only(
    tiny_llama, reference, monkeypatch
):
    """The proposer raises whenever one request is in its batch: the batch's other requests
    still get their proposals that step (it is proposed again without that one), and that
    one decodes without proposals from then on; every output is the plain one."""
    ref_llm, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, **ENGINE)
    eng = llm.llm_engine
    table = {tuple(p): o.token_ids for p, o in zip(_prompts(), ref)}
    oracle = OracleProposer(table, ref_llm.llm_engine.model.cfg.vocab_size)
    bad_prompt = _prompts()[2]
    raised_at, proposed_at, bad_ids = set(), set(), set()

    def propose(requests, caps):
        for r in requests:
            if r.prompt_token_ids == bad_prompt:
                bad_ids.add(r.request_id)
                raised_at.add(eng.num_steps)
                raise RuntimeError("proposer bug for one request")
        got = oracle.propose(requests, caps)
        if got:
            proposed_at.add(eng.num_steps)
        return got

    monkeypatch.setattr(eng.spec.proposer, "propose", propose)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    got = _generate(llm, _prompts(), params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    assert len(bad_ids) == 1 and eng.num_failed_requests == 0
    assert len(raised_at) == 1 and raised_at <= proposed_at, (raised_at, proposed_at)
    assert not eng.spec.failed  # forgotten once the request finished
    eng.kv.check_no_leak()


def test_generation_token_count_excludes_tokens_cut_after_a_stop(tiny_llama, reference):
    """An accepted run that crosses a stop token is cut there; the counter counts the output."""
    ref_llm, ref = reference
    llm = LLM(str(tiny_llama), speculative_config=NGRAM, **ENGINE)
    eng = llm.llm_engine
    table = {tuple(p): o.token_ids for p, o in zip(_prompts(), ref)}
    eng.spec.proposer = OracleProposer(table, ref_llm.llm_engine.model.cfg.vocab_size, False)
    params = [
        SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[o.token_ids[5]]) for o in ref
    ]
    got = _generate(llm, _prompts(), params)
    assert all(o.finish_reason == "stop" for o in got)
    assert eng.spec.stats.num_accepted_tokens > 0
    assert eng.num_generation_tokens == sum(len(o.token_ids) for o in got)


def test_bench_spec_batches_cover_every_prompt():
    from xyserve.bench.spec import batch_groups, load_spec_workload

    prompts = list("abcdef")
    assert batch_groups(prompts, 1) == [[p] for p in prompts]
    assert batch_groups(prompts, 4) == [list("abcd"), list("efab")]
    assert batch_groups(prompts, 8) == [list("abcdefab")]
    for name in ("spec_code", "spec_quote"):
        assert load_spec_workload(name)["prompts"]


def test_bench_spec_names_a_missing_workload_without_a_traceback(capsys):
    from xyserve.bench import spec as bench_spec

    with pytest.raises(SystemExit) as exc:  # was a FileNotFoundError traceback
        bench_spec.main(["--workload", "nope"])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err


def test_bench_spec_builds_every_engine_with_the_dtype_asked(monkeypatch):
    """``bench spec --dtype`` reaches every engine it compares (a stand-in LLM records them;
    a dtype the engine does not know is the engine's own error)."""
    import xyserve
    from xyserve.bench import spec as bench_spec

    made: list[dict] = []

    class Stop(Exception):
        pass

    class Fake:
        def __init__(self, model, **kw):
            made.append(kw)

        def generate(self, *a, **k):
            raise Stop

    monkeypatch.setattr(xyserve, "LLM", Fake)
    with pytest.raises(Stop):  # stops at the warm-up, after building the engines
        bench_spec.main(["--dtype", "bfloat16", "--methods", "ngram", "--batch-sizes", "1"])
    assert [kw["dtype"] for kw in made] == ["bfloat16", "bfloat16"]
    assert (
        made[0]["speculative_config"] is None and made[1]["speculative_config"]["method"] == "ngram"
    )


def _timed_stand_in(monkeypatch, calls: list[str], seconds: float = 0.0) -> None:
    """``xyserve.LLM`` replaced by a stand-in whose ``generate`` records its method's name in
    ``calls``, takes one step and ``seconds``, and gives one token a prompt."""
    import time
    from types import SimpleNamespace

    import xyserve

    class Fake:
        def __init__(self, model, **kw):
            cfg = kw["speculative_config"]
            self.name = "none" if cfg is None else cfg["method"]
            self.llm_engine = SimpleNamespace(spec=None, num_steps=0)

        def generate(self, prompts, params, use_tqdm=True):
            calls.append(self.name)
            self.llm_engine.num_steps += 1
            time.sleep(seconds)
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1])]) for _ in prompts]

    monkeypatch.setattr(xyserve, "LLM", Fake)


def test_bench_spec_rotates_which_method_runs_first(monkeypatch):
    """Each round starts one method later, so no method always runs first in its round (the
    round's first run meets the machine as the previous round left it)."""
    from xyserve.bench import spec as bench_spec

    calls: list[str] = []
    _timed_stand_in(monkeypatch, calls)
    args = ["--workload", "spec_quote", "--methods", "ngram,tree", "--batch-sizes", "64"]
    bench_spec.main([*args, "--rounds", "4", "--min-seconds", "0"])
    timed = calls[3:]  # after each engine's warm-up; one batch of 64 a round
    assert timed == ["none", "ngram", "tree", "ngram", "tree", "none", "tree", "none", "ngram",
                     "none", "ngram", "tree"]  # fmt: skip


def test_bench_spec_adds_rounds_until_each_method_has_run_min_seconds(monkeypatch, capsys):
    """Two rounds of a large batch take a fraction of a second, and their ratios read 0.75 for
    the same steps: rounds are added until every method has run ``--min-seconds`` in all
    (here each run takes 10 ms: 0.05 s needs five), and the rows say how many ran."""
    from xyserve.bench import spec as bench_spec

    calls: list[str] = []
    _timed_stand_in(monkeypatch, calls, 0.01)
    args = ["--workload", "spec_quote", "--methods", "ngram", "--batch-sizes", "64"]
    bench_spec.main([*args, "--rounds", "2", "--min-seconds", "0.05"])
    rounds = len(calls[2:]) // 2  # after the warm-ups, a run of each method a round
    assert 5 <= rounds <= 7
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "rounds" and out[1].split()[-1] == str(rounds)
    calls.clear()
    monkeypatch.setattr(bench_spec, "MAX_ROUNDS", 3)
    bench_spec.main([*args, "--rounds", "2", "--min-seconds", "100"])
    assert len(calls[2:]) == 2 * 3


def test_bench_spec_loads_its_workload_once(monkeypatch):
    """``main`` loaded the workload to check it, then ``run`` loaded it again: now ``run``
    takes the one ``main`` loaded (a stand-in LLM stops at the warm-up, which has its prompts)."""
    import xyserve
    from xyserve.bench import spec as bench_spec

    loads: list[str] = []
    warmed: list[list[str]] = []
    real = bench_spec.load_spec_workload

    def counting(path):
        loads.append(path)
        return real(path)

    class Stop(Exception):
        pass

    class Fake:
        def __init__(self, model, **kw):
            pass

        def generate(self, prompts, *a, **k):
            warmed.append(prompts)
            raise Stop

    monkeypatch.setattr(bench_spec, "load_spec_workload", counting)
    monkeypatch.setattr(xyserve, "LLM", Fake)
    with pytest.raises(Stop):
        bench_spec.main(["--workload", "spec_quote", "--methods", "ngram", "--batch-sizes", "1"])
    assert loads == ["spec_quote"]
    assert warmed == [real("spec_quote")["prompts"][:2]]


def test_bench_spec_prints_the_median_of_the_rounds_ratios(capsys):
    """Beside the ratio of the best rounds (x none), the median of each round's ratio (x rnd):
    at batch 64 a run is short and the best rounds may come from different moments."""
    from xyserve.bench import spec as bench_spec

    row = {
        "batch": 64,
        "method": "ngram",
        "tok_s": 1000.0,
        "speedup": 1.10,
        "round_speedups": [0.9, 1.02, 1.2],
        "steps": 64,
        "step_ratio": 1.0,
        "acceptance": None,
        "mean_accepted_len": None,
        "draft_share": 0.01,
        "identical": True,
        "rounds": 3,
    }
    bench_spec._print_rows([row], header=True)
    head, line = capsys.readouterr().out.splitlines()
    assert head.split()[3:5] == ["x", "none"] and head.split()[5:7] == ["x", "rnd"]
    assert line.split()[3:5] == ["1.10", "1.02"]


def test_ngram_proposer_keeps_each_request_array_in_step():
    """The proposer's per-request arrays (appended to as requests grow, rebuilt where the
    tokens are not a continuation, dropped with the request) propose what ``propose_ngram``
    proposes from the request's whole token list."""
    proposer = NgramProposer(1, 3)
    g = torch.Generator().manual_seed(1)
    r = Request("a", torch.randint(0, 4, (5,), generator=g).tolist(), 200)
    for step in range(80):
        want = propose_ngram(r.all_token_ids, 4, 1, 3)
        assert proposer.propose([r], {"a": 4}).get("a", []) == want, step
        r.output_token_ids.extend(torch.randint(0, 4, (1 + step % 3,), generator=g).tolist())
    # the same id, other tokens (a stale array must not be extended): rebuilt from them
    r2 = Request("a", [9, 8, 9, 8], 50)
    assert proposer.propose([r2], {"a": 3})["a"] == propose_ngram(r2.all_token_ids, 3, 1, 3)
    proposer.release_except({"b"})
    assert not proposer._tokens


def test_ngram_proposer_rebuilds_for_a_new_request_under_a_reused_id():
    """A request id may be reused once its request has finished, and the new request can be
    running before the proposer next drops finished ones: its tokens are its own, even where
    they agree with the old request's at the old array's last token."""
    proposer = NgramProposer(1, 3)
    proposer.propose([Request("a", [1, 2, 1, 2, 5], 50)], {"a": 3})
    r2 = Request("a", [3, 4, 3, 4, 5], 50)  # the same token 5 at the old array's end
    r2.output_token_ids.append(3)
    want = propose_ngram(r2.all_token_ids, 3, 1, 3)
    assert want == [4, 5, 3]
    assert proposer.propose([r2], {"a": 3}).get("a", []) == want

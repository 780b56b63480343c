"""The speculation guard: proposing against not proposing, measured per batch size (spec.guard),
and the decoder under it. Timings are given, never read from the machine."""

from __future__ import annotations

import pytest
import torch

from xyserve import SamplingParams
from xyserve.engine.request import Request
from xyserve.engine.sampler import SampleRow
from xyserve.spec.config import SpeculativeConfig
from xyserve.spec.decoder import SpecDecoder
from xyserve.spec.guard import SpecGuard, throughput


def _drive(guard: SpecGuard, n: int, decisions: int, spec, plain) -> str:
    """``decisions`` at ``n``: each allowed one a cycle the controller proposed for (``spec``:
    (tokens, seconds), or a function of the decision's index), the others a cycle without
    proposals; the pattern of decisions, "s" or ".", as a string."""
    out = []
    for i in range(decisions):
        if guard.allows(n):
            tokens, seconds = spec(i) if callable(spec) else spec
            guard.observe(n, True, tokens, seconds)
            out.append("s")
        else:
            guard.observe(n, False, *plain)
            out.append(".")
    return "".join(out)


def test_a_losing_size_is_vetoed_and_measured_again_at_doubling_intervals():
    """Four requests that emit 8 tokens in 3 ms when proposing and 4 in 1 ms when not: after
    4 cycles of each the guard vetoes proposals for 8 decisions, then lets the controller
    propose through 4 cycles (set against the veto's own cycles), and vetoes again, for 16,
    then 32, and 32 (the cap)."""
    g = SpecGuard(window=4, min_interval=8, max_interval=32)
    got = _drive(g, 4, 108, (8, 0.003), (4, 0.001))
    # first measures: 4 proposing, 4 not; each veto holds for `interval` decisions after its
    # verdict, then the controller's next 4
    want = "ssss" + "...." + "." * 8 + "ssss" + "." * 16 + "ssss" + "." * 32 + "ssss" + "." * 32
    assert got == want
    assert g.num_vetoes == 4 and g.sizes[4].interval == 32
    # other sizes are apart: one request on its own is measured from scratch
    assert _drive(g, 1, 4, (3, 0.0015), (1, 0.001)) == "ssss"


def test_a_winning_size_keeps_proposing_and_rechecks_rarely():
    """One request: 3 tokens in 1.5 ms proposing, 1 in 1 ms not. The guard measures 4 cycles
    without proposals after the first 4, and again once each verdict's time is up: 8, 16,
    32 decisions later."""
    g = SpecGuard(window=4, min_interval=8, max_interval=32)
    got = _drive(g, 1, 80, (3, 0.0015), (1, 0.001))
    assert got.startswith("ssss....")
    assert got.count(".") == 4 * 4 and g.num_vetoes == 0  # four checks within 80 decisions
    runs = [len(r) for r in got.split(".") if r]
    assert runs[:4] == [4, 8, 16, 32]


def test_a_stall_does_not_decide_and_a_change_flips_the_verdict():
    g = SpecGuard(window=4, min_interval=8, max_interval=32)
    # a proposing cycle stalled by other load (40 ms) is left out: proposing still wins
    cycles = [(0, 3, 0.0015), (1, 3, 0.0015), (2, 3, 0.04), (3, 3, 0.0015)]
    assert throughput(cycles) == pytest.approx(2000)
    _drive(g, 2, 8, lambda i: (6, 0.04 if i == 1 else 0.002), (2, 0.001))
    assert g.sizes[2].won is True and g.num_vetoes == 0
    # then proposing turns dear (acceptance fell): the next check vetoes, with the least
    # interval again, and when it pays again the guard goes back to proposing
    _drive(g, 2, 12, (2, 0.004), (2, 0.001))
    assert g.sizes[2].won is False and g.sizes[2].interval == 8
    _drive(g, 2, 40, (8, 0.002), (2, 0.001))
    assert g.sizes[2].won is True and g.sizes[2].phase == "model"


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _TimedProposer:
    """Proposes ``[7] * cap``, at ``seconds`` of the clock per call."""

    def __init__(self, clock: _Clock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds
        self.calls = 0

    def propose(self, requests, caps):
        self.calls += 1
        self.clock.t += self.seconds
        return {r.request_id: [7] * caps[r.request_id] for r in requests}


def _run_decoder(proposer_seconds: float, steps: int = 400):
    """Four requests whose proposals (2 a step) are all accepted, so the allocation proposes
    every step; a step takes 1 ms whatever its size, a proposer call ``proposer_seconds``.
    Returns the decoder, the proposer's calls after each step's proposal round, request 0's
    acceptance estimate likewise, and whether each step was the guard's measure of no
    proposals, its veto or neither (the step line's observations before it)."""
    clock = _Clock()
    proposer = _TimedProposer(clock, proposer_seconds)
    dec = SpecDecoder(SpeculativeConfig("ngram", 2), 10_000, 512, proposer=proposer)
    dec.clock = clock
    # the model sees no price for the proposer
    dec.proposer_level_tokens = lambda requests=1: 0.0
    reqs = [Request(str(i), [1, 2, 3], 5000) for i in range(4)]
    calls, estimates, kinds = [], [], []
    for _ in range(steps):
        for r in reqs:
            r.num_computed_tokens = r.num_tokens - 1
        dec.propose(reqs)
        calls.append(proposer.calls)
        estimates.append(dec.acceptance.get("0"))
        phase = dec.guard.sizes[4].phase if dec.guard.sizes else None
        guarded = calls[-1] == (calls[-2] if len(calls) > 1 else 0)
        kinds.append((phase if guarded else "model", dec.cost.n))
        tokens = 0
        for r in reqs:  # the step: every proposal accepted
            toks, r.spec_token_ids = r.spec_token_ids, []
            if toks:
                dec.verify(r.request_id, _chain_logits(toks + [7]), toks, _greedy_row(), [])
            r.output_token_ids += toks + [7]
            tokens += 1 + len(toks)
        clock.t += 0.001
        dec.observe_step(tokens, 0.001)
    return dec, calls, estimates, kinds


def _chain_logits(tokens: list[int], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(tokens), vocab)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return logits


def _greedy_row() -> SampleRow:
    return SampleRow(SamplingParams(temperature=0), [1], [], None, [], None)


def test_the_decoder_stops_proposing_where_its_cycles_yield_less():
    """Each proposer call costs 5 ms against a 1 ms step: 12 tokens in 6 ms proposing, 4 in 1
    ms not. The guard vetoes: from then on the proposer runs only when the guard measures
    proposing again. Its steps leave the requests' estimates alone (no drift back to the
    prior), and no probe is run."""
    dec, calls, estimates, kinds = _run_decoder(0.005)
    assert dec.guard.num_vetoes >= 2 and dec.guard.sizes[4].won is False
    assert calls[-1] < 100  # proposing only while it is measured again: 16 of each interval
    vetoed = [s for s in range(1, 400) if calls[s] == calls[s - 1]]
    assert len(vetoed) > 250
    quiet = set(vetoed)  # (a step after a proposing one has its verify in the estimate)
    assert all(estimates[s] == estimates[s - 1] for s in vetoed if s - 1 in quiet)
    assert dec.num_probes == 0
    # measuring steps stay out of the step line, vetoed ones go in (the allocation's own
    # steps too)
    grew = [(kind, after - before) for (kind, before), (_, after) in zip(kinds, kinds[1:])]
    assert {g for k, g in grew if k == "plain"} == {0}
    assert {g for k, g in grew if k in ("veto", "model")} == {1}
    assert sum(k == "plain" for k, _ in grew) >= 16


def test_the_decoder_keeps_proposing_where_its_cycles_yield_more():
    """At 0.5 ms a call, proposing yields 12 tokens in 1.5 ms against 4 in 1 ms (the accepted
    proposals counted): no veto, and the proposer runs in every step but the guard's checks."""
    dec, calls, _, _ = _run_decoder(0.0005)
    assert dec.guard.num_vetoes == 0 and dec.guard.sizes[4].won is True
    # measures of 16 steps without proposals: after the first 16, then 128 and 256 decisions
    # after each verdict (two within 400 steps)
    assert calls[-1] == 400 - 2 * 16


def test_a_pass_whose_check_finds_no_recent_proposals_does_not_veto_for_good():
    """Proposing won; then the controller declined on its own for longer than the horizon (a
    stretch of text it could not predict), so when the pass's time was up there were no
    recent proposing cycles to compare. The guard must then let the controller decide again,
    not keep measuring steps without proposals."""
    g = SpecGuard(window=4, min_interval=8, max_interval=32)
    _drive(g, 3, 8, (9, 0.002), (3, 0.001))
    assert g.sizes[3].won is True
    for _ in range(200):  # the controller declines on its own
        g.allows(3)
        g.observe(3, False, 3, 0.001)
    got = _drive(g, 3, 200, (9, 0.002), (3, 0.001))
    assert got.count("s") > 150


def test_a_plain_phase_without_pure_steps_ends():
    """Steps the guard cannot time (other work in them: no cycle observed) do not keep a size
    in its phase of steps without proposals: after ``horizon`` decisions the controller
    decides again."""
    g = SpecGuard(window=4, min_interval=8, max_interval=32, horizon=20)
    _drive(g, 4, 4, (8, 0.002), (4, 0.001))
    assert g.sizes[4].phase == "plain"
    allowed = [g.allows(4) for _ in range(30)]  # nothing observed
    assert allowed == [False] * 20 + [True] * 10


def test_a_veto_ends_when_the_proposer_is_ready_or_after_its_length_again():
    g = SpecGuard(window=4, min_interval=8, max_interval=32)
    _drive(g, 4, 8, (8, 0.003), (4, 0.001))  # vetoed for 8 decisions
    assert g.sizes[4].phase == "veto"
    ready = iter([False, False, True])
    got = [g.allows(4, lambda: next(ready)) for _ in range(11)]
    assert got == [False] * 8 + [False, False, True]
    g = SpecGuard(window=4, min_interval=8, max_interval=32)
    _drive(g, 4, 8, (8, 0.003), (4, 0.001))
    got = [g.allows(4, lambda: False) for _ in range(17)]  # never ready: 8 more at most
    assert got == [False] * 16 + [True]


def test_sparse_timed_steps_do_not_keep_the_guard_measuring():
    """Where only one decision in ten ends in a step the guard can time (prefill chunks in
    the others), a measure of steps without proposals times out, and the next is asked for
    only after ``interval`` decisions, doubling: the controller's proposals (which win here)
    keep most decisions."""
    g = SpecGuard(window=4, min_interval=8, max_interval=1024, horizon=20)
    allowed = 0
    for i in range(4000):
        ok = g.allows(5)
        allowed += ok
        if i % 10 == 0:
            g.observe(5, ok, 10 if ok else 5, 0.001)
    assert allowed > 0.9 * 4000 and g.sizes[5].won is None  # (never measured: no verdict)


def test_a_catching_up_proposal_is_neither_sides_cycle():
    """A draft that lags more than PROBE_MAX_ROWS tokens a request (after a veto) pays for
    the proposals it skipped: that cycle is not set against steps without proposals."""
    clock = _Clock()
    proposer = _TimedProposer(clock, 0.0005)
    proposer.catch_up_rows = lambda r: 1000
    dec = SpecDecoder(SpeculativeConfig("ngram", 2), 10_000, 512, proposer=proposer)
    dec.clock = clock
    dec.proposer_level_tokens = lambda requests=1: 0.0
    reqs = [Request(str(i), [1, 2, 3], 5000) for i in range(4)]
    for _ in range(40):
        for r in reqs:
            r.num_computed_tokens = r.num_tokens - 1
        dec.propose(reqs)
        assert all(r.spec_token_ids for r in reqs)  # it proposes...
        for r in reqs:
            r.output_token_ids += r.spec_token_ids + [7]
            r.spec_token_ids = []
        clock.t += 0.001
        dec.observe_step(4 * 3, 0.001)
    size = dec.guard.sizes[4]
    assert not size.spec and size.phase == "model"  # ...and no cycle of it is timed


def test_a_veto_waits_for_a_fresh_draft_in_the_decoder():
    """A veto's time is up: the decoder asks ``_fresh`` and holds the veto while the draft
    lags, for at most its length again."""
    lengths = {}
    for fresh in (True, False):
        dec, _, _, _ = _run_decoder(0.005, steps=40)  # vetoed at 4 running requests
        size = dec.guard.sizes[4]
        assert size.phase == "veto"
        dec._fresh = lambda running, fresh=fresh: fresh
        proposer = dec.proposer
        reqs = [Request(str(i), [1, 2, 3], 5000) for i in range(4)]
        n = 0
        while True:  # until the controller proposes again
            for r in reqs:
                r.num_computed_tokens = r.num_tokens - 1
            before = proposer.calls
            dec.propose(reqs)
            for r in reqs:
                r.output_token_ids += r.spec_token_ids + [7]
                r.spec_token_ids = []
            dec.observe_step(4, 0.001)
            n += 1
            if proposer.calls > before:
                break
        lengths[fresh] = (n, size.interval)
    (n_fresh, interval), (n_lag, _) = lengths[True], lengths[False]
    assert n_lag - n_fresh == interval


def test_a_failed_proposers_state_is_released_at_the_next_call():
    """A proposer that raises for one request: that request decodes without proposals, and
    its proposer state is released at the next call though the running set did not change."""

    class Failing:
        def __init__(self) -> None:
            self.released: list[set[str]] = []

        def propose(self, requests, caps):
            if any(r.request_id == "bad" for r in requests):
                raise RuntimeError("planted")
            return {r.request_id: [7] for r in requests}

        def release_except(self, live: set[str]) -> None:
            self.released.append(set(live))

    proposer = Failing()
    dec = SpecDecoder(SpeculativeConfig("ngram", 2, adaptive=False), 10_000, 512, proposer)
    reqs = [Request(rid, [1, 2, 3], 5000) for rid in ("ok", "bad")]
    for r in reqs:
        r.num_computed_tokens = r.num_tokens - 1
    dec.propose(reqs)
    assert "bad" in dec.failed and reqs[0].spec_token_ids and not reqs[1].spec_token_ids
    reqs[0].spec_token_ids = []
    dec.propose(reqs)
    assert proposer.released[-1] == {"ok"}


def test_the_decoder_waits_for_a_fresh_draft_to_end_a_veto():
    """``_fresh``: a proposer whose cache lags more than PROBE_MAX_ROWS tokens a request."""
    from xyserve.spec.decoder import PROBE_MAX_ROWS

    class Lagging:
        def __init__(self) -> None:
            self.lag = 0

        def catch_up_rows(self, r) -> int:
            return self.lag

    dec = SpecDecoder(SpeculativeConfig("ngram", 2), 10_000, 512, proposer=Lagging())
    reqs = [Request(str(i), [1, 2, 3], 5000) for i in range(4)]
    dec.proposer.lag = PROBE_MAX_ROWS
    assert dec._fresh(reqs)
    dec.proposer.lag = PROBE_MAX_ROWS + 1
    assert not dec._fresh(reqs)


def test_fixed_length_speculation_has_no_guard():
    dec = SpecDecoder(SpeculativeConfig("ngram", 2, adaptive=False), 1000, 512)
    assert dec.guard is None

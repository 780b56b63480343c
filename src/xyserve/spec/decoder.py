"""The engine's speculation hook: propose after a step, verify inside the next one, count.

After each step, every request that is decoding (its last token sampled, not yet computed) gets
up to ``k`` proposed tokens in ``Request.spec_token_ids``; the scheduler then runs them as verify
tokens of the next hybrid step, within the same token budget as prefills and decodes. The
engine hands each verify stage's ``k + 1`` logits rows to :meth:`SpecDecoder.verify`.

Adaptive length: each request keeps an estimate ``a`` of the chance that one proposal is accepted
(moving average of its own verifies, from the share of first proposals the engine has seen
accepted over every request). Proposal ``j`` of a request (0-based) is then accepted with
about ``a ** (j + 1)``. A step's cost is modelled in target-token equivalents: ``F + T`` for
``T`` tokens, where ``F`` (the fixed cost of a step: weights streamed once, Python overhead) is
fitted online through the median recent step time of each size (rare stalls from other load
do not count; while the recent steps fit no line, the last one fitted), plus ``D`` per
proposer pass (one draft level for the whole batch; measured proposer seconds per pass over
the fitted seconds per token).
Levels are added one at a time, each request's proposal at that level in order of acceptance
chance, while the step's expected tokens per cost improve: at batch 1 ``F`` dominates and long
chains can pay; in a large batch only proposals likely to be accepted survive, down to none.
This is a model of the cost, decided before proposing (no draft pass is wasted), not a
measurement per step; ``adaptive=False`` keeps every proposal. The model is checked by
measurement (:mod:`xyserve.spec.guard`): at a batch size where steps with its proposals
yielded fewer tokens per second than steps without, the guard vetoes proposals for a while.
"""

from __future__ import annotations

import logging
import time

from xyserve.engine.request import Request
from xyserve.engine.sampler import SampleRow
from xyserve.engine.step_cost import MedianStepCost
from xyserve.spec import tree
from xyserve.spec.config import SpeculativeConfig
from xyserve.spec.guard import SpecGuard
from xyserve.spec.ngram import NgramProposer
from xyserve.spec.stats import SpecStats
from xyserve.spec.verify import VerifyResult, verify_tokens

PRIOR_ACCEPTANCE = 0.5  # a first proposal's acceptance before the engine has verified any
# How many observations' weight PRIOR_ACCEPTANCE keeps in the engine-wide estimate that a new
# request's own estimate starts from (``SpecDecoder.prior``).
PRIOR_WEIGHT = 4.0
# After this many adaptive steps in a row that propose nothing, one request (the one whose draft
# lags least, at most PROBE_MAX_ROWS tokens behind) gets one proposal: a probe of whether the
# acceptance has changed, since estimates that nothing tests cannot rise (an engine that
# stopped on a stretch of low acceptance would keep a verdict it can no longer revise). The
# interval doubles at each probe, up to PROBE_MAX_STEPS; a probe whose proposal is accepted is
# followed by another of the same request at the next step while its estimate is still under
# the bar (once over it, the allocation decides; the interval starts again when it proposes).
PROBE_MIN_STEPS = 64
PROBE_MAX_STEPS = 4096
PROBE_MAX_ROWS = 64
EMA_WEIGHT = 0.2  # weight of one accept/reject observation in the estimate
RECOVERY = 0.05  # per unverified proposal: how far the estimate drifts back to the prior
DEFAULT_FIXED_COST = 32.0  # F before enough steps are timed to fit it
# The least F read from a line: any step has a fixed part (its weights streamed once, its Python)
# worth a few tokens, and a noisy line read as almost none puts the first level's bar near 1,
# where no estimate can clear it again.
MIN_FIXED_COST = 2.0
# A line is kept (``step_line``) only if its step sizes span at least this factor: the medians
# of a few nearby sizes (a batch that stopped proposing, with one request's proposal now and
# then) can fit any slope.
MIN_LINE_SPAN = 2.0
# The chance that a chain's next proposal is accepted once the one before was, before any
# verify, and how many observations' weight it has: acceptance comes in runs (a quoted
# stretch, an easy phrase), so a fresh engine starts from 3 in 4, not from a coin toss
# (docs/perf.md, "The adaptive controller's first round").
CONTINUE_PRIOR = 0.75
CONTINUE_PRIOR_WEIGHT = 4.0
MIN_FIT_STEPS = 16
REFIT_EVERY = 8  # steps between refits of the cost line (``MedianStepCost.refit_every``)
MIN_SIZE_STEPS = 3  # steps of a size before it is a point of the line (``min_size_steps``)

log = logging.getLogger(__name__)


def fixed_tokens(line: tuple[float, float] | None) -> float:
    """A step's fixed cost in tokens' worth (a / b of the step-time line ``line``, whose slope
    is positive; None: none fitted yet)."""
    if line is None:
        return DEFAULT_FIXED_COST
    a, b = line
    return min(1e3, max(MIN_FIXED_COST, a / b))


class SpecDecoder:
    def __init__(
        self, config: SpeculativeConfig, max_model_len: int, budget: int, proposer=None
    ) -> None:
        self.config = config
        self.k = config.depth
        self.tree_sizes = config.tree_level_sizes()  # nodes per level of a greedy tree, or None
        self.max_model_len = max_model_len
        self.budget = budget
        self.stats = SpecStats(self.k)
        # Each step size's median recent time: rare stalls from other load do not count.
        self.cost = MedianStepCost(
            min_steps=MIN_FIT_STEPS, refit_every=REFIT_EVERY, min_size_steps=MIN_SIZE_STEPS
        )
        self._line: tuple[float, float] | None = None  # the last line kept (``step_line``)
        self.acceptance: dict[str, float] = {}
        # First proposals of chains verified so far, over every request, and how many were
        # accepted: where a request starts (and, while it does not propose, drifts back to).
        # A request of a few dozen tokens verifies too few chains to move its own estimate far
        # from where it starts, so the start is what the proposer has shown on the others.
        self.first_tries = 0
        self.first_hits = 0
        # Time inside the proposer's calls only, and their passes (the deepest proposal of
        # each call), by how many requests a call proposed for: a pass runs a row of each, so
        # a pass of a large batch costs more than one of a single request, and a cost learned
        # in large batches would price a lone request's proposals out for good (once they are
        # declined nothing measures them again). (The decoder's own bookkeeping runs every step
        # whether or not it proposes; counting it per level would make a level look dearer the
        # fewer levels are run, down to none.)
        self.pass_cost: dict[int, list[float]] = {}  # requests -> [seconds, passes]
        self.declined_steps = 0  # adaptive steps in a row that proposed nothing
        self.probe_every = PROBE_MIN_STEPS
        self.num_probes = 0
        self._probed: str | None = None  # the request of the last probe, until it is verified
        self._probe_again: str | None = None  # a request whose probe was accepted
        self._expected_tokens: int | None = None
        # The measured check on the allocation (spec.guard), adaptive only; the cycle being
        # run: (running requests, whether the allocation proposed, None for neither side's,
        # its start) where its step is all decode/verify rows; whether that step was all
        # decode/verify rows as expected (observe_step), and the proposals it accepted.
        self.guard = SpecGuard() if config.adaptive else None
        self.clock = time.perf_counter
        self._cycle: tuple[int, bool | None, float] | None = None
        self._step_pure = False
        self._measuring = False  # the next step is the guard's measure of no proposals
        self._accepted = 0
        self._live: set[str] = set()  # the running requests of the last call
        # Chains' acceptance at depth j given depth j - 1 was accepted, over every verify: easy
        # stretches of text make acceptance come in runs, so deeper proposals are accepted more
        # often than the per-request rate ``a`` raised to the depth would say. Kept apart by
        # whether the request's previous chain was accepted whole (``in_run``): inside a run
        # (a quoted stretch being copied) a chain tends to go on to its end, and after a
        # rejection it tends to stop soon, so one estimate over both would propose long
        # chains after rejections and short ones inside runs (docs/perf.md, "Chains after a
        # whole accept and after a rejection").
        self.depth_tries = [[0] * self.k, [0] * self.k]  # [in a run][depth]
        self.depth_hits = [[0] * self.k, [0] * self.k]
        self.in_run: dict[str, bool] = {}  # whether the request's last chain was accepted whole
        # Requests the proposer raised for on their own: they decode without proposals.
        self.failed: dict[str, Request] = {}
        # Anything with ``propose(requests, caps) -> {request_id: tokens}`` (at most caps[id]);
        # optionally ``release_except(live_ids)`` and ``probs(request_id, n)`` (the draft's q).
        self.proposer = proposer or NgramProposer(
            config.prompt_lookup_min, config.prompt_lookup_max
        )

    @classmethod
    def for_engine(cls, config: SpeculativeConfig, engine) -> SpecDecoder:
        """The decoder of a target engine, with the proposer its method names."""
        proposer = None
        if config.method in ("draft_model", "tree"):
            from xyserve.model.config import ModelConfig
            from xyserve.spec.draft import DraftModelProposer, resolve_draft_path

            ec = engine.config
            draft_path = resolve_draft_path(config.model, engine.model_path)
            config.check_draft_vocab(ModelConfig.from_dir(draft_path).vocab_size)
            proposer = DraftModelProposer(
                draft_path,
                engine.model.cfg,
                engine.device,
                engine.dtype,
                engine.kv.num_blocks,
                ec.block_size,
                ec.attention_backend,
                ec.gemm_backend,
                config.tree_shape,
                allow_tf32=ec.allow_tf32,
                token_map=config.draft_token_map,
            )
            fused = proposer.fused
            if fused is not None and fused.order is not None:  # the map's tokens, not padding
                config.check_draft_vocab(
                    fused.map_size, f"the draft's token map {proposer.token_map!r}"
                )
        return cls(config, engine.max_model_len, engine.config.max_num_batched_tokens, proposer)

    # ---- proposing --------------------------------------------------------------------
    def propose(self, running: list[Request]) -> None:
        """Fill ``spec_token_ids`` of decoding requests that have none pending."""
        now = self.clock()
        self._close_cycle(now)
        decoding = [r for r in running if r.num_computed_tokens == r.num_tokens - 1]
        pure = 0 < len(decoding) == len(running)
        try:
            self._propose(running, decoding, pure, now)
        finally:  # the next step's size if it is all decode/verify rows (see observe_step)
            self._expected_tokens = (
                len(running) + sum(len(r.spec_token_ids) for r in running) if pure else None
            )

    def _close_cycle(self, now: float) -> None:
        """Hand the guard the cycle that ends now, if its step was all decode/verify rows and
        its proposals (or none) were the allocation's."""
        cycle, self._cycle = self._cycle, None
        pure, self._step_pure = self._step_pure, False
        accepted, self._accepted = self._accepted, 0
        if cycle is None or not pure or cycle[1] is None:
            return
        n, proposed, start = cycle
        self.guard.observe(n, proposed, n + accepted, now - start)

    def release_except(self, live: set[str]) -> None:
        """Forget every request not in ``live``, and the proposer's state of a request it
        failed for: its estimates and the proposer's state (a draft's K/V blocks among it)."""
        self.failed = {rid: r for rid, r in self.failed.items() if rid in live}
        self._live = self._live & live
        live = live - self.failed.keys()
        self.acceptance = {rid: a for rid, a in self.acceptance.items() if rid in live}
        self.in_run = {rid: v for rid, v in self.in_run.items() if rid in live}
        if hasattr(self.proposer, "release_except"):
            self.proposer.release_except(live)

    def _propose(
        self, running: list[Request], decoding: list[Request], pure: bool, t0: float
    ) -> None:
        """``decoding``: the requests of ``running`` whose last token is sampled and not yet
        computed; ``pure``: all of them are."""
        by_id = {r.request_id: r for r in running}
        if self.failed:  # a finished request's id may come back on a new request: that one
            # may be proposed for
            self.failed = {rid: r for rid, r in self.failed.items() if by_id.get(rid) is r}
        if by_id.keys() != self._live:  # (what it holds is of running requests only)
            live = set(by_id)
            self.release_except(live)
            self._live = live
        if (
            self.config.adaptive
            and pure
            and not self.guard.allows(len(running), lambda: self._fresh(running))
        ):
            # the guard's step (a veto, or measuring steps without proposals): none, and the
            # acceptance estimates and probes as if the step were not run. A measuring step
            # is not one the allocation would choose, so it stays out of the step line too
            # (sizes the allocation does not make would tilt it: step times are not straight
            # in the size); a vetoed one keeps the line of the sizes it runs up to date.
            self._cycle = (len(running), False, t0)
            self._measuring = self.guard.measuring(len(running))
            self.stats.propose_seconds += self.clock() - t0
            return
        if self.failed:
            decoding = [r for r in decoding if r.request_id not in self.failed]
        limit = self.config.disable_by_batch_size
        if not decoding or (limit is not None and len(decoding) >= limit):
            return
        caps: dict[str, int] = {}
        k, room = self.k, self.max_model_len - 1
        for r in decoding:
            out = len(r.output_token_ids)
            cap = min(k, r.max_tokens - out - 1, room - len(r.prompt_token_ids) - out)
            if cap >= 1 and not r.spec_token_ids:
                caps[r.request_id] = cap
        keep = None
        offered = caps  # the requests that may propose this step
        if self.config.adaptive:  # decided before proposing: no draft pass is thrown away
            keep = {}
            if self._first_level_pays(len(decoding), caps):
                levels = {
                    r.request_id: self._levels(r, caps[r.request_id])
                    for r in decoding
                    if r.request_id in caps
                }
                keep = self._allocate(len(decoding), levels, shortcut=False)  # (checked above)
            prior = self.prior()
            for rid in caps:
                if not keep.get(rid):  # not verified, so not observed: drift back to the prior
                    a = self.acceptance.get(rid, prior)
                    self.acceptance[rid] = a + RECOVERY * (prior - a)
            caps = {rid: n for rid, n in keep.items() if n > 0}
            proposed: bool | None = bool(caps)
            if caps:
                self.declined_steps, self.probe_every = 0, PROBE_MIN_STEPS
            elif offered:  # declined: a probe where one is due
                caps = self._probe(decoding, offered)
                if caps:
                    proposed = None  # a probe's cycle is neither side's
            if pure:
                self._cycle = (len(running), proposed, t0)
        asking = [r for r in decoding if r.request_id in caps]
        for r in asking:
            r.spec_tree_parents = None  # the proposer sets a tree where it makes one
        proposals = {}
        if asking and self._cycle is not None and not self._fresh(asking):
            # a draft catching up on many tokens (after a veto, say): the cycle pays for
            # what the proposals before it skipped, so it is neither side's
            self._cycle = (self._cycle[0], None, t0)
        if asking:
            t1 = self.clock()
            proposals = self._propose_isolated(asking, caps)
            spent = self.clock() - t1
            acc = self.pass_cost.setdefault(len(asking), [0.0, 0])
            acc[0] += spent
            acc[1] += max(caps.values())
        for r in asking:
            toks = proposals.get(r.request_id)
            if toks:
                parents = r.spec_tree_parents
                cap = caps[r.request_id]
                if parents is None:
                    r.spec_token_ids = toks[:cap]
                else:  # nodes are ordered by depth: the first levels are a prefix
                    n = sum(1 for d in tree.depths(parents) if d < cap)
                    # and each node takes a K/V slot: no more than the context has left (a
                    # chain's cap says as much), else near max_model_len a request alone
                    # could need more slots than a cache of max_model_len tokens holds
                    n = min(n, self.max_model_len - r.num_tokens)
                    r.spec_token_ids = toks[:n]
                    parents = tuple(parents[:n])
                    # a dynamic tree that kept only its top chain is verified as a chain:
                    # causal rows, no accepted path to move, a chain's acceptance counts
                    r.spec_tree_parents = None if parents == tree.chain(n) else parents
        self.stats.propose_seconds += self.clock() - t0

    def _lag(self, r: Request) -> int:
        """Rows the proposer's first pass for ``r`` runs (its draft's cache lags behind
        requests it has not proposed for); 1 for a proposer without a cache."""
        rows = getattr(self.proposer, "catch_up_rows", None)
        return 1 if rows is None else rows(r)

    def _fresh(self, running: list[Request]) -> bool:
        """Whether the proposer can propose for ``running`` without first catching up on
        more than ``PROBE_MAX_ROWS`` tokens a request on average."""
        return sum(map(self._lag, running)) <= PROBE_MAX_ROWS * len(running)

    def _probe(self, decoding: list[Request], caps: dict[str, int]) -> dict[str, int]:
        """One step more without proposals; a probe (``PROBE_MIN_STEPS``) where it is due: the
        request to propose one level for, or nothing."""
        self.declined_steps += 1
        rid, self._probe_again = self._probe_again, None
        if (
            rid is None
            or rid not in caps
            or self._first_level_pays(len(decoding), [rid], with_pass=False)
        ):
            if self.declined_steps < self.probe_every:
                return {}
            lag = {r.request_id: self._lag(r) for r in decoding if r.request_id in caps}
            rid = min(lag, key=lag.get, default=None)
            if rid is None or lag[rid] > PROBE_MAX_ROWS:
                return {}
            self.probe_every = min(PROBE_MAX_STEPS, 2 * self.probe_every)
        self.declined_steps = 0
        self.num_probes += 1
        self._probed = rid
        return {rid: 1}

    def _propose_isolated(
        self, requests: list[Request], caps: dict[str, int]
    ) -> dict[str, list[int]]:
        """The proposer's proposals for ``requests``. Where it raises, the batch is proposed
        again in halves, down to the request it raises for alone: that one gets no proposals
        from then on (it decodes one token a step), the others keep theirs."""
        try:
            return self.proposer.propose(requests, caps)
        except Exception:
            if len(requests) == 1:
                r = requests[0]
                log.exception(
                    "speculative proposal for request %s failed; it decodes without proposals",
                    r.request_id,
                )
                self.failed[r.request_id] = r
                self._live = set()  # its state goes at the next call (release_except)
                r.spec_tree_parents = None
                return {}
        for r in requests:
            r.spec_tree_parents = None  # the failed call may have set some
        half = len(requests) // 2
        out = self._propose_isolated(requests[:half], caps)
        out.update(self._propose_isolated(requests[half:], caps))
        return out

    def _levels(self, r: Request, cap: int) -> list[int]:
        """Nodes per level of this request's proposals, for its first ``cap`` levels (all 1:
        a chain; sampled requests always get chains)."""
        p = r.sampling_params
        if self.tree_sizes is None or not (p is None or p.greedy):
            return [1] * cap
        return self.tree_sizes[:cap]

    def _allocate(
        self, num_decoding: int, levels: dict[str, list[int]], shortcut: bool = True
    ) -> dict[str, int]:
        """How many levels each request gets; see the module docstring. ``levels``: each
        request's nodes per level, at most. Whole levels are decided one at a time: a level
        costs its nodes (verify tokens) plus one proposer pass (shared by the batch).
        ``shortcut``: return at once where nothing can be taken (below; off where the caller
        checked that already, and in the test that checks it against the full loop)."""
        if shortcut and not self._first_level_pays(
            num_decoding, levels, {rid: sizes[0] for rid, sizes in levels.items() if sizes}
        ):
            return {}
        emitted = float(num_decoding)  # each decoding request emits one token anyway
        cost = fixed_tokens(self.step_line()) + num_decoding
        prior = self.prior()
        room = self.budget - num_decoding
        keep: dict[str, int] = {}
        reach = dict.fromkeys(levels, 1.0)  # chance that the accepted path gets this deep
        alive = set(levels)
        for lv in range(max((len(sizes) for sizes in levels.values()), default=0)):
            units = []
            for rid in alive:
                if lv >= len(levels[rid]):
                    continue
                n = levels[rid][lv]
                if lv == 0:
                    a = self.acceptance.get(rid, prior)
                else:
                    a = self.continues(lv, self.in_run.get(rid, False))
                # b alternatives per parent (the draft's top-b): one of them matches with about
                # 1 - (1 - a)^b, treating them as independent tries (an optimistic model).
                b = n / (levels[rid][lv - 1] if lv else 1)
                value = reach[rid] * (1.0 - (1.0 - a) ** b)
                units.append((value / n, value, n, rid))
            units.sort(key=lambda u: -u[0])
            take, gain, tokens = [], 0.0, 0
            for per_token, value, n, rid in units:
                if per_token <= emitted / cost or tokens + n > room:
                    break
                take.append(rid)
                gain += value
                tokens += n
                reach[rid] = value
            if not take:
                break
            level_cost = self.proposer_level_tokens(len(take))
            if (emitted + gain) / (cost + tokens + level_cost) <= emitted / cost:
                break
            emitted += gain
            cost += tokens + level_cost
            room -= tokens
            for rid in take:
                keep[rid] = keep.get(rid, 0) + 1
            alive = set(take)
        return keep

    def _first_level_pays(
        self,
        num_decoding: int,
        rids,
        first_nodes: dict[str, int] | None = None,
        with_pass: bool = True,
    ) -> bool:
        """Whether a first level can pay for any of ``rids`` (the allocation's first decision,
        from the acceptance estimates alone). Proposing one level for a set of requests pays
        when ``(E + sum v) / (C + sum n + L) > E / C``: ``E / C`` is the step's tokens per
        cost without proposals (the bar), ``v`` and ``n`` a request's unit value and nodes,
        ``L`` the proposer pass. That is ``sum (v - n * bar) > L * bar``, and each request can
        add at most ``max(0, v - n * bar)`` to it: where their sum does not clear ``L * bar``
        (``L`` of a pass for as many requests as add to it, as the allocation takes them all
        where the budget has room), the allocation takes nothing. Asked every step before the
        requests' levels are built, since in a large batch declining is the common case.
        ``first_nodes``: each request's nodes at the first level (None: a chain's 1 or the
        configured tree's first level, whichever gains more). ``with_pass=False``: whether any
        of them clears the bar, the proposer pass left out (where a pass costs more than one
        request's proposal can gain, this says whether its estimate alone is past the bar)."""
        bar = num_decoding / (fixed_tokens(self.step_line()) + num_decoding)
        widths = (1,) if self.tree_sizes is None else (1, self.tree_sizes[0])
        prior = self.prior()
        get = self.acceptance.get
        surplus, takers = 0.0, 0
        for rid in rids:
            a = get(rid, prior)
            if a <= bar:  # a unit's value per node is at most a: none of this request's clears
                continue
            if first_nodes is None:
                nodes = widths
            else:  # (a request with no level to take adds nothing)
                nodes = (first_nodes[rid],) if rid in first_nodes else ()
            gain = max(0.0, *(1.0 - (1.0 - a) ** n - n * bar for n in nodes))
            surplus += gain
            takers += gain > 0.0
        if not with_pass:
            return surplus > 0.0
        # (rounding: never say no where the loop would say yes)
        return takers > 0 and surplus > self.proposer_level_tokens(takers) * bar * (1.0 - 1e-9)

    def proposer_level_tokens(self, requests: int = 1) -> float:
        """One proposer pass (a draft level of ``requests`` requests) in target-token
        equivalents, over the step line's seconds per token: the seconds per pass of the calls
        that proposed for that many requests; for a count with no call yet, those of the
        nearest count below it, or of the fewest above it scaled down in proportion. A guess
        errs low, so the proposals it lets through time the real cost (one too high would
        decline every proposal and never be corrected). 0 before any call."""
        fit = self.step_line()
        if fit is None or not self.pass_cost:
            return 0.0
        below = [n for n in self.pass_cost if n <= requests]
        n = max(below) if below else min(self.pass_cost)
        seconds, passes = self.pass_cost[n]
        return (seconds / passes) * min(1.0, requests / n) / fit[1]

    def step_line(self) -> tuple[float, float] | None:
        """The step-time line (a, b), seconds and seconds per token: the current fit where it
        has a positive fixed part and slope over step sizes that span ``MIN_LINE_SPAN``, else
        the last one that had (None before any).

        The recent steps of a batch that stopped proposing are all of one size (no line) or
        of a few nearby ones, whose medians' noise can tilt the line any way. Read as "steps
        have ``DEFAULT_FIXED_COST``" or, from a flat line, "tokens cost nothing", either would
        make every request propose its whole chain at once, each behind a catch-up pass over
        every token since its last proposal, until a refit said no again; a steep one with no
        fixed part would put the first level's bar at 1 for good."""
        ab = self.cost.line()
        span = self.cost.span
        if ab is not None and ab[0] > 0 and ab[1] > 0 and span[1] >= MIN_LINE_SPAN * span[0]:
            self._line = ab
        return self._line

    def prior(self) -> float:
        """A request's acceptance estimate before its own verifies: the share of chains' first
        proposals accepted so far over every request, smoothed toward ``PRIOR_ACCEPTANCE``."""
        w = PRIOR_WEIGHT
        return (self.first_hits + w * PRIOR_ACCEPTANCE) / (self.first_tries + w)

    def continues(self, depth: int, in_run: bool = False) -> float:
        """The chance that a proposal at ``depth`` is accepted once the one before was, for a
        request whose previous chain was accepted whole (``in_run``) or not (observed over
        such chains, smoothed toward ``CONTINUE_PRIOR``: that before any observation)."""
        w = CONTINUE_PRIOR_WEIGHT
        hits, tries = self.depth_hits[in_run][depth], self.depth_tries[in_run][depth]
        return (hits + w * CONTINUE_PRIOR) / (tries + w)

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        """Time a step for the cost model, if it was only decode and verify rows (its size is
        the one :meth:`propose` expected): verify costs are judged on steps like the ones that
        speculation makes, not on prefill chunks, whose cost per token differs. A step of the
        guard's measuring no proposals stays out of it (see ``_propose``). Such a step also
        lets the guard time the cycle it ends (``_close_cycle``)."""
        if num_tokens == self._expected_tokens:
            if not self._measuring:
                self.cost.observe(num_tokens, seconds)
            self._step_pure = True
        self._expected_tokens = None
        self._measuring = False

    # ---- verifying --------------------------------------------------------------------
    def verify(
        self,
        request_id: str,
        logits,
        draft: list[int],
        row: SampleRow,
        min_tokens_blocked: list[int],
        tree_parents: tree.Parents | None = None,
        argmax: list[int] | None = None,
    ) -> VerifyResult:
        """Accept a prefix of ``draft`` against ``logits`` ([len(draft) + 1, V]) and count it
        (``argmax``: the rows' argmax where the step has it, see ``verify_tokens``)."""
        q = None
        if hasattr(self.proposer, "probs"):
            q = self.proposer.probs(request_id, len(draft))
        res = verify_tokens(logits, draft, row, min_tokens_blocked, q, tree_parents, argmax)
        self.stats.record(len(draft), res.num_accepted)
        self._accepted += res.num_accepted
        # The estimates are of the draft's own chain (a tree's top chain, ``tree.top_chain``):
        # how far its argmax path was accepted. The allocation prices a level's alternatives
        # from that chance, so a tree's verify teaches it as a chain's does.
        proposed, kept = len(draft), res.num_accepted
        if tree_parents is not None:
            chain = tree.top_chain(tree_parents[: len(draft)])
            proposed, kept = len(chain), 0
            while kept < min(len(chain), len(res.path)) and res.path[kept] == chain[kept]:
                kept += 1
        self.observe_acceptance(request_id, proposed, kept)
        if proposed:
            self.first_tries += 1
            self.first_hits += kept > 0
        if request_id == self._probed:
            self._probed = None
            if res.num_accepted > 0:  # it may have changed: probe it again at the next step
                self._probe_again = request_id
        run = self.in_run.get(request_id, False)  # (after a chain, or a chain-shaped tree)
        tries, hits = self.depth_tries[run], self.depth_hits[run]
        for j in range(1, min(proposed, kept + 1, self.k)):
            tries[j] += 1
            hits[j] += j < kept
        # a tree's accepted path says nothing about the next chain's, so it starts no run
        self.in_run[request_id] = tree_parents is None and res.num_accepted == len(draft) > 0
        return res

    def observe_acceptance(self, request_id: str, num_draft: int, num_accepted: int) -> None:
        """Move the request's acceptance estimate by its accepts and first reject."""
        a = self.acceptance.get(request_id, self.prior())
        for i in range(min(num_draft, num_accepted + 1)):
            a += EMA_WEIGHT * ((1.0 if i < num_accepted else 0.0) - a)
        self.acceptance[request_id] = a

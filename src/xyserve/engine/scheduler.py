"""Token-wise hybrid P/D/V scheduling under a fixed token budget. Pure Python (no torch).

Every step takes up to ``max_num_batched_tokens`` tokens, whatever their origin: the decode or
verify tokens of running requests and the next chunk of each prefill. A request's work in a step
is simply ``num_tokens_with_spec - num_computed_tokens`` (capped by the budget), so prefill,
decode and verify are not separate code paths, only different counts.

``hybrid`` (XY-Serve): prefill first, but ``num_reserved_decode_tokens`` of the budget stay for
decode/verify tokens whenever some wait; long prompts are chunked; a new prompt whose next
uncached block a running prefill is computing (the samples of ``n > 1``, one system prompt sent
by many) waits for it, to find it in the prefix cache instead of computing it again.
``baseline``: whole prefills in steps of their own, otherwise decode-only steps, no chunking.

Hybrid knobs besides the budget and the reserve:

- ``max_prefill_chunk_tokens``: the most prefill tokens one request gets in a step (None: the
  prefill share of the budget). Smaller chunks shorten the steps that decodes share with a
  long prompt (TBT) at the cost of more steps for that prompt (TTFT).
- ``admission_order``: ``fcfs``, or ``prefix_hit``: among the first ``ADMISSION_WINDOW``
  waiting requests, the one with the fewest tokens left to compute after its prefix-cache hit
  goes first (a cached system prompt or chat history makes a request cheap to start), so
  short work does not queue behind long prompts. A request passed over
  ``admission_max_skips`` times goes first, so nothing starves.
- ``partial_prefill_admission``: whether a new prompt may start with a partial chunk in a step
  that already carries other prefill work (filling the budget). Off, a new prompt joins such a
  step only if it fits whole; a prompt longer than the budget is still chunked when it
  leads. Where a step's cost grows with its tokens (CPUs), filling the budget lengthens the
  step, and with it the TTFT of the prompt it completes and the TBT of every decode in it.
- ``scheduling_policy`` (vLLM's): ``fcfs``, or ``priority``: requests are served by their
  ``priority`` (lower first), then as under FCFS. The waiting queue and the running list are
  kept in priority classes, each in the order FCFS keeps (a preempted request at the head of
  its class), so admission takes the best class first, ``prefix_hit`` reorders within a class
  only, decode blocks go to the best class first, and a request short of blocks preempts the
  lowest class's newest request, older or not. As in vLLM, a waiting request does not
  preempt running ones: it waits for a free sequence slot and free blocks.
- ``tbt_target_s`` (SLO-aware budget): when decode/verify tokens share the step, prefill takes
  only as many tokens as an online cost model (:class:`StepCostModel`, fitted to the measured
  durations of recent steps) says fit in the target; at least ``min_prefill_tokens`` so that
  prefill always progresses. Steps without decodes keep the whole budget, and so do steps
  whose decodes alone would overrun the target (a model too slow for it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.step_cost import StepCostModel


@dataclass
class ScheduledStage:
    request: Request
    num_tokens: int  # new tokens computed this step, speculative ones included
    num_spec_tokens: int  # trailing speculative tokens among them (verify)
    context_len: int  # tokens already computed before this step

    @property
    def kv_len(self) -> int:
        return self.context_len + self.num_tokens

    @property
    def is_prefill(self) -> bool:
        return self.num_tokens - self.num_spec_tokens > 1 or self.context_len < (
            self.request.num_prompt_tokens - 1
        )

    @property
    def samples(self) -> bool:
        """Whether this step reaches the request's last token, so a new token is sampled."""
        return self.kv_len == self.request.num_tokens_with_spec


@dataclass
class SchedulerOutput:
    stages: list[ScheduledStage] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # COW (src, dst, slots)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.stages)

    @property
    def is_empty(self) -> bool:
        return not self.stages

    @property
    def has_prompt_logits(self) -> bool:
        """Whether a stage computes prompt positions whose logits its request wants."""
        return any(prompt_logit_positions(st) for st in self.stages)


def prompt_logit_positions(st: ScheduledStage) -> range:
    """The positions of ``st`` whose logits give its request's prompt logprobs: each prompt
    position but the last, whose logits predict the next prompt token (the last one's
    predict the first output token, which the step samples)."""
    r = st.request
    if not r.prompt_logits:
        return range(0)
    return range(st.context_len, min(st.kv_len, r.num_prompt_tokens - 1))


POLICIES = ("hybrid", "baseline")
ADMISSION_ORDERS = ("fcfs", "prefix_hit")
SCHEDULING_POLICIES = ("fcfs", "priority")  # vLLM's: the order requests are served in


def default_reserve(budget: int) -> int:
    """Budget tokens kept for decode/verify work when none is given: a quarter, at least one."""
    return max(1, budget // 4)


def check_knobs(
    policy: str,
    num_reserved_decode_tokens: int | None,
    max_prefill_chunk_tokens: int | None,
    admission_order: str,
    admission_max_skips: int,
    scheduling_policy: str = "fcfs",
) -> None:
    """Refuse a bad scheduling argument with a ValueError naming it. The one check of these
    arguments: :class:`Scheduler` runs it, and so does ``EngineConfig`` (before a model loads)."""
    if policy not in POLICIES:
        raise ValueError(f"scheduler_policy must be one of {POLICIES}, got {policy!r}")
    if scheduling_policy not in SCHEDULING_POLICIES:
        raise ValueError(
            f"scheduling_policy must be one of {SCHEDULING_POLICIES}, got {scheduling_policy!r}"
        )
    for name, value in (
        ("num_reserved_decode_tokens", num_reserved_decode_tokens),
        ("max_prefill_chunk_tokens", max_prefill_chunk_tokens),
    ):  # None picks the default; a value below 1 is refused, not clamped
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (or unset for the default)")
    if admission_order not in ADMISSION_ORDERS:
        raise ValueError(f"admission_order must be one of {ADMISSION_ORDERS}")
    if admission_max_skips < 0:
        raise ValueError("admission_max_skips must be >= 0")


ADMISSION_WINDOW = 32  # waiting requests looked at by prefix_hit admission (bounds its cost)


def _class_index(queue: deque[Request] | list[Request], req: Request, head: bool) -> int:
    """Where ``req`` goes in a queue kept in priority classes (lower values first): at the
    head of its class, or at its end."""
    for i, r in enumerate(queue):
        if r.priority > req.priority or (head and r.priority == req.priority):
            return i
    return len(queue)


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        max_model_len: int,
        policy: str = "hybrid",
        num_reserved_decode_tokens: int | None = None,
        max_prefill_chunk_tokens: int | None = None,
        admission_order: str = "fcfs",
        admission_max_skips: int = 16,
        partial_prefill_admission: bool = True,
        tbt_target_s: float | None = None,
        min_prefill_tokens: int = 16,
        split_decode_rows: int | None = None,
        scheduling_policy: str = "fcfs",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        check_knobs(
            policy,
            num_reserved_decode_tokens,
            max_prefill_chunk_tokens,
            admission_order,
            admission_max_skips,
            scheduling_policy,
        )
        self.by_priority = scheduling_policy == "priority"
        self.chunk = max_prefill_chunk_tokens or max_num_batched_tokens
        self.admission_order = admission_order
        self.admission_max_skips = admission_max_skips
        self._skips: dict[str, int] = {}
        self.partial_prefill_admission = partial_prefill_admission
        if tbt_target_s is not None and not tbt_target_s > 0:
            raise ValueError("tbt_target_s must be positive")
        self.tbt_target_s = tbt_target_s
        self.min_prefill_tokens = max(1, min_prefill_tokens)
        if split_decode_rows is not None and split_decode_rows < 1:
            raise ValueError("split_decode_rows must be at least 1 (or None: never split)")
        self.split_decode_rows = split_decode_rows
        self._decodes_next = False  # split steps: the last step left the decodes for this one
        self.cost = StepCostModel()
        self._clock = clock
        self._step_started: tuple[float, int] | None = None  # (time, tokens) of the open step
        self.kv = kv
        self.budget = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.policy = policy
        self.reserve = num_reserved_decode_tokens or default_reserve(self.budget)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._rr = 0  # rotates which decodes go first when they exceed the budget
        self.num_preemptions = 0

    # ---- queue management -------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        if req.num_tokens > self.max_model_len:
            raise ValueError(
                f"prompt of {req.num_tokens} tokens exceeds max_model_len={self.max_model_len}"
            )
        self.requests[req.request_id] = req
        if self.by_priority:
            self.waiting.insert(_class_index(self.waiting, req, head=False), req)
        else:
            self.waiting.append(req)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        req.status = status
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self.kv.free(req)
        self._skips.pop(request_id, None)
        return req

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.running or self.waiting)

    # ---- scheduling -------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        schedule = self._schedule_baseline if self.policy == "baseline" else self._schedule_hybrid
        schedule(out)
        if not out.stages and out.preempted:
            # The requests it took were all preempted (the decodes' turn of split steps whose
            # one decode preempted itself, say): once more without them, rather than a step
            # that runs nothing while other work waits.
            schedule(out)
        out.copies = self.kv.take_copies()
        self._step_started = (self._clock(), out.num_tokens) if out.stages else None
        return out

    def _schedule_hybrid(self, out: SchedulerOutput) -> None:
        done: set[str] = set()
        decodes = [r for r in self.running if self._is_decoding(r)]
        prefills = [r for r in self.running if not self._is_decoding(r)]
        demand = sum(self._work(r) for r in decodes)
        # New prompts never take the blocks that running decodes need this step: a decode
        # short of blocks can only preempt requests not yet scheduled, and a new prompt
        # admitted first would leave the oldest running request to preempt itself.
        decode_blocks = sum(self.kv.blocks_needed(r, self._work(r)) for r in decodes)
        # Split steps: the decodes' turn after a prefill-only step (they waited one step), or
        # a prefill-only step now, if there is prefill work and the decodes are few enough.
        owed, self._decodes_next = self._decodes_next, False
        split = (
            not owed
            and bool(decodes)
            and self.split_decode_rows is not None
            and demand <= self.split_decode_rows
            and bool(prefills or self.waiting)
        )
        left = self.budget
        # a prefill-only step keeps no reserve: its decodes get the whole next step
        prefill_left = self.budget if split else self.budget - min(demand, self.reserve)
        if owed and decodes:
            prefill_left = 0
        # The step-time target caps a prefill-only step too: its decodes wait for it and then
        # for their own step, so prefill plus decode tokens stay within the target either way.
        if decodes and self.tbt_target_s is not None:
            fit = self.cost.max_tokens(self.tbt_target_s)
            # Unattainable (the decodes alone overrun the target): no cap, since shrinking
            # prefill would then only slow it without bringing any step within the target.
            if fit is not None and fit >= demand:
                cap = max(self.min_prefill_tokens, fit - demand)
                prefill_left = min(prefill_left, cap)
        age = {r.request_id: i for i, r in enumerate(self.running)}
        # 1. Chunks of running prefills, then new prompts (FCFS), within the prefill share.
        for r in prefills:
            if prefill_left <= 0 or r not in self.running:
                continue
            n = min(self._work(r), prefill_left, self.chunk)
            # Nor does a running prefill take the blocks of older decodes (it is not a victim
            # they may preempt once scheduled): short of blocks, it preempts newer ones or itself.
            older = sum(
                self.kv.blocks_needed(d, self._work(d))
                for d in decodes
                if age[d.request_id] < age[r.request_id] and d in self.running
            )
            if self._schedule_running(r, n, out, done, keep_free=older):
                prefill_left -= n
                left -= n
        while self.waiting and prefill_left > 0 and len(self.running) < self.max_num_seqs:
            self._order_waiting()
            if not self._skip_prefix_in_flight():
                break
            room = min(prefill_left, self.chunk)
            if not self.partial_prefill_admission and any(st.is_prefill for st in out.stages):
                head = self.waiting[0]
                if head.num_tokens_with_spec - self.kv.match_prefix(head).num_tokens > room:
                    break
            n = self._admit(self.waiting[0], room, out, done, chunk=True, keep_free=decode_blocks)
            if n == 0:
                break
            prefill_left -= n
            left -= n
        if split and out.stages:  # the decodes run next step, alone
            self._decodes_next = True
            return
        # 2. Decode/verify tokens of running requests fill the rest (at least the reserve).
        # The budget goes round-robin (no decode starves when their demand exceeds it); blocks
        # are then allocated oldest first, so a request short of blocks preempts newer ones.
        if decodes:
            k = self._rr % len(decodes)
            self._rr += 1
            chosen: list[tuple[Request, int]] = []
            for r in decodes[k:] + decodes[:k]:
                if r not in self.running or r.request_id in done:
                    continue
                n = self._fit(r, left)
                if n <= 0:
                    continue
                chosen.append((r, n))
                left -= n
            for r, n in sorted(chosen, key=lambda rn: age[rn[0].request_id]):
                if r in self.running:  # else preempted by an older one just now
                    self._schedule_running(r, n, out, done)

    def _schedule_baseline(self, out: SchedulerOutput) -> None:
        done: set[str] = set()
        left = self.budget
        while self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            whole = req.num_tokens_with_spec - self.kv.match_prefix(req).num_tokens
            if out.stages and whole > left:
                break
            # No chunking: a prompt longer than the budget still runs whole, alone.
            if self._admit(req, max(left, whole), out, done, chunk=False) == 0:
                break
            left -= whole
        if out.stages:
            return
        for r in list(self.running):
            if r not in self.running:
                continue
            n = self._fit(r, left)
            if n <= 0:
                break
            if self._schedule_running(r, n, out, done):
                left -= n

    def _order_waiting(self) -> None:
        """Bring the next request to admit to the head of ``waiting`` (prefix_hit order)."""
        if self.admission_order == "fcfs" or len(self.waiting) < 2:
            return
        head = self.waiting[0]
        # A preempted request resumes first, as under FCFS: preemption puts it back at the head
        # (the preempted ones are always a prefix of ``waiting``), and passing it over for
        # cheaper new work would make it the newest running request, the next one preempted.
        if head.num_preemptions or self._skips.get(head.request_id, 0) >= self.admission_max_skips:
            return
        window = [self.waiting[i] for i in range(self._window())]
        best = min(
            range(len(window)),
            key=lambda i: (
                window[i].num_tokens_with_spec - self.kv.match_prefix(window[i]).num_tokens,
                i,
            ),
        )
        if best == 0:
            return
        for r in window[:best]:
            self._skips[r.request_id] = self._skips.get(r.request_id, 0) + 1
        chosen = window[best]
        self.waiting.remove(chosen)
        self.waiting.appendleft(chosen)

    def _window(self) -> int:
        """How many waiting requests, from the head, admission may reorder: at most
        ``ADMISSION_WINDOW``, and under the priority policy those of the head's class only."""
        n = min(ADMISSION_WINDOW, len(self.waiting))
        if self.by_priority:
            p = self.waiting[0].priority
            n = next((i for i in range(n) if self.waiting[i].priority != p), n)
        return n

    def _skip_prefix_in_flight(self) -> bool:
        """Bring to the head of ``waiting`` the first request (of ``ADMISSION_WINDOW``) whose
        next uncached block no running prefill is computing; False if there is none.

        The samples of an ``n > 1`` request, and requests that arrive together with one system
        prompt, share their prompt's blocks; but a block is matchable only once the step that
        computes it has run. Admitted side by side, each would compute the whole shared
        prompt; held back until the first one's blocks are committed, the others find them in
        the prefix cache and compute only what is their own (vLLM shares them the same way,
        by caching a block when it is allocated). The one held back loses at most the steps of
        that prefill, which its hit gives back; a preempted request is never held back (it
        resumes first, as under FCFS)."""
        prefilling = [r for r in self.running if r.num_computed_tokens < r.num_prompt_tokens]
        if not self.kv.enable_prefix_caching or not prefilling:
            return True
        for i in range(self._window()):
            r = self.waiting[i]
            if r.num_preemptions or not self._prefix_in_flight(r, prefilling):
                if i:
                    del self.waiting[i]
                    self.waiting.appendleft(r)
                return True
        return False

    def _prefix_in_flight(self, req: Request, prefilling: list[Request]) -> bool:
        """Whether one of the running ``prefilling`` requests will compute the next whole
        block of ``req``'s prompt past its cached prefix (the same tokens from position 0),
        which ``req`` would otherwise compute again (never for a request that reads no
        cached prefix: it computes its whole prompt anyway).

        Only a request whose blocks continue ``req``'s cached prefix counts: one that computes
        that prefix again itself (it wants its prompt's logits, as the first sample of an
        ``n > 1`` request with prompt logprobs) makes private twins of the cached blocks, and
        of every block after them, which ``req`` can never match."""
        if req.prompt_logits:
            return False
        bs = self.kv.block_size
        match = self.kv.match_prefix(req)
        end = (match.num_tokens // bs + 1) * bs
        prompt = req.prompt_token_ids
        if end > len(prompt) - 1:  # no whole block left to share (the last token always runs)
            return False
        block = prompt[end - bs : end]
        last = len(match.blocks) - 1  # the cached prefix's last whole block
        for r in prefilling:
            other = r.prompt_token_ids
            table = self.kv.block_table(r.request_id)
            if last >= 0 and (len(table) <= last or table[last] != match.blocks[last].block_id):
                continue
            if (
                r.num_computed_tokens < end <= len(other)
                and other[end - bs : end] == block
                and other[: end - bs] == prompt[: end - bs]
            ):
                return True
        return False

    # ---- helpers ----------------------------------------------------------------------
    @staticmethod
    def _work(r: Request) -> int:
        return r.num_tokens_with_spec - r.num_computed_tokens

    @classmethod
    def _fit(cls, r: Request, left: int) -> int:
        """Tokens of running request ``r`` to schedule within ``left`` budget tokens: all its
        work if it fits; else, for a verify, its real token and the proposals that fit, the
        others dropped (so the stage still ends on its last token and samples); else 0.

        Both policies trim: ``adaptive: false`` proposes ``num_speculative_tokens`` whatever
        the budget, and a verify that never fits would otherwise never run."""
        n = cls._work(r)
        if n <= left:
            return n
        base = n - len(r.spec_token_ids)
        if not 0 < base <= left:
            return 0
        del r.spec_token_ids[left - base :]
        return left

    @staticmethod
    def _is_decoding(r: Request) -> bool:
        return r.num_computed_tokens >= r.num_tokens - 1

    def _stage(self, r: Request, n: int) -> ScheduledStage:
        spec = max(0, min(len(r.spec_token_ids), r.num_computed_tokens + n - r.num_tokens))
        return ScheduledStage(r, n, spec, r.num_computed_tokens)

    def _admit(
        self,
        req: Request,
        room: int,
        out: SchedulerOutput,
        done: set[str],
        chunk: bool,
        keep_free: int = 0,
    ) -> int:
        """Admit the head of ``waiting`` with up to ``room`` tokens, from free blocks only (never
        by preemption), leaving ``keep_free`` blocks for the running requests' tokens."""
        match = self.kv.match_prefix(req)
        work = req.num_tokens_with_spec - match.num_tokens
        n = min(work, room) if chunk else work
        if n <= 0 or not self.kv.allocate(req, n, match, keep_free):
            return 0
        self.waiting.popleft()
        self._skips.pop(req.request_id, None)
        req.num_computed_tokens = match.num_tokens
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = match.num_tokens
        req.status = RequestStatus.RUNNING
        if self.by_priority:  # the list's order is seniority: victims are taken from its end
            self.running.insert(_class_index(self.running, req, head=False), req)
        else:
            self.running.append(req)
        out.stages.append(self._stage(req, n))
        done.add(req.request_id)
        return n

    def _schedule_running(
        self, r: Request, n: int, out: SchedulerOutput, done: set[str], keep_free: int = 0
    ) -> bool:
        """Allocate room for ``n`` tokens of a running request (leaving ``keep_free`` blocks),
        preempting others if needed. Where only its own preemption would make room, a verify
        drops as many of its proposals as it takes instead: they are optional, and preempted
        it would lose its K/V for tokens it only might have kept."""
        while not self.kv.allocate(r, n, keep_free=keep_free):
            victim = self._pick_victim(done)
            if victim is None or victim is r:
                fits = self._drop_proposals(r, n, keep_free)
                if fits:
                    n = fits
                    break
                victim = r
            self._preempt(victim, out)
            if victim is r:
                return False
        out.stages.append(self._stage(r, n))
        done.add(r.request_id)
        return True

    def _drop_proposals(self, r: Request, n: int, keep_free: int) -> int:
        """The most of ``n`` tokens of ``r`` that fit once trailing proposals are dropped
        (allocated, the dropped ones removed; a tree keeps its first nodes, which are in level
        order, so still a tree), or 0 where its real tokens alone do not fit either."""
        spec = self._stage(r, n).num_spec_tokens
        for keep in range(spec - 1, -1, -1):
            if self.kv.allocate(r, n - spec + keep, keep_free=keep_free):
                del r.spec_token_ids[keep:]
                return n - spec + keep
        return 0

    def _pick_victim(self, done: set[str]) -> Request | None:
        # the end of the list goes first: the latest admitted (under the priority policy, of
        # the lowest class)
        for cand in reversed(self.running):
            if cand.request_id not in done:
                return cand
        return None

    def _preempt(self, r: Request, out: SchedulerOutput) -> None:
        """Free the request's blocks; it is recomputed later (its cached prefix may survive)."""
        self.running.remove(r)
        self.kv.free(r)
        r.num_computed_tokens = 0
        r.spec_token_ids = []
        r.status = RequestStatus.WAITING
        r.num_preemptions += 1
        self.num_preemptions += 1
        if self.by_priority:
            self.waiting.insert(_class_index(self.waiting, r, head=True), r)
        else:
            self.waiting.appendleft(r)
        out.preempted.append(r)

    # ---- after execution --------------------------------------------------------------
    def update(
        self, out: SchedulerOutput, sampled: dict[str, list[int]], num_accepted: dict | None = None
    ) -> None:
        """Advance progress by what ran, then append sampled tokens.

        ``sampled[req_id]`` holds the tokens to append (verify may append several).
        ``num_accepted[req_id]`` is how many speculative tokens were accepted; the rest of the
        proposed tokens are dropped (their K/V slots are simply overwritten later).
        """
        if self._step_started is not None:
            t0, tokens = self._step_started
            self.cost.observe(tokens, self._clock() - t0)
            self._step_started = None
        for st in out.stages:
            r = st.request
            if r.is_finished or r.request_id not in self.requests:
                continue
            r.num_computed_tokens += st.num_tokens
            if st.num_spec_tokens:
                acc = (num_accepted or {}).get(r.request_id, 0)
                r.output_token_ids.extend(r.spec_token_ids[:acc])
                r.num_computed_tokens -= st.num_spec_tokens - acc
                r.spec_token_ids = []
            self.kv.commit(r)
            r.output_token_ids.extend(sampled.get(r.request_id, []))

"""A measured check on the adaptive controller: proposing against not proposing, per batch size.

The controller (:mod:`xyserve.spec.decoder`) decides from a model of the costs: a straight
step-time line and a mean proposer pass. Where proposing is a close call (a few requests on a
CPU, where a verify row costs nearly what a decode row does), the model's error decides, and its
verdict flips with the fit. The guard measures what each choice yields instead.

A *cycle* is one proposal round and the step it fed, from one :meth:`SpecDecoder.propose` to
the next; its yield is the tokens that step emitted per second of the cycle. Cycles of pure
decode/verify steps are kept per number of running requests, apart by whether the controller
proposed (a probe's cycle counts as neither). Where proposing yielded less than not proposing,
the guard vetoes proposals at that batch size.

The two sides are compared from cycles next to each other in time, since the machine's speed
drifts: once the controller has proposed through ``window`` cycles at a size, the guard declines
there until it has ``window`` cycles without proposals (unless it has as many recent ones
already), then compares their throughputs (tokens over seconds, stalled cycles left out). A
verdict holds for ``interval`` decisions at that size, doubling while it repeats (up to
``max_interval``) and back to ``min_interval`` when it flips. Then the side not run is measured
again: after a veto, the controller's choice; after a pass, cycles without proposals.

Pure Python, no torch; the caller feeds it cycle times.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WINDOW = 16  # cycles of each side behind a verdict
MIN_INTERVAL = 128  # decisions at a size that a verdict holds for, at first
MAX_INTERVAL = 4096
# A cycle slower than this many times its side's median is a stall (other load on the machine,
# a collection), left out of the throughput.
STALL_FACTOR = 4.0


@dataclass
class _Size:
    """The guard's state at one batch size."""

    spec: deque  # (decision index, tokens, seconds) of cycles the controller proposed for
    plain: deque  # and of cycles without proposals
    decisions: int = 0
    phase: str = "model"  # "model": the controller decides; "plain": declining, to measure; "veto"
    pending: bool = True  # a comparison is wanted (none yet, or one side is being measured anew)
    until: int = 0  # the last decision that the current verdict holds for
    plain_since: int = 0  # the decision at which the current "plain" phase began
    retry_at: int = 0  # no "plain" phase before this decision (one timed out)
    interval: int = MIN_INTERVAL
    won: bool | None = None  # the last verdict: whether proposing yielded more


@dataclass
class SpecGuard:
    window: int = WINDOW
    min_interval: int = MIN_INTERVAL
    max_interval: int = MAX_INTERVAL
    # Samples older than this many decisions at their size do not compare with new ones.
    horizon: int = 8 * WINDOW
    sizes: dict[int, _Size] = field(default_factory=dict)
    num_vetoes: int = 0  # verdicts against proposing so far

    def _size(self, n: int) -> _Size:
        s = self.sizes.get(n)
        if s is None:
            s = self.sizes[n] = _Size(
                deque(maxlen=self.window), deque(maxlen=self.window), interval=self.min_interval
            )
        return s

    def allows(self, n: int, ready: Callable[[], bool] | None = None) -> bool:
        """One decision for a batch of ``n`` running requests: whether the controller may
        propose (False: the step runs without proposals). ``ready``: asked when
        a veto's time is up, whether proposing can be measured now (a draft that would first
        catch up on every token since the veto began would be measured at that cost; the
        veto then holds until it says yes, for at most its length again)."""
        s = self._size(n)
        s.decisions += 1
        if s.phase == "veto":
            if s.decisions <= s.until:
                return False
            if ready is not None and s.decisions <= s.until + s.interval and not ready():
                return False
            s.phase, s.pending = "model", True  # the controller's choice, measured anew
            s.spec.clear()
            return True
        if s.phase == "plain":
            if s.decisions - s.plain_since <= self.horizon:
                return False
            # too few pure steps to measure (other work in the steps): the controller decides,
            # and the next comparison is asked for no sooner than ``interval`` decisions on
            # (doubling while such measures keep failing), from proposing cycles measured anew
            s.phase = "model"
            s.retry_at = s.decisions + s.interval
            s.interval = min(self.max_interval, 2 * s.interval)
            s.spec.clear()
            return True
        if s.won and not s.pending and s.decisions > s.until:
            s.phase, s.pending = "plain", True  # a pass's time is up: measure no proposals
            s.plain_since = s.decisions
            s.plain.clear()
            return False
        return True

    def measuring(self, n: int) -> bool:
        """Whether the guard declines at ``n`` to measure steps without proposals (not a
        veto)."""
        s = self.sizes.get(n)
        return s is not None and s.phase == "plain"

    def observe(self, n: int, proposed: bool, tokens: int, seconds: float) -> None:
        """A cycle at ``n`` running requests: whether the controller proposed for it, the
        tokens its step emitted and its seconds."""
        if seconds <= 0.0:
            return
        s = self._size(n)
        (s.spec if proposed else s.plain).append((s.decisions, tokens, seconds))
        if not s.pending:
            return
        if s.phase == "plain":
            if len(s.plain) >= self.window:
                self._judge(n, s)
        elif proposed and len(s.spec) >= self.window:
            if self._recent(s, s.plain) >= self.window:
                self._judge(n, s)
            elif s.decisions >= s.retry_at:  # measure not proposing, next to these
                s.phase, s.plain_since = "plain", s.decisions
                s.plain.clear()

    def _recent(self, s: _Size, side: deque) -> int:
        return sum(1 for i, _, _ in side if i >= s.decisions - self.horizon)

    def _judge(self, n: int, s: _Size) -> None:
        s.pending = False
        if self._recent(s, s.spec) < self.window:
            # the controller stopped proposing here meanwhile: nothing to set against
            s.phase, s.pending = "model", True
            s.spec.clear()
            return
        spec, plain = throughput(s.spec), throughput(s.plain)
        won = spec >= plain
        s.interval = min(self.max_interval, 2 * s.interval) if won == s.won else self.min_interval
        if won != s.won:
            log.info(
                "speculation at %d running requests: %.0f tokens/s against %.0f without "
                "proposals; %s",
                n,
                spec,
                plain,
                "proposing" if won else "declining",
            )
        s.won = won
        s.phase = "model" if won else "veto"
        s.until = s.decisions + s.interval
        self.num_vetoes += not won


def throughput(cycles) -> float:
    """Tokens per second over ``cycles`` ((index, tokens, seconds)), stalls left out."""
    bar = STALL_FACTOR * statistics.median(sec for _, _, sec in cycles)
    kept = [(tok, sec) for _, tok, sec in cycles if sec <= bar]
    return sum(t for t, _ in kept) / sum(sec for _, sec in kept)

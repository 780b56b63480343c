"""Time accounting: where every PEA-microsecond of a run went, exactly.

  PEA time = busy + reconf + xfer + blocked + starved + waiting

- busy: computing (including the data-plane decision hold of the baseline);
- reconf: loading a configuration;
- xfer: reserved and waiting for input data (or for partner PEAs);
- blocked: back-pressure: every slot of its output buffer holds an unread result;
- starved: idle while some ready invocation is queued somewhere (work withheld from it);
- waiting: idle while nothing is ready anywhere (dependencies or arrivals limit).

The starved/waiting split needs "was any ready work queued at time x", kept as a step
function of the count of queued invocations (`queued`, kept by the core), with its running
integral (`mark` on each empty/non-empty transition).
"""

from __future__ import annotations

from bisect import bisect_right


class PeaTime:
    __slots__ = (
        "busy",
        "reconf",
        "xfer",
        "blocked",
        "starved",
        "waiting",
        "queued",
        "_mark_t",
        "_mark_cum",
        "_mark_on",
        "last_mark",
        "last_on",
    )

    def __init__(self, n_peas: int):
        self.busy = [0.0] * n_peas
        self.reconf = [0.0] * n_peas
        self.xfer = [0.0] * n_peas
        self.blocked = [0.0] * n_peas
        self.starved = [0.0] * n_peas
        self.waiting = [0.0] * n_peas
        self.queued = 0  # ready task invocations handed to the scheduler, not started
        # the "some ready work is queued" timeline: change times, integral up to each, state
        self._mark_t = [0.0]
        self._mark_cum = [0.0]
        self._mark_on = [False]
        # the last change: its time and state (_mark_t[-1], _mark_on[-1]), for `idle`'s common
        # case, which the core inlines
        self.last_mark, self.last_on = 0.0, False

    def split(self, p: int) -> tuple[float, float, float, float, float, float]:
        """PEA p's time by category: (busy, reconf, xfer, blocked, starved, waiting); after
        the run they sum to the makespan."""
        return (
            self.busy[p],
            self.reconf[p],
            self.xfer[p],
            self.blocked[p],
            self.starved[p],
            self.waiting[p],
        )

    def mark(self, t: float, on: bool) -> None:
        """The queue became non-empty (on) or empty (off) at t. The core keeps `queued` and
        calls this on the transitions (inlined there: it runs once per task)."""
        c = self._mark_cum[-1] + ((t - self._mark_t[-1]) if self._mark_on[-1] else 0.0)
        self._mark_t.append(t)
        self._mark_cum.append(c)
        self._mark_on.append(on)
        self.last_mark, self.last_on = t, on

    def _cum(self, x: float) -> float:
        i = bisect_right(self._mark_t, x) - 1
        return self._mark_cum[i] + ((x - self._mark_t[i]) if self._mark_on[i] else 0.0)

    def idle(self, p: int, a: float, b: float) -> None:
        """Account PEA p's idle interval [a, b) as starved or waiting."""
        if a >= self.last_mark:  # no change of the queue state inside [a, b): common case
            if self.last_on:
                self.starved[p] += b - a
            else:
                self.waiting[p] += b - a
            return
        s = self._cum(b) - self._cum(a)
        self.starved[p] += s
        self.waiting[p] += (b - a) - s

    def close(self, end: float, pea, is_blocked: list[bool]) -> None:
        """Account every PEA up to the makespan `end`."""
        for p in range(len(self.busy)):
            if is_blocked[p]:  # cannot happen once every reader ran; kept exact anyway
                self.blocked[p] += max(0.0, end - pea.idle_since[p])
                pea.idle_since[p] = end
            if pea.avail_at[p] > end:  # a pre-configuration still running at the end
                self.reconf[p] -= pea.avail_at[p] - end
                pea.idle_since[p] = end
            a = pea.idle_since[p]
            if end > a:
                self.idle(p, a, end)

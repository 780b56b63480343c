"""The event heap: plain tuples (time, seq, kind, payload) and their kinds.

`seq` breaks ties in FIFO order, so runs are deterministic. Kinds are small ints compared in
the dispatch loop (cheaper than an enum there).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from fractions import Fraction

TASK_DONE = 0  # payload: invocation whose compute ended
DECISION = 1  # payload: control-block invocation whose decision lands
ARRIVAL = 2  # open loop: the next instance arrives
TICK = 3  # the scheduler's periodic call
CALLBACK = 4  # payload: fn(t), a delayed scheduler action
UNBLOCK = 5  # payload: PEA whose output buffer has a free slot again


@dataclass(slots=True)
class EventHeap:
    heap: list[tuple] = field(default_factory=list)
    seq: int = 0

    def push(self, t: float, kind: int, x) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, x))


def tick_at_or_after(x: float, tick: float, target: float) -> tuple[float, int]:
    """The first of x, x + tick, (x + tick) + tick, ... that is >= target, each sum rounded
    as the event loop rounds it when it schedules the next tick, and how many come before
    it: (x_n, n). Raises OverflowError when the sums stop growing before target (x + tick
    rounds back to x).

    The cost grows with the number of binades crossed, not with n: inside a binade (floats
    of one exponent, spaced u apart) every sum rounds to a multiple of u, so after one step
    (which makes x / u even when tick / u ends in exactly one half, the tie of
    round-half-to-even) each further step adds the same multiple of u, until a sum leaves
    the binade. That run of steps is taken in one go, in exact rational arithmetic."""
    n = 0
    while x < target:
        y = x + tick
        if y <= x:
            raise OverflowError(f"ticks of {tick!r} no longer advance the clock at {x!r}")
        if y >= target:
            return y, n + 1
        z = y + tick
        if z >= target:
            return z, n + 2
        u = math.ulp(x)
        if math.ulp(y) != u or math.ulp(z) != u:  # a binade boundary: one step at a time
            x, n = y, n + 1
            continue
        d = Fraction(z) - Fraction(y)  # the step from z on, while the sums stay in the binade
        top = Fraction(2.0 ** math.frexp(x)[1])  # x, y and z lie in [top / 2, top)
        # step i (from z + (i - 1) d to z + i d) stays in the binade while its exact sum,
        # z + (i - 1) d + tick, is below top; the first multiple at or past target ends it
        fz = Fraction(z)
        i = math.ceil((top - Fraction(tick) - fz) / d)
        if target < math.inf:
            i = min(i, math.ceil((Fraction(target) - fz) / d))
        i = max(i, 0)
        x, n = float(fz + i * d), n + 2 + i
    return x, n

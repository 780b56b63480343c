"""The event heap: plain tuples (time, seq, kind, payload) and their kinds.

`seq` breaks ties in FIFO order, so runs are deterministic. Kinds are small ints compared in
the dispatch loop (cheaper than an enum there).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

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

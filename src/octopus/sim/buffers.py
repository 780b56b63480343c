"""Bounded output buffers and back-pressure.

A PEA keeps a finished task's result in one of `slots` output slots until every successor
that reads it point to point has read it (started). When all its slots are full the PEA is
blocked: it cannot take new work. A successor with several inputs is a join: it gathers its
inputs as they are produced, so they hold no slot. A control block with one input forwards
that input's slot to its own readers. `slots == 0` means unbounded: nothing is tracked.
"""

from __future__ import annotations


class OutputBuffers:
    __slots__ = (
        "slots",
        "used",
        "is_blocked",
        "n_readers",
        "readers_left",
        "holder",
        "hold_pea",
        "blocked_count",
        "blocked_at",
        "n_blocked",
        "spills",
        "blocked_events",
        "n_tasks",
        "pea_cluster",
    )

    def __init__(self, slots: int, n_peas: int, n_clusters: int, n_tasks: int, pea_cluster):
        self.slots = slots
        self.used = [0] * n_peas  # occupied output slots per PEA
        self.is_blocked = [False] * n_peas
        self.n_readers: list[int] = []  # per invocation: successors reading it point to point
        self.readers_left: list[int] = []  # per invocation: readers that have not read it
        self.holder: list[int] = []  # per invocation: invocation whose slot holds its data
        self.hold_pea: list[int] = []  # per invocation: PEA whose slot holds its output
        # blocked PEAs per (cluster, TB they ran): which TBs are choked by back-pressure
        self.blocked_count = [0] * (n_clusters * n_tasks)
        self.blocked_at = [-1] * n_peas  # index into blocked_count of a blocked PEA
        self.n_blocked = 0
        self.spills = 0
        self.blocked_events = 0
        self.n_tasks = n_tasks
        self.pea_cluster = pea_cluster

    def add_rows(self, m: int, base: int, preds: list[list[int]]) -> None:
        """Rows for m new invocations base, base + 1, ... whose predecessor lists are
        `preds`. A successor with a single input reads it point to point."""
        nr = [0] * m
        for ps in preds:
            if len(ps) == 1:
                nr[ps[0] - base] += 1
        self.n_readers.extend(nr)
        self.readers_left.extend([0] * m)
        self.holder.extend([-1] * m)
        self.hold_pea.extend([-1] * m)

    def hold(self, k: int, p0: int, tb: int) -> bool:
        """k finished on lead PEA p0: keep its result in a slot if anyone reads it. Returns
        whether p0 is now blocked (its buffer is full)."""
        r = self.n_readers[k]
        if not r:
            return False
        self.readers_left[k] = r
        self.holder[k] = k
        self.hold_pea[k] = p0
        self.used[p0] += 1
        if self.used[p0] < self.slots:
            return False
        self.is_blocked[p0] = True
        self.n_blocked += 1
        i = self.pea_cluster[p0] * self.n_tasks + tb
        self.blocked_at[p0] = i
        self.blocked_count[i] += 1
        self.blocked_events += 1
        return True

    def read(self, j: int) -> int:
        """A reader of j's point-to-point data started. Returns the PEA it unblocked, or -1."""
        h = self.holder[j]
        if h < 0:
            return -1
        self.readers_left[h] -= 1
        if self.readers_left[h] == 0:
            return self.free(h)
        return -1

    def forward(self, k: int, j: int) -> int:
        """Control block k with single input j forwards j's slot to k's readers. Returns the
        PEA it unblocked, or -1."""
        h = self.holder[j]
        if h < 0:
            return -1
        self.holder[k] = h
        self.readers_left[h] += self.n_readers[k] - 1
        if self.readers_left[h] == 0:
            return self.free(h)
        return -1

    def free(self, h: int) -> int:
        """Release h's slot. Returns the PEA it unblocked, or -1."""
        q = self.hold_pea[h]
        if q < 0:
            return -1
        self.hold_pea[h] = -1
        self.used[q] -= 1
        if self.is_blocked[q] and self.used[q] < self.slots:
            self.is_blocked[q] = False
            self.n_blocked -= 1
            self.blocked_count[self.blocked_at[q]] -= 1
            return q
        return -1

    def spill(self) -> list[int]:
        """Deadlock recovery: every blocked buffer spills to memory (readers still pay the
        transfer from the producing PEA). Returns the PEAs released."""
        blk = [p for p, b in enumerate(self.is_blocked) if b]
        bs = set(blk)
        hp = self.hold_pea
        for h, q in enumerate(hp):
            if q in bs:
                hp[h] = -1
        for p in blk:
            self.used[p] = 0
            self.is_blocked[p] = False
            self.n_blocked -= 1
            self.blocked_count[self.blocked_at[p]] -= 1
            self.spills += 1
        return blk

    def inputs_held_by(self, preds: list[list[int]], ks) -> list[int]:
        """For each invocation of `ks`, the PEA whose slot holds its point-to-point input,
        or -1."""
        holder, hold_pea, out = self.holder, self.hold_pea, []
        for k in ks:
            ps = preds[k]
            h = holder[ps[0]] if len(ps) == 1 else -1
            out.append(hold_pea[h] if h >= 0 else -1)
        return out

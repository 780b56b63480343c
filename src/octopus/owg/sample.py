"""Seeded unrolling of a workflow into one instance: a DAG of concrete invocations.

Control decisions (branch choice, fanout count, loop trips) are drawn when the instance is
created, so an instance is a pure function of (workflow file as written, level, seed,
index). "As written" includes order: each `next` list's order at every level (forks unroll
and draw in that order; a branch's successors split [0, 1) in that order), and below the
high level the position of each branch node in the file (`_branch_u` offsets its decisions
by its index). The same graph listed in another order gives the same instances at the high
level, other ones below it. Kept so: changing it would change every pinned figure. The
simulator reveals a decision only when its control block executes; schedulers never look
ahead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from octopus.checks import check_seed
from octopus.owg.schema import (
    MAX_INSTANCE_INVOCATIONS,
    MAX_INSTANCES,
    MAX_LAYER_GROUPS,
    ControlBlock,
    TaskBlock,
    Workflow,
    WorkflowError,
    do_while_mean_trips,
)

# Instance idx of seed s draws from random.Random(s * SEED_STRIDE + idx): one stream per
# (seed, idx) for seeds >= 0 and idx < SEED_STRIDE, and a run has at most MAX_INSTANCES
# instances, so seed s + 1 never repeats an instance of seed s. (The value is the one every
# pinned result was drawn with.)
SEED_STRIDE = 1_000_003
assert MAX_INSTANCES <= SEED_STRIDE


@dataclass
class Instance:
    """Parallel lists, one entry per invocation, in a topological order."""

    node: list[int]  # node index; < n_tasks means a task block (its TB index)
    work: list[float]  # Mop for tasks, 0 for control blocks
    preds: list[list[int]]  # local invocation indices this one waits for


class CompiledWorkflow:
    """A workflow at one dynamicity level, with samplers bound; shared by all instances.
    `level` is a level's name in the file, or a spread in [0, 1] itself."""

    def __init__(self, wf: Workflow, level: str | float = "high"):
        if isinstance(level, str) and level not in wf.levels:
            raise ValueError(
                f"unknown dynamicity level {level!r} (workflow {wf.name!r} has: "
                f"{', '.join(wf.levels)})"
            )
        spread = wf.levels[level] if isinstance(level, str) else float(level)
        if not 0.0 <= spread <= 1.0:  # as a file's level; NaN ran to a makespan of 0
            raise ValueError(f"dynamicity level: a spread must be in [0, 1], got {level!r}")
        self.wf, self.level, self.spread = wf, level, spread
        tasks = wf.tasks
        task_set = set(tasks)  # built once: per node, it made this quadratic in the nodes
        ctrls = [n for n in wf.nodes if n not in task_set]
        self.names = tasks + ctrls
        self.index = {n: i for i, n in enumerate(self.names)}
        self.n_tasks = len(tasks)
        blocks = [wf.nodes[n] for n in tasks]
        self.footprint = [b.footprint for b in blocks]
        self.config_bytes = [b.config_bytes for b in blocks]
        self.out_bytes = [b.out_bytes for b in blocks] + [0] * len(ctrls)
        self.kind = [b.kind for b in blocks]
        self.work_dist = [b.work.scaled(spread) for b in blocks]
        self._work = {n: d.sampler() for n, d in zip(tasks, self.work_dist)}
        self._count = {}
        for n in ctrls:
            b = wf.nodes[n]
            d = b.count if b.type == "fanout" else b.trips if b.type == "loop" else None
            if d is not None:
                self._count[n] = d.scaled(spread).sampler()
        # do-while loops: the trip count is geometric; a level pulls it toward its mean
        self._loop_mean = {
            n: do_while_mean_trips(wf.nodes[n].continue_prob, wf.nodes[n].max_trips)
            for n in ctrls
            if wf.nodes[n].type == "loop" and wf.nodes[n].continue_prob is not None
        }
        self.succ_tasks = self._succ_tasks()

    def _succ_tasks(self) -> list[list[int]]:
        """For each task, the TBs reachable through control blocks only (proactive hints)."""
        out = []
        for n in self.names[: self.n_tasks]:
            seen, todo, found = set(), list(self.wf.nodes[n].next), []
            while todo:
                s = todo.pop()
                if s in seen:
                    continue
                seen.add(s)
                b = self.wf.nodes[s]
                if isinstance(b, TaskBlock):
                    found.append(self.index[s])
                else:
                    todo += b.next + [x for x in (b.body, b.exit) if x]
            out.append(sorted(set(found)))
        return out

    def sample(self, rng: random.Random, idx: int | None = None, seed: int = 0) -> Instance:
        """Unroll one instance. Its index `idx` (and `seed`) place its branch decisions on a
        low-discrepancy sequence below the high level (see `_branch_u`).

        An instance that would unroll past `MAX_INSTANCE_INVOCATIONS` rows (a fanout count
        or a loop's trips drawn from a long tail, or nested fanouts) raises a ValueError
        naming the fanout or loop and its field, checked before each copy of its body, so
        a count of 1e9 fails at once instead of building rows for minutes."""
        node: list[int] = []
        work: list[float] = []
        preds: list[list[int]] = []
        nodes, index, wsamp, csamp = self.wf.nodes, self.index, self._work, self._count
        spread, loop_mean = self.spread, self._loop_mean
        seen: dict[str, int] = {}  # decisions taken so far per branch node in this instance

        def add(n: str, w: float, deps: list[int]) -> int:
            node.append(index[n])
            work.append(w)
            preds.append(deps)
            return len(node) - 1

        carry = [0.0]

        def after_join(j: str | None) -> str | None:
            return nodes[j].next[0] if j and nodes[j].next else None

        def too_big(n: str, key: str, drawn: int) -> ValueError:
            return ValueError(
                f"node '{n}': field '{key}': instance {idx} drew {drawn} and unrolls to more "
                f"than {MAX_INSTANCE_INVOCATIONS} invocations (MAX_INSTANCE_INVOCATIONS: "
                "tasks, their layer groups and decisions, per instance)"
            )

        def expand(n: str | None, deps: list[int], stop: str | None) -> list[int]:
            while n is not None:
                if n == stop:
                    return deps
                b = nodes[n]
                if isinstance(b, TaskBlock):
                    if b.stages == 1:
                        i = add(n, wsamp[n](rng), deps)
                    else:  # layer groups of one model share one draw of its work
                        if b.stage == 0:
                            carry[0] = wsamp[n](rng)
                        i = add(n, carry[0] / b.stages, deps)
                    if not b.next:
                        return [i]
                    if len(b.next) == 1:
                        n, deps = b.next[0], [i]
                        continue
                    parts: list[int] = []
                    for s in b.next:
                        parts += expand(s, [i], b.join)
                    n, deps = after_join(b.join), parts
                    continue
                assert isinstance(b, ControlBlock)
                if b.type == "join":
                    n = b.next[0] if b.next else None
                    continue
                if b.type == "branch":
                    i = add(n, 0.0, deps)
                    if spread >= 1.0 or idx is None:
                        n, deps = rng.choices(b.next, weights=b.probs)[0], [i]
                        continue
                    j = seen.get(n, 0)
                    seen[n] = j + 1
                    u = (self._branch_u(n, idx, j, seed) + spread * (rng.random() - 0.5)) % 1.0
                    k, acc = 0, b.probs[0]
                    while u >= acc and k + 1 < len(b.next):
                        k += 1
                        acc += b.probs[k]
                    n, deps = b.next[k], [i]
                    continue
                if b.type == "fanout":
                    i = add(n, 0.0, deps)
                    k = max(0, int(round(csamp[n](rng))))
                    if b.max_count is not None:
                        k = min(k, b.max_count)
                    if k > MAX_INSTANCE_INVOCATIONS:
                        raise too_big(n, "count", k)
                    parts = []
                    for _ in range(k):
                        if len(node) > MAX_INSTANCE_INVOCATIONS:
                            raise too_big(n, "count", k)
                        parts += expand(b.body, [i], b.join)
                    n, deps = after_join(b.join), parts or [i]
                    continue
                # loop: a continue decision before each trip, then the exit decision
                if b.continue_prob is not None:
                    trips = 1
                    while trips < b.max_trips and rng.random() < b.continue_prob:
                        trips += 1
                        if trips > MAX_INSTANCE_INVOCATIONS:  # each trip is a decision
                            raise too_big(n, "continue_prob", trips)
                    if spread != 1.0:  # same draws; dispersion scaled toward the mean
                        m = loop_mean[n]
                        trips = min(b.max_trips, max(1, int(round(m + spread * (trips - m)))))
                else:
                    trips = min(b.max_trips, max(0, int(round(csamp[n](rng)))))
                key = "trips" if b.continue_prob is None else "continue_prob"
                cur = deps
                for _ in range(trips):
                    if len(node) > MAX_INSTANCE_INVOCATIONS:
                        raise too_big(n, key, trips)
                    c = add(n, 0.0, cur)
                    cur = expand(b.body, [c], n)
                c = add(n, 0.0, cur)
                n, deps = b.exit, [c]
            return deps

        expand(self.wf.entry, [], None)
        return Instance(node, work, preds)

    def _branch_u(self, n: str, idx: int, j: int, seed: int) -> float:
        """The stratified point for the j-th decision of branch `n` in instance `idx`: the
        golden-ratio sequence over instances (offset per node, per decision and per seed).
        Over any run of consecutive instances it visits [0, 1) almost evenly, so the
        branch mix over a window keeps its proportions with far less noise than i.i.d.
        draws. Below the high level a branch takes this point jittered by a uniform draw
        of width s (mod 1: still uniform over instances, so the mix is kept), so the noise
        of the mix over a window shrinks with the level (s = 1 is i.i.d. draws)."""
        off = (self.index[n] * 0.7548776662 + j * 0.5698402910 + seed * 0.4142135624) % 1.0
        return (idx * 0.6180339887 + off) % 1.0

    def instance_rng(self, seed: int, idx: int) -> random.Random:
        """Independent, reproducible stream per instance (adding instances changes no others):
        `random.Random(seed * SEED_STRIDE + idx)`, one stream per (seed, idx) as long as the
        seed is >= 0 (`random.Random` drops the sign) and `idx` < SEED_STRIDE (instance
        SEED_STRIDE of seed s would be instance 0 of seed s + 1); both are refused here."""
        check_seed(seed, "instance seed")
        if not 0 <= idx < SEED_STRIDE:
            raise ValueError(f"instance index must be in [0, {SEED_STRIDE}), got {idx}")
        return random.Random(seed * SEED_STRIDE + idx)

    def profile(self, n: int = 400, seed: int = 12345) -> dict:
        """Monte-Carlo profile: mean invocations and mean work (Mop x footprint) per TB."""
        T = self.n_tasks
        calls, sq, work = [0.0] * T, [0.0] * T, [0.0] * T
        for k in range(n):
            inst = self.sample(self.instance_rng(seed, k), k, seed)
            cnt = [0] * T
            for nd, w in zip(inst.node, inst.work):
                if nd < T:
                    cnt[nd] += 1
                    work[nd] += w
            for tb in range(T):
                calls[tb] += cnt[tb]
                sq[tb] += cnt[tb] * cnt[tb]
        mean = [c / n for c in calls]
        var = [max(0.0, s / n - m * m) for s, m in zip(sq, mean)]
        return {
            "calls": mean,
            "calls_cv": [(v**0.5 / m) if m else 0.0 for v, m in zip(var, mean)],
            "work": [w / n for w in work],  # Mop per instance per TB (footprint-independent)
        }


def split_stages(wf: Workflow, memory_bytes: int) -> Workflow:
    """Compile each TB whose configuration (weights included) exceeds its PEA group's local
    memory into S = ceil(config_bytes / (footprint x memory_bytes)) chained layer groups, as
    a spatial compiler does when a model does not fit its PEAs: each stage holds 1/S of the
    configuration and does 1/S of the work (one draw per invocation, shared by the stages),
    and passes max(in_bytes, out_bytes) of activations to the next. The first stage keeps the
    TB's id, so every reference stays valid; later stages are named `id/2`, `id/3`, ...
    Returns `wf` itself when nothing needs splitting. A TB that would need more than
    `MAX_LAYER_GROUPS` groups, or a node that bears the name of a group (`_groups`), is
    refused (WorkflowError naming each such node)."""
    if memory_bytes <= 0:
        return wf
    groups = _groups(wf, memory_bytes)
    probs = [
        f"node '{nid}': field 'config_bytes': {wf.nodes[nid].config_bytes} bytes on "
        f"{wf.nodes[nid].footprint} PEA(s) of pea.memory_bytes {memory_bytes} need {s} layer "
        f"groups, more than {MAX_LAYER_GROUPS} (MAX_LAYER_GROUPS); give a larger footprint or "
        "a smaller configuration"
        for nid, s in groups.items()
        if s > MAX_LAYER_GROUPS
    ]
    probs = probs or [  # each range below is then at most MAX_LAYER_GROUPS long
        f"node '{sid}': field 'id': also the name of layer group {i} of {nid!r}, whose "
        f"config_bytes need {s} groups on pea.memory_bytes {memory_bytes}; rename it"
        for nid, s in groups.items()
        for i in range(2, s + 1)
        if (sid := f"{nid}/{i}") in wf.nodes
    ]
    if probs:
        raise WorkflowError(probs)
    if not groups:
        return wf
    nodes: dict = {}
    for nid, b in wf.nodes.items():
        if nid not in groups:
            nodes[nid] = b
            continue
        s = groups[nid]
        mid = max(b.in_bytes, b.out_bytes)
        ids = [nid] + [f"{nid}/{i + 1}" for i in range(1, s)]
        for i, sid in enumerate(ids):
            last = i == s - 1
            nodes[sid] = TaskBlock(
                id=sid,
                kind=b.kind,
                footprint=b.footprint,
                work=b.work,
                config_bytes=-(-b.config_bytes // s),
                in_bytes=b.in_bytes if i == 0 else mid,
                out_bytes=b.out_bytes if last else mid,
                next=list(b.next) if last else [ids[i + 1]],
                join=b.join if last else None,
                stage=i,
                stages=s,
            )
    return Workflow(wf.name, wf.entry, nodes, wf.levels, wf.arrival, wf.meta)


def _groups(wf: Workflow, memory_bytes: int) -> dict[str, int]:
    """The layer groups S of each TB that `split_stages` splits (S > 1), by TB id. Its
    groups after the first are named `id/2` .. `id/S`: a node of the file with one of
    those names would have been replaced by the group, silently, so it is refused."""
    return {
        nid: -(-b.config_bytes // (b.footprint * memory_bytes))
        for nid, b in wf.nodes.items()
        if isinstance(b, TaskBlock) and b.config_bytes > b.footprint * memory_bytes
    }

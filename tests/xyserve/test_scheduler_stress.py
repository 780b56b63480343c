"""Seeded random workloads through the scheduler and the K/V manager, over a fake model.

No torch: the "model" is a hash. The K/V of position ``p`` of a sequence is
``hash(tokens[:p + 1])`` (as a real layer's K/V depends on every token up to it), and the next
token of a sequence is a hash of the whole sequence (greedy decoding). So every stage can check
that the history it attends to holds exactly its own tokens' K/V, and every finished request
must have produced the tokens that decoding alone, without any cache, produces. After every
step the K/V manager's books are checked too (reference counts, free + evictable + used,
blocks held only by running requests, cached blocks hold what their tokens say).

Arrivals over time, shared prefixes, identical prompts (n > 1), aborts, chunking, preemption,
speculative tokens (some wrong), and budgets and caches small enough to force them all.
"""

from __future__ import annotations

import random

import pytest

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request, RequestStatus
from xyserve.engine.scheduler import Scheduler, SchedulerOutput

VOCAB = 50


def kv_of(tokens: list[int]) -> int:
    """The fake K/V of the last of ``tokens`` (it depends on all of them)."""
    return hash(tuple(tokens))


def next_token(tokens: list[int]) -> int:
    """The fake model's greedy token after ``tokens``."""
    return hash((-1, *tokens)) % VOCAB


def greedy(prompt: list[int], max_tokens: int, max_model_len: int) -> list[int]:
    """What a request must produce: decoding from its prompt alone, token by token."""
    seq, out = list(prompt), []
    while len(out) < max_tokens and len(seq) < max_model_len:
        out.append(next_token(seq))
        seq.append(out[-1])
    return out


class FakeModel:
    """The cache's slots and one forward pass over a scheduler output."""

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.slots: dict[int, int] = {}

    def slot(self, table: list[int], pos: int) -> int:
        return table[pos // self.bs] * self.bs + pos % self.bs

    def execute(
        self, out: SchedulerOutput, kv: KVCacheManager
    ) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Copies first, then each stage reads its history and writes its new tokens' K/V;
        returns the sampled tokens and the accepted proposals, as the engine hands them over."""
        for src, dst, n in out.copies:
            for i in range(n):
                self.slots[dst * self.bs + i] = self.slots.get(src * self.bs + i)
        sampled: dict[str, list[int]] = {}
        accepted: dict[str, int] = {}
        for st in out.stages:
            r = st.request
            table = kv.block_table(r.request_id)
            assert len(table) * self.bs >= st.kv_len, "the block table does not cover the stage"
            seq = r.all_token_ids + r.spec_token_ids
            for p in range(st.context_len):
                assert self.slots.get(self.slot(table, p)) == kv_of(seq[: p + 1]), (
                    f"{r.request_id} attends to wrong K/V at position {p}"
                )
            for p in range(st.context_len, st.kv_len):
                self.slots[self.slot(table, p)] = kv_of(seq[: p + 1])
            if not st.samples:
                continue
            real = r.num_tokens
            acc = 0
            while acc < st.num_spec_tokens and r.spec_token_ids[acc] == next_token(
                seq[: real + acc]
            ):
                acc += 1
            if st.num_spec_tokens:
                accepted[r.request_id] = acc
            sampled[r.request_id] = [next_token(seq[: real + acc])]
        return sampled, accepted


def check_books(s: Scheduler, model: FakeModel) -> None:
    """The K/V manager's invariants between steps."""
    kv = s.kv
    running = {r.request_id for r in s.running}
    users = [0] * kv.num_blocks
    for rid, table in kv.req_blocks.items():
        assert rid in running, f"{rid} holds blocks but is not running"
        for b in table:
            users[b] += 1
    assert running <= set(kv.req_blocks), "a running request holds no blocks"
    for b in kv.blocks:
        assert b.ref_count == users[b.block_id], f"block {b.block_id}: ref count != users"
    free, evictable = set(kv._free), set(kv._evictable)
    used = {i for i, n in enumerate(users) if n}
    assert len(free) == len(kv._free), "a block is free twice"
    assert not free & evictable and not used & (free | evictable), "a block is in two states"
    assert len(free) + len(evictable) + len(used) == kv.num_blocks, "a block is lost"
    # Every block reachable in the prefix tree holds the K/V of its tokens, and only tokens
    # that were computed: a match never hands out unwritten or rejected slots.
    stack = [(kv._root, [])]
    while stack:
        node, path = stack.pop()
        for child in (*node.full_children.values(), *node.partial_children):
            assert child.parent is node and child.registered, f"block {child.block_id}: links"
            seq = path + child.tokens
            for i in range(len(child.tokens)):
                got = model.slots.get(child.block_id * kv.block_size + i)
                assert got == kv_of(seq[: len(path) + i + 1]), f"cached block {child.block_id}"
            stack.append((child, seq))


def run_workload(seed: int) -> None:
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 3, 4, 8])
    num_blocks = rng.randint(6, 30)
    max_model_len = min(num_blocks * bs, rng.randint(8, 64))
    budget = rng.choice([rng.randint(2, 6), rng.randint(2, 40)])
    policy = rng.choice(["hybrid", "hybrid", "baseline"])
    spec = rng.random() < 0.3
    kv = KVCacheManager(num_blocks, bs, enable_prefix_caching=rng.random() < 0.8)
    s = Scheduler(
        kv,
        budget,
        rng.randint(1, 8),
        max_model_len,
        policy=policy,
        num_reserved_decode_tokens=rng.choice([None, 1, rng.randint(1, budget)]),
        max_prefill_chunk_tokens=rng.choice([None, rng.randint(1, budget)]),
        admission_order=rng.choice(["fcfs", "prefix_hit"]),
        partial_prefill_admission=rng.random() < 0.5,
        split_decode_rows=rng.choice([None, rng.randint(1, 4)]),
    )
    model = FakeModel(bs)
    prefixes = [[rng.randrange(VOCAB) for _ in range(max_model_len)] for _ in range(3)]
    arrivals: list[tuple[int, Request]] = []
    for i in range(rng.randint(1, 12)):
        n = rng.randint(1, max_model_len - 1)
        if rng.random() < 0.6:  # shares a prefix with others
            prompt = rng.choice(prefixes)[: rng.randint(0, n)]
            prompt += [rng.randrange(VOCAB) for _ in range(n - len(prompt))]
        else:
            prompt = [rng.randrange(VOCAB) for _ in range(n)]
        max_tokens = rng.randint(1, max_model_len - n)
        t = rng.randint(0, 20)
        for j in range(rng.choice([1, 1, 2, 3])):  # n > 1: identical prompts
            arrivals.append((t, Request(f"r{i}#{j}", list(prompt), max_tokens)))
    arrivals.sort(key=lambda a: a[0])
    expected = {
        r.request_id: greedy(r.prompt_token_ids, r.max_tokens, max_model_len) for _, r in arrivals
    }
    live: dict[str, Request] = {}
    done: set[str] = set()
    for step in range(2000):
        if not arrivals and not s.has_unfinished():
            break
        while arrivals and arrivals[0][0] <= step:
            r = arrivals.pop(0)[1]
            s.add_request(r)
            live[r.request_id] = r
        if live and step < 100 and rng.random() < 0.03:  # later aborts would hide a stall
            rid = rng.choice(sorted(live))
            s.finish_request(rid, RequestStatus.FINISHED_ABORTED)
            del live[rid], expected[rid]
        if spec:  # proposals for decoding requests, within their length caps, some wrong
            for r in s.running:
                cap = min(5, r.max_tokens - r.num_output_tokens - 1)
                cap = min(cap, max_model_len - r.num_tokens - 1)
                if r.num_computed_tokens == r.num_tokens - 1 and not r.spec_token_ids and cap:
                    seq = r.all_token_ids
                    for _ in range(rng.randint(1, cap)):
                        tok = next_token(seq) if rng.random() < 0.7 else rng.randrange(VOCAB)
                        r.spec_token_ids.append(tok)
                        seq = seq + [tok]
        out = s.schedule()
        if policy == "hybrid":
            assert out.num_tokens <= budget
        assert len({st.request.request_id for st in out.stages}) == len(out.stages)
        sampled, accepted = model.execute(out, kv)
        s.update(out, sampled, accepted)
        for st in out.stages:
            r = st.request
            if r.request_id in live and (
                r.num_output_tokens >= r.max_tokens or r.num_tokens >= max_model_len
            ):
                del r.output_token_ids[r.max_tokens :]  # the engine stops at max_tokens
                s.finish_request(r.request_id, RequestStatus.FINISHED_LENGTH)
                assert r.output_token_ids == expected[r.request_id], r.request_id
                del live[r.request_id]
                done.add(r.request_id)
        check_books(s, model)
    else:
        pytest.fail("requests left unfinished after 2000 steps")
    assert done == set(expected)
    kv.check_no_leak()


@pytest.mark.parametrize("first", range(0, 600, 100))
def test_random_workloads_compute_what_decoding_alone_computes(first):
    for seed in range(first, first + 100):
        run_workload(seed)

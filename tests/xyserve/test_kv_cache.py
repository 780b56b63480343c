"""Paged KV blocks: token-wise prefix reuse, copy-on-write, LRU eviction, no leaks."""

from __future__ import annotations

from xyserve.engine.kv_cache import KVCacheManager
from xyserve.engine.request import Request


def admit(kv: KVCacheManager, r: Request) -> int:
    m = kv.match_prefix(r)
    assert kv.allocate(r, r.num_tokens - m.num_tokens, m)
    r.num_computed_tokens = r.num_tokens
    kv.commit(r)
    return m.num_tokens


def test_match_to_the_exact_token_with_copy_on_write():
    kv = KVCacheManager(32, 4)
    a = Request("a", list(range(10)), 1)  # blocks [0-3][4-7][8,9]
    admit(kv, a)
    b = Request("b", list(range(6)) + [99, 98, 97], 1)  # shares 6 tokens: 1 block + 2 slots
    assert admit(kv, b) == 6
    copies = kv.take_copies()
    assert len(copies) == 1
    src, dst, n = copies[0]
    assert src == kv.block_table("a")[1] and n == 2 and dst != src
    assert kv.block_table("b")[0] == kv.block_table("a")[0]  # whole block shared
    assert kv.blocks[kv.block_table("a")[0]].ref_count == 2
    assert kv.prefix_hit_rate == 6 / 19


def test_last_token_is_never_matched():
    kv = KVCacheManager(32, 4)
    admit(kv, Request("a", list(range(8)), 1))
    b = Request("b", list(range(8)), 1)
    assert kv.match_prefix(b).num_tokens == 7


def test_freed_prefix_stays_reusable_until_evicted():
    kv = KVCacheManager(6, 4)
    a = Request("a", list(range(12)), 1)
    admit(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 6  # evictable counts as free
    b = Request("b", list(range(12)), 1)
    assert admit(kv, b) == 11  # revived from the cache
    kv.free(b)
    c = Request("c", list(range(100, 124)), 1)  # needs all 6 blocks: evicts the cached prefix
    assert admit(kv, c) == 0
    kv.free(c)
    d = Request("d", list(range(12)), 1)
    assert kv.match_prefix(d).num_tokens == 0
    kv.check_no_leak()


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(3, 4)
    a = Request("a", list(range(20)), 1)
    m = kv.match_prefix(a)
    assert not kv.allocate(a, 20, m)
    assert kv.num_free_blocks == 3 and not kv.req_blocks


def test_prefix_caching_off_registers_nothing():
    kv = KVCacheManager(8, 4, enable_prefix_caching=False)
    a = Request("a", list(range(8)), 1)
    admit(kv, a)
    kv.free(a)
    assert kv.match_prefix(Request("b", list(range(8)), 1)).num_tokens == 0
    kv.check_no_leak()


def test_blocks_after_a_twin_are_private_and_freed_not_cached():
    """Two requests that compute one prompt side by side (admitted in one step, before either
    block is cached): the second's full block is a twin of the first's and stays private. The
    blocks allocated after it stayed registered under it, unreachable, and went to the LRU
    list when freed, never matchable; now they are private too and go straight back."""
    kv = KVCacheManager(32, 4)
    a = Request("a", [*range(12), 100], 1)
    b = Request("b", [*range(12), 200], 1)
    for r in (a, b):  # both allocated before either commits: nothing to match yet
        assert kv.allocate(r, r.num_tokens, kv.match_prefix(r))
    for r in (a, b):
        r.num_computed_tokens = r.num_tokens
        kv.commit(r)
    tb = kv.block_table("b")
    assert not any(kv.blocks[i].registered for i in tb)
    assert kv.match_prefix(Request("c", [*range(12), 200, 7], 1)).num_tokens == 12  # a's
    kv.free(b)
    assert kv.num_free_blocks == 32 - 4
    assert len(kv._evictable) == 0 and all(i in kv._free for i in tb)
    kv.free(a)
    assert len(kv._evictable) == 4
    kv.check_no_leak()


def _scan_match(kv: KVCacheManager, tokens: list[int]) -> int:
    """The longest cached prefix as the lookup found it before its first-token index: whole
    blocks by their tokens, then the longest common prefix over every child of the node."""
    limit, bs, node, pos = len(tokens) - 1, kv.block_size, kv._root, 0
    while pos < limit:
        if pos + bs <= limit and tuple(tokens[pos : pos + bs]) in node.full_children:
            node, pos = node.full_children[tuple(tokens[pos : pos + bs])], pos + bs
            continue
        best = 0
        for child in (*node.full_children.values(), *node.partial_children):
            n = 0
            while n < min(len(child.tokens), limit - pos) and child.tokens[n] == tokens[pos + n]:
                n += 1
            best = max(best, n)
        return pos + best
    return pos


def _check_index(kv: KVCacheManager) -> None:
    """Every registered block's ``by_first`` holds exactly its children that hold tokens."""
    stack = [kv._root]
    while stack:
        node = stack.pop()
        kids = [*node.full_children.values(), *node.partial_children]
        want: dict[int, set] = {}
        for c in kids:
            if c.tokens:
                want.setdefault(c.tokens[0], set()).add(c)
        assert node.by_first == want
        stack.extend(kids)


def test_the_lookup_finds_what_a_scan_of_every_child_finds():
    """Random prompts over three token ids (prefixes shared and first tokens colliding all
    the time) admitted in groups, committed part by part, freed, evicted (a small cache),
    twins included: each lookup matches as many tokens as a scan of every cached child, and
    the first-token index stays exact."""
    import random

    rng = random.Random(0)
    kv = KVCacheManager(48, 4)
    live: list[Request] = []
    for step in range(600):
        op = rng.random()
        if op < 0.45 and len(live) < 8:
            group = [Request(f"r{step}.{i}", [rng.randrange(3) for _ in range(rng.randint(2, 14))], 1) for i in range(rng.randint(1, 2))]  # fmt: skip
            for r in group:  # a group allocates before any of it commits: twins
                m = kv.match_prefix(r)
                assert m.num_tokens == _scan_match(kv, r.all_token_ids)
                if kv.allocate(r, r.num_tokens - m.num_tokens, m):
                    r.num_computed_tokens = m.num_tokens
                    live.append(r)
        elif op < 0.8 and live:
            r = rng.choice(live)  # some of its prompt computed
            r.num_computed_tokens = min(r.num_tokens, r.num_computed_tokens + rng.randint(1, 6))
            kv.commit(r)
        elif live:
            r = live.pop(rng.randrange(len(live)))
            kv.free(r)
        q = [rng.randrange(3) for _ in range(rng.randint(2, 14))]
        assert kv.match_prefix(Request("q", q, 1)).num_tokens == _scan_match(kv, q)
        _check_index(kv)
    for r in live:
        kv.free(r)
    kv.check_no_leak()

"""Paged KV blocks with block tables, reference counts and token-wise prefix reuse.

Blocks form a radix tree: a block's parent is the block before it in some request's table.
A new prompt walks the tree to the exact token. Whole matched blocks are shared (ref count);
a match that ends inside a block copies that block's matched slots into a private block
(copy-on-write) and the request goes on there. Blocks whose owners are gone stay in the tree,
reusable, until LRU eviction. Pure Python: the copies are handed to the executor as
``(src_block, dst_block, num_slots)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from xyserve.engine.request import Request


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    tokens: list[int] = field(default_factory=list)  # token ids whose K/V are in the block
    parent: Block | None = None
    registered: bool = False  # reachable from the root, so matchable
    full_children: dict[tuple[int, ...], Block] = field(default_factory=dict)
    partial_children: set[Block] = field(default_factory=set)
    # The children (full and partial) that hold a token, by their first token: a lookup that
    # ends inside a block scans only the children that can share a token with it, not every
    # continuation cached under the node (thousands under a shared system prompt).
    by_first: dict[int, set[Block]] = field(default_factory=dict)

    def reset_children(self) -> None:
        self.full_children, self.partial_children, self.by_first = {}, set(), {}


@dataclass
class PrefixMatch:
    blocks: list[Block]  # whole blocks shared as they are
    partial: Block | None  # block whose first `partial_len` slots are copied
    partial_len: int

    @property
    def num_tokens(self) -> int:
        n = sum(len(b.tokens) for b in self.blocks)
        return n + self.partial_len


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._root = Block(-1, registered=True)
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives low ids first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # LRU order, oldest first
        self.req_blocks: dict[str, list[int]] = {}
        self._committed: dict[str, int] = {}
        self.pending_copies: list[tuple[int, int, int]] = []
        # Prefix cache lookups, in tokens, as vLLM counts them: a request's first admission
        # only (a preempted one readmitted is not counted again), none when prefix caching is
        # off or the request skips the cache (prompt logprobs).
        self.num_query_tokens = 0
        self.num_hit_tokens = 0
        self.on_prefix_query: Callable[[int, int], None] | None = None  # (queried, hit)

    # ---- accounting -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that an allocation can take: free plus evictable."""
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0

    def block_table(self, request_id: str) -> list[int]:
        return self.req_blocks.get(request_id, [])

    def check_no_leak(self) -> None:
        """Every block is free or evictable once no request holds any."""
        assert not self.req_blocks, f"requests still hold blocks: {list(self.req_blocks)}"
        assert self.num_free_blocks == self.num_blocks, (self.num_free_blocks, self.num_blocks)
        assert all(b.ref_count == 0 for b in self.blocks)

    # ---- matching ---------------------------------------------------------------------
    def match_prefix(self, req: Request) -> PrefixMatch:
        """Longest cached prefix of the request's tokens, to the token, leaving one to compute."""
        empty = PrefixMatch([], None, 0)
        if not self.enable_prefix_caching or req.prompt_logits:
            return empty
        tokens = req.all_token_ids
        limit = len(tokens) - 1  # the last token must run to produce logits
        bs, node, pos, blocks = self.block_size, self._root, 0, []
        while pos < limit:
            if pos + bs <= limit:
                child = node.full_children.get(tuple(tokens[pos : pos + bs]))
                if child is not None:
                    blocks.append(child)
                    node, pos = child, pos + bs
                    continue
            best, best_len = None, 0
            rest = tokens[pos:limit]
            for child in node.by_first.get(rest[0], ()):
                n = _common_prefix(child.tokens, rest)
                if n > best_len:
                    best, best_len = child, n
            return (
                PrefixMatch(blocks, best, best_len)
                if best is not None
                else PrefixMatch(blocks, None, 0)
            )
        return PrefixMatch(blocks, None, 0)

    # ---- allocation -------------------------------------------------------------------
    def blocks_needed(self, req: Request, num_new_tokens: int) -> int:
        """New blocks a running request needs for ``num_new_tokens`` more tokens."""
        have = len(self.req_blocks.get(req.request_id, ()))
        return max(0, -(-(req.num_computed_tokens + num_new_tokens) // self.block_size) - have)

    def allocate(
        self,
        req: Request,
        num_new_tokens: int,
        match: PrefixMatch | None = None,
        keep_free: int = 0,
    ) -> bool:
        """Make the request's blocks cover its computed tokens plus ``num_new_tokens``.

        With ``match`` (first admission) the matched prefix is taken first. ``keep_free`` blocks
        must stay free afterwards (room promised to running requests). Returns False, and
        changes nothing, when there is not enough room.
        """
        table = self.req_blocks.get(req.request_id)
        bs = self.block_size
        if table is None:
            table = []
            match = match or PrefixMatch([], None, 0)
            base = match.num_tokens
        else:
            match = None
            base = req.num_computed_tokens
        need_total = -(-(base + num_new_tokens) // bs)
        have = len(table) + (len(match.blocks) if match else 0)
        need_new = max(0, need_total - have)
        revived = sum(1 for b in (match.blocks if match else []) if b.ref_count == 0)
        if need_new > self.num_free_blocks - revived - keep_free:
            return False
        partial_tokens = (
            match.partial.tokens[: match.partial_len] if match and match.partial else []
        )
        if match is not None:
            for b in match.blocks:
                self._take(b)
                table.append(b.block_id)
            self.req_blocks[req.request_id] = table
            self._committed[req.request_id] = match.num_tokens
        new_ids = [self._pop_free() for _ in range(need_new)]
        if match is not None and match.partial is not None:
            dst = self.blocks[new_ids[0]]
            self.pending_copies.append((match.partial.block_id, dst.block_id, match.partial_len))
            dst.tokens = partial_tokens  # the source may have been evicted meanwhile
        for bid in new_ids:
            blk = self.blocks[bid]
            blk.ref_count = 1
            parent = self.blocks[table[-1]] if table else self._root
            blk.parent = parent
            if self.enable_prefix_caching and parent.registered:
                blk.registered = True
                parent.partial_children.add(blk)
                if blk.tokens:  # the copy-on-write block's copied tokens
                    _index(parent, blk)
            table.append(bid)
        if match is not None:
            if self.enable_prefix_caching and not req.prompt_logits and not req.num_preemptions:
                self.num_query_tokens += req.num_tokens
                self.num_hit_tokens += match.num_tokens
                if self.on_prefix_query is not None:
                    self.on_prefix_query(req.num_tokens, match.num_tokens)
            if match.partial is not None:
                self._register_full(self.blocks[new_ids[0]])
        return True

    def commit(self, req: Request) -> None:
        """Record the token ids of slots computed since the last commit (after a step ran)."""
        table = self.req_blocks.get(req.request_id)
        if not table:
            return
        done = min(req.num_computed_tokens, req.num_tokens)
        start = self._committed.get(req.request_id, 0)
        if done <= start:
            return
        bs = self.block_size
        tokens = req.all_token_ids
        for bi in range(start // bs, (done - 1) // bs + 1):
            blk = self.blocks[table[bi]]
            first = not blk.tokens
            blk.tokens = tokens[bi * bs : min(done, (bi + 1) * bs)]
            if first and blk.registered:
                _index(blk.parent, blk)
            self._register_full(blk)
        self._committed[req.request_id] = done

    def free(self, req: Request) -> None:
        """Release a finished or preempted request's blocks; cached ones stay reusable."""
        table = self.req_blocks.pop(req.request_id, [])
        self._committed.pop(req.request_id, None)
        for bid in reversed(table):  # children first, so LRU evicts leaves before parents
            blk = self.blocks[bid]
            blk.ref_count -= 1
            if blk.ref_count == 0:
                if blk.registered and blk.tokens:
                    self._evictable[bid] = None
                    self._evictable.move_to_end(bid)
                else:
                    self._release(blk)

    def take_copies(self) -> list[tuple[int, int, int]]:
        out, self.pending_copies = self.pending_copies, []
        return out

    # ---- internals --------------------------------------------------------------------
    def _take(self, blk: Block) -> None:
        if blk.ref_count == 0:
            self._evictable.pop(blk.block_id, None)
        blk.ref_count += 1

    def _register_full(self, blk: Block) -> None:
        if not blk.registered or len(blk.tokens) < self.block_size:
            return
        parent = blk.parent
        if blk not in parent.partial_children:
            return  # already moved
        parent.partial_children.discard(blk)
        key = tuple(blk.tokens)
        if key in parent.full_children:
            # A twin is cached already: this one stays private, and so do the blocks allocated
            # after it (registered under it, unreachable now): cached, they would only sit
            # in the LRU list, never matched, until evicted.
            _unindex(parent, blk)
            self._unregister(blk)
        else:
            parent.full_children[key] = blk

    @staticmethod
    def _unregister(blk: Block) -> None:
        """Make ``blk`` and the blocks under it private (they are its request's alone: no
        other request can hold a block that was never reachable as a whole block)."""
        stack = [blk]
        while stack:
            b = stack.pop()
            stack.extend(b.full_children.values())
            stack.extend(b.partial_children)
            b.registered = False
            b.reset_children()

    def _pop_free(self) -> int:
        if self._free:
            return self._free.pop()
        bid, _ = self._evictable.popitem(last=False)
        self._evict(self.blocks[bid])
        if self._free:
            return self._free.pop()
        return self._pop_free()

    def _evict(self, blk: Block) -> None:
        """Drop an unreferenced cached block and its (necessarily unreferenced) descendants."""
        stack = [blk]
        while stack:
            b = stack.pop()
            stack.extend(b.full_children.values())
            stack.extend(b.partial_children)
            self._evictable.pop(b.block_id, None)
            self._release(b)

    def _release(self, blk: Block) -> None:
        parent = blk.parent
        if parent is not None and blk.registered:
            parent.partial_children.discard(blk)
            key = tuple(blk.tokens)
            if parent.full_children.get(key) is blk:
                del parent.full_children[key]
            _unindex(parent, blk)
        blk.tokens, blk.parent, blk.registered = [], None, False
        blk.reset_children()
        self._free.append(blk.block_id)


def _index(parent: Block, blk: Block) -> None:
    """``blk``, a child of ``parent`` that now holds tokens, where lookups find it."""
    parent.by_first.setdefault(blk.tokens[0], set()).add(blk)


def _unindex(parent: Block, blk: Block) -> None:
    if not blk.tokens:
        return
    peers = parent.by_first.get(blk.tokens[0])
    if peers is not None:
        peers.discard(blk)
        if not peers:
            del parent.by_first[blk.tokens[0]]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

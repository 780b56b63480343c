"""The token table: one row per request stage in a step (the paper's Token-Table, Fig. 7).

Built once per step on the host from the scheduler's output, then shared by every layer.
Pure Python: no torch needed to build or test it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# Tile sizes that a stage's query rows are cut into (rule: smallest that covers the count, capped).
TILE_SIZES: tuple[int, ...] = (16, 32, 64, 128)


def visible_keys(
    context_len: int, q: int, mask: tuple[tuple[bool, ...], ...] | None
) -> tuple[int, tuple[int, ...]]:
    """The keys that row ``q`` of a stage sees, as a prefix of its block table's positions and
    the positions beyond it: causal (``mask`` None), the history and the new keys up to its
    own; under a tree mask, the history plus the new keys it sees as an unbroken run from the
    first (the real tokens, and node 0 if it is an ancestor) as the prefix, and the rest of
    its path as the positions beyond."""
    if mask is None:
        return context_len + q + 1, ()
    seen = [j for j, ok in enumerate(mask[q]) if ok]
    lead = 0
    while lead < len(seen) and seen[lead] == lead:
        lead += 1
    return context_len + lead, tuple(context_len + j for j in seen[lead:])


def tile_size_for(num_tokens: int, tile_sizes: tuple[int, ...] = TILE_SIZES) -> int:
    """Smallest tile size that covers ``num_tokens``; longer stages use the largest and are cut."""
    for t in tile_sizes:
        if num_tokens <= t:
            return t
    return tile_sizes[-1]


class StageKind(str, Enum):
    PREFILL = "prefill"  # a prompt chunk (possibly after a prefix-cache hit)
    DECODE = "decode"  # one new token
    VERIFY = "verify"  # one new token plus speculative tokens to check


@dataclass(frozen=True)
class StageRow:
    """One stage of one request in the flat token batch of a step."""

    request_id: str
    kind: StageKind
    start: int  # first row of this stage in the flat batch
    num_tokens: int  # query tokens of this stage in the step
    kv_len: int  # history plus the new tokens: keys this stage attends to
    tile_size: int
    num_spec_tokens: int = 0  # trailing speculative tokens (verify)
    block_table: tuple[int, ...] = ()  # physical KV blocks, in order, covering kv_len
    # Optional tree mask over the stage's own new tokens, row-major num_tokens x num_tokens:
    # mask[i][j] says whether query i may see new key j. None means causal.
    tree_mask: tuple[tuple[bool, ...], ...] | None = None

    @property
    def context_len(self) -> int:
        """Keys before this stage's first new token (history, including prefix-cache hits)."""
        return self.kv_len - self.num_tokens


@dataclass
class TokenTable:
    rows: list[StageRow] = field(default_factory=list)
    block_size: int = 16

    @property
    def num_tokens(self) -> int:
        """Rows of the flat batch so far: the end of the last stage (stages are laid out in the
        order they were added, so this is O(1), not a sum over every row per ``add``)."""
        last = self.rows[-1] if self.rows else None
        return 0 if last is None else last.start + last.num_tokens

    def add(
        self,
        request_id: str,
        num_tokens: int,
        kv_len: int,
        block_table: tuple[int, ...] | list[int],
        num_spec_tokens: int = 0,
        is_prefill: bool = False,
        tree_mask: tuple[tuple[bool, ...], ...] | None = None,
    ) -> StageRow:
        if num_tokens < 0 or kv_len < num_tokens:
            raise ValueError(f"bad stage: num_tokens={num_tokens} kv_len={kv_len}")
        if is_prefill:
            kind = StageKind.PREFILL
        elif num_spec_tokens > 0:
            kind = StageKind.VERIFY
        else:
            kind = StageKind.DECODE
        row = StageRow(
            request_id=request_id,
            kind=kind,
            start=self.num_tokens,
            num_tokens=num_tokens,
            kv_len=kv_len,
            tile_size=tile_size_for(num_tokens),
            num_spec_tokens=num_spec_tokens,
            block_table=tuple(block_table),
            tree_mask=tree_mask,
        )
        self.rows.append(row)
        return row

    def slot_mapping(self) -> list[int]:
        """Physical cache slot of every new token, in flat-batch order."""
        bs = self.block_size
        slots: list[int] = []
        for r in self.rows:
            for pos in range(r.context_len, r.kv_len):
                slots.append(r.block_table[pos // bs] * bs + pos % bs)
        return slots

"""The attention task table: how a step's attention work is cut, ordered and dealt to workers.

Each stage's queries are cut into tiles of the stage's tile size (``token_table.tile_size_for``).
One *unit* is a (tile, KV head) pair: the query heads of one KV group are packed into the tile,
so a unit reads its K/V once for all of them (GQA). Units are sorted by cost, the tile's area
``tileSize * kvLen`` (paper §4.3.1), descending, and dealt to W workers in symmetric round-robin
(1..W, W..1, ...), which keeps the per-worker sums close without a greedy balancer.

Built once per step on the host and shared by every layer. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xyserve.plan.token_table import TokenTable


@dataclass(frozen=True)
class Tile:
    """A run of query rows of one stage, with the keys those rows can see."""

    stage: int  # row index in the token table
    q_start: int  # first query row in the flat batch
    row_offset: int  # first row within the stage
    num_rows: int  # real query rows (<= tile_size)
    tile_size: int
    context_len: int  # history keys of the stage (kv_len - num_tokens)
    kv_len: int  # keys of the stage
    kv_extent: int  # keys this tile reads: causal rows stop at their own position
    has_tree: bool

    @property
    def cost(self) -> int:
        """The paper's tile area, ``tileSize * kvLen`` (kvLen = keys the tile reads)."""
        return self.tile_size * self.kv_extent


@dataclass(frozen=True)
class Unit:
    """One task: a tile against one KV head (the query heads of that KV group packed in)."""

    tile: int  # index into TaskTable.tiles
    kv_head: int
    cost: int


@dataclass
class TaskTable:
    tiles: list[Tile]
    units: list[Unit]  # sorted by cost, descending
    num_workers: int
    worker_units: list[list[int]] = field(default_factory=list)  # unit indices per worker

    def worker_costs(self) -> list[int]:
        return [sum(self.units[u].cost for u in us) for us in self.worker_units]

    def worker_order(self) -> list[int]:
        """All unit indices, worker by worker (the flat layout a kernel reads by worker id)."""
        return [u for us in self.worker_units for u in us]

    def worker_offsets(self) -> list[int]:
        offs = [0]
        for us in self.worker_units:
            offs.append(offs[-1] + len(us))
        return offs


def cut_tiles(table: TokenTable, max_tile_rows: int | None = None) -> list[Tile]:
    """Cut every stage's queries into tiles of its tile size; empty stages give no tile.

    ``max_tile_rows`` caps the tile (a GPU kernel packing G heads per row caps rows at BLOCK_M/G).
    """
    tiles: list[Tile] = []
    for s, r in enumerate(table.rows):
        ctx = r.context_len
        size = min(r.tile_size, max_tile_rows) if max_tile_rows else r.tile_size
        for off in range(0, r.num_tokens, size):
            rows = min(size, r.num_tokens - off)
            has_tree = r.tree_mask is not None
            # A causal row i sees keys up to ctx + i; a tree row may see any new key.
            ext = r.kv_len if has_tree else ctx + off + rows
            tiles.append(Tile(s, r.start + off, off, rows, size, ctx, r.kv_len, ext, has_tree))
    return tiles


def snake_deal(costs: list[int], num_workers: int) -> list[list[int]]:
    """Deal items (already sorted by cost, descending) as 1..W, W..1, 1..W, ..."""
    workers: list[list[int]] = [[] for _ in range(max(1, num_workers))]
    w = len(workers)
    for i in range(len(costs)):
        rnd, pos = divmod(i, w)
        workers[pos if rnd % 2 == 0 else w - 1 - pos].append(i)
    return workers


def build_task_table(
    table: TokenTable, num_kv_heads: int, num_workers: int = 1, max_tile_rows: int | None = None
) -> TaskTable:
    """Tiles x KV heads, sorted by area descending (stable), snake-dealt to ``num_workers``."""
    tiles = cut_tiles(table, max_tile_rows)
    units = [Unit(t, h, tile.cost) for t, tile in enumerate(tiles) for h in range(num_kv_heads)]
    units.sort(key=lambda u: -u.cost)
    tt = TaskTable(tiles=tiles, units=units, num_workers=max(1, num_workers))
    tt.worker_units = snake_deal([u.cost for u in units], tt.num_workers)
    return tt

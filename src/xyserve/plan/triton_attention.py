"""Meta-Attention's Triton plan: the task table laid out worker by worker in device arrays.

Built once per step on the host, read by every layer's launch of
``kernels.attention.meta.triton_kernel``: one row per unit (tile, KV head), in the order the
persistent grid's programs walk them, plus each worker's range, the stages' block tables and
their tree masks flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.task_table import cut_tiles


@dataclass
class TritonAttentionPlan:
    meta: AttentionMetadata
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    block_m: int
    arrays: dict[str, torch.Tensor]
    allow_tf32: bool = False  # float32 dots in TF32 (see kernels.triton_precision)

    @property
    def tile_rows(self) -> int:
        """Query rows per tile: a tile's ``block_m`` rows hold its rows for each of the
        ``num_q_heads // num_kv_heads`` query heads of one KV head."""
        return max(1, self.block_m // (self.num_q_heads // self.num_kv_heads))


def check_heads(num_q_heads: int, num_kv_heads: int) -> None:
    """Refuse head counts the kernel cannot run: it packs each KV head's ``num_q_heads //
    num_kv_heads`` query heads into a tile, so a remainder would leave the last query heads
    unread (their output rows silently zero) rather than failing."""
    if num_kv_heads < 1 or num_q_heads < num_kv_heads or num_q_heads % num_kv_heads:
        raise ValueError(
            f"Meta-Attention needs num_q_heads a positive multiple of num_kv_heads; "
            f"got {num_q_heads} query heads over {num_kv_heads} KV heads"
        )


def launch_block_m(block_m: int, num_q_heads: int, num_kv_heads: int) -> int:
    """The kernel's M block: a power of two holding at least one row per query head of a group."""
    check_heads(num_q_heads, num_kv_heads)
    return pow2(max(block_m, num_q_heads // num_kv_heads))


def plan_arrays(
    cols: torch.Tensor, w_off: torch.Tensor, tree: torch.Tensor, block_tables: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The kernel's named arguments: each task-table column a row of ``cols``, the workers'
    offsets, the flattened tree masks and the int32 block tables."""
    arrays = {k: cols[i] for i, k in enumerate(COLUMNS)}
    arrays.update(w_off=w_off, tree=tree, bt=block_tables)
    return arrays


def pow2(x: int, lo: int = 16) -> int:
    """The smallest power of two >= x, and at least ``lo``: a Triton block dimension."""
    return max(lo, 1 << max(0, int(x) - 1).bit_length())


def default_workers(device: torch.device) -> int:
    """The persistent grid's size: two programs per SM on CUDA, 4 elsewhere (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count * 2
    return 4


COLUMNS = ("qstart", "rows", "rowoff", "ctx", "kvlen", "ext", "kvh", "stage", "toff", "tn")


@dataclass
class PlanColumns:
    """A step's task table as host arrays: ``cols[c, i]`` is column ``COLUMNS[c]`` of the i-th
    unit in the order the workers walk them, worker w's units are ``w_off[w]:w_off[w + 1]``,
    and ``tree`` holds the stages' tree masks flattened."""

    cols: np.ndarray  # [len(COLUMNS), units] int32
    w_off: np.ndarray  # [num_workers + 1] int32
    tree: list[int]


def plan_columns(
    meta: AttentionMetadata, num_kv_heads: int, num_workers: int, rows_per_tile: int
) -> PlanColumns:
    """The task table of ``meta`` (tiles of at most ``rows_per_tile`` rows) laid out as columns.

    The same table as ``task_table.build_task_table`` -- units (tile, KV head) sorted by cost,
    descending and stable, snake-dealt to the workers -- computed on arrays rather than one
    Python object per unit: at a 128-request decode step with 4 KV heads that is 512 units a
    step, all host time before the launch. ``tests/xyserve/test_triton_plan_columns.py``
    compares it with ``build_task_table``'s units, worker by worker.
    """
    rows = meta.table.rows
    tiles = cut_tiles(meta.table, rows_per_tile)
    tree_flat: list[int] = []
    tree_off: dict[int, int] = {}
    for s, row in enumerate(rows):
        if row.tree_mask is not None:
            tree_off[s] = len(tree_flat)
            tree_flat.extend(int(b) for line in row.tree_mask for b in line)
    per_tile = np.array(
        [
            (
                t.q_start,
                t.num_rows,
                t.row_offset,
                t.context_len,
                t.kv_len,
                t.kv_extent,
                0,  # the KV head: per unit, below
                t.stage,
                tree_off.get(t.stage, -1),
                rows[t.stage].num_tokens if t.has_tree else 0,
            )
            for t in tiles
        ],
        dtype=np.int32,
    ).reshape(len(tiles), len(COLUMNS))
    workers = max(1, num_workers)
    # Unit u is (tile u // H, KV head u % H), as build_task_table enumerates them.
    cost = np.repeat(np.array([t.cost for t in tiles], dtype=np.int64), num_kv_heads)
    by_cost = np.argsort(-cost, kind="stable")
    rnd, pos = np.divmod(np.arange(len(cost)), workers)
    worker = np.where(rnd % 2 == 0, pos, workers - 1 - pos)  # snake: 1..W, W..1, ...
    walk = by_cost[np.argsort(worker, kind="stable")]
    cols = per_tile[walk // max(1, num_kv_heads)]
    cols[:, COLUMNS.index("kvh")] = walk % max(1, num_kv_heads)
    w_off = np.zeros(workers + 1, dtype=np.int32)
    np.cumsum(np.bincount(worker, minlength=workers), out=w_off[1:])
    return PlanColumns(np.ascontiguousarray(cols.T), w_off, tree_flat)


def build_triton_plan(
    meta: AttentionMetadata,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    num_workers: int | None = None,
    block_m: int = 64,
    allow_tf32: bool = False,
) -> TritonAttentionPlan:
    """Task table with tiles of ``block_m // G`` rows, laid out worker by worker on the device."""
    device = meta.slot_mapping.device
    block_m = launch_block_m(block_m, num_q_heads, num_kv_heads)
    if num_workers is None:
        num_workers = default_workers(device)
    plan = TritonAttentionPlan(meta, num_q_heads, num_kv_heads, head_dim, block_m, {}, allow_tf32)
    pc = plan_columns(meta, num_kv_heads, num_workers, plan.tile_rows)
    plan.arrays = plan_arrays(
        torch.from_numpy(pc.cols).to(device),  # one copy; each column a contiguous row
        torch.from_numpy(pc.w_off).to(device),
        torch.tensor(pc.tree or [0], dtype=torch.int8, device=device),
        meta.block_tables.to(device=device, dtype=torch.int32).contiguous(),
    )
    return plan


@dataclass
class StaticTritonPlan:
    """A Triton plan in arrays of fixed capacity, for steps replayed in one CUDA graph.

    A captured launch keeps its grid, its constexprs and its pointers, so every step replayed
    in a graph must read its task table from the same arrays, of the same shapes. Here they are
    allocated once, for at most ``capacity`` units, and each step writes its columns into them
    (``fill``): its units first, each worker's range in ``w_off``. Units past ``w_off[-1]``
    keep whatever an earlier step left there: no worker's range reaches them, so the kernel
    never reads them, and a worker with no unit leaves its loop at once. A padded step's
    padding tokens belong to no stage, so no unit covers them and their output rows stay zero.
    The block tables are the padded step's own static ``[stages, max_blocks]`` buffer. Token
    trees are not supported (their flattened masks vary in size): ``fill`` refuses them.
    """

    plan: TritonAttentionPlan  # its arrays are the static buffers the launches read
    cols: torch.Tensor  # [len(COLUMNS), capacity] int32 on the plan's device
    w_off: torch.Tensor  # [num_workers + 1] int32 on the plan's device
    host_cols: torch.Tensor  # host staging of ``cols`` (pinned on CUDA; ``cols`` itself on CPU)
    host_w_off: torch.Tensor

    @property
    def capacity(self) -> int:
        return int(self.cols.shape[1])

    @classmethod
    def allocate(
        cls,
        meta: AttentionMetadata,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        num_workers: int | None = None,
        block_m: int = 64,
        allow_tf32: bool = False,
    ) -> StaticTritonPlan:
        """Buffers for ``capacity`` units over ``meta``'s static block tables (an empty table:
        the plan of a step with no stage until ``fill``)."""
        device = meta.slot_mapping.device
        block_m = launch_block_m(block_m, num_q_heads, num_kv_heads)
        workers = num_workers or default_workers(device)
        cols = torch.zeros((len(COLUMNS), max(1, capacity)), dtype=torch.int32, device=device)
        w_off = torch.zeros(workers + 1, dtype=torch.int32, device=device)
        pin = device.type == "cuda"
        host_cols = torch.zeros_like(cols, device="cpu").pin_memory() if pin else cols
        host_w_off = torch.zeros_like(w_off, device="cpu").pin_memory() if pin else w_off
        tree = torch.zeros(1, dtype=torch.int8, device=device)
        arrays = plan_arrays(cols, w_off, tree, meta.block_tables)
        if meta.block_tables.dtype != torch.int32 or not meta.block_tables.is_contiguous():
            raise ValueError("a static plan reads the step's int32 block tables in place")
        plan = TritonAttentionPlan(
            meta, num_q_heads, num_kv_heads, head_dim, block_m, arrays, allow_tf32
        )
        return cls(plan, cols, w_off, host_cols, host_w_off)

    def fill(self, meta: AttentionMetadata) -> TritonAttentionPlan:
        """The plan of ``meta`` (whose tensors are the static buffers this plan was allocated
        over), written into the static arrays; the copies to the device are asynchronous."""
        p = self.plan
        if any(r.tree_mask is not None for r in meta.table.rows):
            raise ValueError("a static Triton plan takes no token tree")
        workers = int(self.w_off.numel()) - 1
        pc = plan_columns(meta, p.num_kv_heads, workers, p.tile_rows)
        n = pc.cols.shape[1]
        if n > self.capacity:
            raise ValueError(f"{n} attention units exceed the static plan's {self.capacity}")
        self.host_cols[:, :n] = torch.from_numpy(pc.cols)
        self.host_w_off.copy_(torch.from_numpy(pc.w_off))
        if self.host_cols is not self.cols:  # only the units this step uses travel
            self.cols[:, :n].copy_(self.host_cols[:, :n], non_blocking=True)
            self.w_off.copy_(self.host_w_off, non_blocking=True)
        return TritonAttentionPlan(
            meta, p.num_q_heads, p.num_kv_heads, p.head_dim, p.block_m, p.arrays, p.allow_tf32
        )

"""Meta-Attention's Triton plan: the task table laid out worker by worker in device arrays.

Built once per step on the host, read by every layer's launch of
``kernels.attention.meta.triton_kernel``: one row per unit (tile, KV head), in the order the
persistent grid's programs walk them, plus each worker's range, the stages' block tables and
their tree masks flattened.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.task_table import TaskTable, build_task_table


@dataclass
class TritonAttentionPlan:
    meta: AttentionMetadata
    tasks: TaskTable
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    block_m: int
    arrays: dict[str, torch.Tensor]
    allow_tf32: bool = False  # float32 dots in TF32 (see kernels.triton_precision)


def pow2(x: int, lo: int = 16) -> int:
    """The smallest power of two >= x, and at least ``lo``: a Triton block dimension."""
    return max(lo, 1 << max(0, int(x) - 1).bit_length())


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
    group = num_q_heads // num_kv_heads
    block_m = pow2(max(block_m, group))
    if num_workers is None:
        num_workers = (
            torch.cuda.get_device_properties(device).multi_processor_count * 2
            if device.type == "cuda"
            else 4
        )
    tasks = build_task_table(meta.table, num_kv_heads, num_workers, max(1, block_m // group))
    tree_flat: list[int] = []
    tree_off: dict[int, int] = {}
    for s, row in enumerate(meta.table.rows):
        if row.tree_mask is not None:
            tree_off[s] = len(tree_flat)
            tree_flat.extend(int(b) for line in row.tree_mask for b in line)
    cols: dict[str, list[int]] = {
        k: []
        for k in ("qstart", "rows", "rowoff", "ctx", "kvlen", "ext", "kvh", "stage", "toff", "tn")
    }
    for ui in tasks.worker_order():
        unit = tasks.units[ui]
        t = tasks.tiles[unit.tile]
        row = meta.table.rows[t.stage]
        vals = (
            t.q_start,
            t.num_rows,
            t.row_offset,
            t.context_len,
            t.kv_len,
            t.kv_extent,
            unit.kv_head,
            t.stage,
            tree_off.get(t.stage, -1),
            row.num_tokens if t.has_tree else 0,
        )
        for k, v in zip(cols, vals):
            cols[k].append(v)
    arrays = {k: torch.tensor(v, dtype=torch.int32, device=device) for k, v in cols.items()}
    arrays["w_off"] = torch.tensor(tasks.worker_offsets(), dtype=torch.int32, device=device)
    arrays["tree"] = torch.tensor(tree_flat or [0], dtype=torch.int8, device=device)
    arrays["bt"] = meta.block_tables.to(device=device, dtype=torch.int32).contiguous()
    return TritonAttentionPlan(
        meta, tasks, num_q_heads, num_kv_heads, head_dim, block_m, arrays, allow_tf32
    )

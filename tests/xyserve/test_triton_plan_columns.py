"""Meta-Attention's Triton plan columns (``plan.triton_attention.plan_columns``, computed on
arrays) against the task table they lay out (``plan.task_table.build_task_table``, one object
per unit): the same units, in the same worker-by-worker order, with the same values."""

from __future__ import annotations

import random

import pytest

from xyserve.bench.cases import StageSpec, build_case
from xyserve.plan.task_table import build_task_table
from xyserve.plan.triton_attention import COLUMNS, plan_columns


def reference_columns(meta, num_kv_heads, num_workers, rows_per_tile):
    """The columns read off ``build_task_table``'s units, worker by worker."""
    tasks = build_task_table(meta.table, num_kv_heads, num_workers, rows_per_tile)
    tree_off, flat = {}, 0
    for s, row in enumerate(meta.table.rows):
        if row.tree_mask is not None:
            tree_off[s] = flat
            flat += row.num_tokens * row.num_tokens
    cols = []
    for ui in tasks.worker_order():
        unit = tasks.units[ui]
        t = tasks.tiles[unit.tile]
        n = meta.table.rows[t.stage].num_tokens if t.has_tree else 0
        cols.append(
            [t.q_start, t.num_rows, t.row_offset, t.context_len, t.kv_len, t.kv_extent]
            + [unit.kv_head, t.stage, tree_off.get(t.stage, -1), n]
        )
    return [list(c) for c in zip(*cols)] or [[] for _ in COLUMNS], tasks.worker_offsets()


@pytest.mark.parametrize("hkv", [1, 2, 4])
@pytest.mark.parametrize("workers", [1, 3, 7, 264])
@pytest.mark.parametrize("rows_per_tile", [1, 4, 16])
def test_plan_columns_equal_the_task_tables(hkv, workers, rows_per_tile):
    rng = random.Random(hkv * 1000 + workers * 10 + rows_per_tile)
    for case in range(3):
        specs = [StageSpec(1, rng.randint(0, 90)) for _ in range(rng.randint(0, 12))]
        specs += [
            StageSpec(rng.randint(1, 40), rng.randint(0, 60), prefill=True),
            StageSpec(0, rng.randint(1, 30)),
            StageSpec(rng.randint(2, 7), rng.randint(1, 50), num_spec_tokens=2),
            StageSpec(rng.randint(2, 7), rng.randint(1, 50), tree=True),
        ][: case + 2]
        rng.shuffle(specs)
        meta = build_case(specs, 2 * hkv, hkv, 8, 16, seed=case).meta
        pc = plan_columns(meta, hkv, workers, rows_per_tile)
        want_cols, want_off = reference_columns(meta, hkv, workers, rows_per_tile)
        assert pc.cols.shape == (len(COLUMNS), len(want_cols[0]))
        assert pc.cols.tolist() == want_cols
        assert pc.w_off.tolist() == want_off
        assert len(pc.tree) == sum(r.num_tokens**2 for r in meta.table.rows if r.tree_mask)


def test_an_empty_step_has_no_unit():
    meta = build_case([], 4, 2, 8, 16).meta
    pc = plan_columns(meta, 2, 5, 4)
    assert pc.cols.shape == (len(COLUMNS), 0) and pc.w_off.tolist() == [0] * 6

"""Task table (tiles, cost order, snake deal) and GEMM table (buckets, save/load, fallback)."""

from __future__ import annotations

import json
import random
import warnings

import pytest

from xyserve.bench.cases import load_workload, sample_batch
from xyserve.plan.gemm_table import (
    OPS,
    TABLE_VERSION,
    GemmConfig,
    GemmTable,
    bucket_low,
    buckets,
    default_config,
    find_table,
    padded_m,
)
from xyserve.plan.machine import machine_signature
from xyserve.plan.task_table import build_task_table, cut_tiles, snake_deal
from xyserve.plan.token_table import TokenTable


def _table(stages: list[tuple[int, int]], block_size: int = 16) -> TokenTable:
    t = TokenTable(block_size=block_size)
    nxt = 0
    for i, (n, ctx) in enumerate(stages):
        nb = (n + ctx + block_size - 1) // block_size
        t.add(f"r{i}", n, n + ctx, list(range(nxt, nxt + nb)), is_prefill=n > 1)
        nxt += nb
    return t


def test_tiles_cut_by_tile_size_and_skip_empty_stages():
    t = _table([(300, 10), (0, 5), (1, 40), (20, 0)])
    tiles = cut_tiles(t)
    assert [(x.stage, x.row_offset, x.num_rows, x.tile_size) for x in tiles] == [
        (0, 0, 128, 128),
        (0, 128, 128, 128),
        (0, 256, 44, 128),
        (2, 0, 1, 16),
        (3, 0, 20, 32),
    ]
    # A causal tile reads keys only up to its last row's position.
    assert [x.kv_extent for x in tiles] == [138, 266, 310, 41, 20]
    assert sum(x.num_rows for x in tiles) == t.num_tokens
    capped = cut_tiles(t, max_tile_rows=16)
    assert max(x.num_rows for x in capped) == 16
    assert sum(x.num_rows for x in capped) == t.num_tokens


def test_units_sorted_by_area_and_gqa_heads_share_a_unit():
    tt = build_task_table(_table([(300, 10), (1, 4000), (9, 100)]), num_kv_heads=4, num_workers=3)
    costs = [u.cost for u in tt.units]
    assert costs == sorted(costs, reverse=True)
    assert len(tt.units) == 4 * len(tt.tiles)  # one unit per (tile, KV head), not per Q head
    assert sorted(tt.worker_order()) == list(range(len(tt.units)))


def test_snake_order():
    assert snake_deal([9, 8, 7, 6, 5, 4, 3], 3) == [[0, 5, 6], [1, 4], [2, 3]]


@pytest.mark.parametrize("workload", ["conversation", "coding"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("workers", [2, 4, 8])
def test_snake_deal_is_balanced(workload, seed, workers):
    specs = sample_batch(load_workload(workload), 1024, random.Random(seed))
    t = _table([(s.num_tokens, s.context_len) for s in specs])
    tt = build_task_table(t, num_kv_heads=4, num_workers=workers)
    costs = tt.worker_costs()
    biggest = tt.units[0].cost
    # Snake order over a descending list keeps every worker within one unit of the others...
    assert max(costs) - min(costs) <= biggest
    # ...which on these mixed batches (many more units than workers) is a tight ratio.
    assert max(costs) / min(costs) <= 1.5


def test_gemm_buckets_are_finite_and_cover_m():
    bs = buckets(2048)
    assert bs[:7] == [1, 16, 32, 48, 64, 96, 128] and bs[-1] == 2048  # M = 1: the GEMV
    assert len(bs) == len(set(bs)) < 50
    for m in range(1, 2049):
        pm = padded_m(m)
        assert pm >= m and pm in bs
        assert bucket_low(pm) <= m  # the bucket's low end is the first M that pads to it
    for pm in bs:
        assert padded_m(bucket_low(pm)) == pm and padded_m(bucket_low(pm) - 1) < pm


def test_cpu_tuner_keeps_linear_unless_another_is_nowhere_slower():
    from xyserve.tools.tune import pick_cpu

    ms = [49, 56, 64]
    t = {(0, m): 1.0 for m in ms}  # candidate 0: F.linear
    t |= {(1, 49): 0.96, (1, 56): 0.95, (1, 64): 0.94}  # faster everywhere, past the margin
    t |= {(2, 49): 1.20, (2, 56): 0.70, (2, 64): 0.60}  # much faster at 64, slower at 49
    assert pick_cpu(t, 3, ms) == 1
    t |= {(1, 49): 0.99}  # faster, but within the margin at 49: no promise
    assert pick_cpu(t, 3, ms) == 0
    assert pick_cpu(t, 3, ms, margin=1.0) == 1


def test_gemm_table_roundtrip_and_untuned_fallback(tmp_path):
    here = machine_signature("cpu")
    t = GemmTable(model="m", device="cpu", budget=64, shapes={"qkv": (96, 32)}, machine=here)
    t.set("qkv", 16, GemmConfig(block_m=16, cpu_impl="addmm"))
    path = t.save(tmp_path / "xyserve_gemm_table.json")
    assert json.loads(path.read_text())["version"] == TABLE_VERSION == 3
    back = GemmTable.load(path)
    assert back.machine == here
    assert back.lookup("qkv", 9, 96, 32) == GemmConfig(block_m=16, cpu_impl="addmm")
    assert find_table(tmp_path) is not None
    with pytest.warns(UserWarning, match="no tuned config"):
        assert back.lookup("qkv", 40, 96, 32) == default_config(48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning for the whole table, never one per shape
        assert back.lookup("qkv", 9, 64, 32) == default_config(16)  # other shape: not tuned
        back.lookup("o_proj", 200, 96, 32)


def test_a_table_naming_an_unknown_entry_point_is_refused_by_name(tmp_path):
    t = GemmTable(model="m", device="cpu", machine=machine_signature("cpu"))
    t.set("qkv", 16, GemmConfig(cpu_impl="swap8"))
    path = t.save(tmp_path / "xyserve_gemm_table.json")
    data = json.loads(path.read_text())
    data["entries"]["qkv"]["16"]["cpu_impl"] = "swapp"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"entry qkv / 16: cpu_impl 'swapp': choose one of"):
        GemmTable.load(path)
    with pytest.raises(ValueError, match="gpu_impl 'cuBLAS'"):
        GemmConfig(gpu_impl="cuBLAS")


def test_tuner_writes_a_table_that_loads(tmp_path):
    from xyserve.kernels.gemm.smooth import SmoothGemm
    from xyserve.tools.tune import main

    cfg = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
    cfg |= {"intermediate_size": 48, "vocab_size": 50}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc = main(["--model", str(tmp_path), "--budget", "40", "--repeat", "1", "--no-progress"])
    assert rc == 0
    gemm = SmoothGemm(model_path=tmp_path)
    assert set(gemm.table.entries) == set(OPS)  # every op by default, lm_head included
    assert gemm.table.machine == machine_signature("cpu")
    assert sorted(gemm.table.entries["qkv"]) == [1, 16, 32, 48]
    assert gemm.table.shapes["qkv"] == (32 + 2 * 2 * 8, 32)


def test_tuner_takes_a_bundled_model_name(tmp_path):
    """`xyserve tune --model xy-tiny` was a usage error ("cannot read config.json"): the
    name `serve` takes was read as a folder."""
    from xyserve.models import MODELS_DIR
    from xyserve.plan.gemm_table import GemmTable
    from xyserve.tools.tune import main

    out = tmp_path / "t.json"
    argv = ["--model", "xy-tiny", "--budget", "1", "--ops", "qkv", "--repeat", "1"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    cfg = json.loads((MODELS_DIR / "xy-tiny" / "config.json").read_text())
    assert GemmTable.load(out).shapes["qkv"][1] == cfg["hidden_size"]


def test_tuner_names_a_missing_model_without_a_traceback(tmp_path, capsys):
    from xyserve.tools.tune import main

    with pytest.raises(SystemExit) as e:  # was a FileNotFoundError traceback
        main(["--model", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    assert "config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path)])
    assert e.value.code == 2 and "config.json" in capsys.readouterr().err


def test_cpu_tuner_times_each_op_on_the_layout_its_upstream_op_leaves(monkeypatch):
    """A swapped GEMM leaves a column-major output: the op it feeds is tuned on that layout."""
    import xyserve.tools.tune as tune_mod

    cfg = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
    cfg |= {"intermediate_size": 24, "vocab_size": 50}
    op_of = {shape: op for op, shape in tune_mod.model_shapes(cfg).items()}
    assert len(op_of) == len(OPS), "the test tells ops apart by their (N, K)"
    seen: dict[tuple[str, int], bool] = {}  # (op, padded M) -> was the input column-major?

    def fake_tune_one(w, x, device, repeat, allow_tf32=False):
        op = op_of[tuple((w[0] if isinstance(w, list) else w).shape)]
        seen[(op, x.shape[0])] = x.stride(0) == 1
        return GemmConfig(cpu_impl="swap8" if op == "gate_up" else "linear")

    monkeypatch.setattr(tune_mod, "tune_one", fake_tune_one)
    table = tune_mod.tune(cfg, 32, "cpu", list(OPS), repeat=1, progress=False)
    for pm in (16, 32):
        assert seen[("down", pm)]  # after gate_up's swapped GEMM
        assert not seen[("o_proj", pm)]  # the attention output: row-major
        assert not seen[("qkv", pm)]  # down chose F.linear: row-major
        assert not seen[("lm_head", pm)]  # rows picked out of h: row-major
        assert table.entries["gate_up"][pm].cpu_impl == "swap8"


def test_a_table_from_before_the_gemv_bucket_serves_m_1_from_bucket_16():
    """M = 1 has its own bucket now; an older table (no entry 1) keeps giving M = 1 its 1-16
    entry, silently, as before."""
    t = GemmTable(shapes={"qkv": (96, 32)})
    t.set("qkv", 16, GemmConfig(block_m=16, cpu_impl="addmm"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t.lookup("qkv", 1, 96, 32) == GemmConfig(block_m=16, cpu_impl="addmm")
    t.set("qkv", 1, GemmConfig(block_m=16, cpu_impl="numba"))
    assert t.lookup("qkv", 1, 96, 32).cpu_impl == "numba"
    assert t.lookup("qkv", 2, 96, 32).cpu_impl == "addmm"


def test_an_untuned_bucket_runs_the_vendor_gemm_on_every_device():
    """Untuned Triton tiles ran at 0.26-0.69x cuBLAS on an H200 (docs/perf.md): a CUDA bucket
    no table tunes goes to cuBLAS, a tuned one keeps its tile, and CPU keeps ``F.linear``."""
    tuned = GemmConfig(block_m=16, block_n=128)
    t = GemmTable(model="m", device="cuda", shapes={"qkv": (96, 32)})
    t.set("qkv", 16, tuned)
    assert t.lookup("qkv", 9, 96, 32) == tuned
    with pytest.warns(UserWarning, match="no tuned config"):
        assert t.lookup("qkv", 40, 96, 32).gpu_impl == "cublas"
    assert GemmTable(device="cuda").lookup("o_proj", 1).gpu_impl == "cublas"
    cpu = GemmTable(device="cpu").lookup("o_proj", 1)
    assert (cpu.cpu_impl, cpu.gpu_impl) == ("linear", "triton")

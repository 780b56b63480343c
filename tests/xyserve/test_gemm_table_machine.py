"""GEMM tables belong to the machine they were tuned on; a first start tunes and caches one."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import pytest
import torch

import xyserve.tools.tune as tune_mod
from xyserve.kernels.gemm.smooth import SmoothGemm
from xyserve.plan.gemm_table import (
    OPS,
    TABLE_FILE,
    GemmConfig,
    GemmTable,
    Precision,
    cache_path,
    find_table,
    load_checked,
    model_shapes,
)
from xyserve.plan.machine import MachineSignature, cpu_signature, machine_signature

CFG = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
CFG |= {"intermediate_size": 48, "vocab_size": 50}


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path, monkeypatch):
    """A cache folder per test: the cache is keyed by the model's shapes, which most tests
    here share, so a table one test caches would otherwise be found by the next."""
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "xyserve-cache"))


def _model(folder, cfg=CFG):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _table(machine: MachineSignature | None, impl: str = "addmm") -> GemmTable:
    t = GemmTable(model="m", budget=64, shapes=model_shapes(CFG), machine=machine)
    for op in t.shapes:
        t.set(op, 16, GemmConfig(cpu_impl=impl))
    return t


def test_signature_describes_this_cpu_and_roundtrips():
    sig = cpu_signature()
    assert sig.kind == "cpu" and sig.cores >= 1
    assert sig.flags == tuple(sorted(sig.flags))
    back = MachineSignature.from_json(json.loads(json.dumps(sig.to_json())))
    assert back == sig and back.digest() == sig.digest()
    other = dataclasses.replace(sig, flags=tuple(f for f in sig.flags if f != "avx512f") + ("x",))
    assert other != sig and other.digest() != sig.digest()


def test_table_of_this_machine_is_applied(tmp_path):
    model = _model(tmp_path)
    _table(machine_signature("cpu")).save(model / TABLE_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = find_table(model, "cpu")
    assert t is not None and t.lookup("qkv", 9).cpu_impl == "addmm"


@pytest.mark.parametrize("foreign", ["other-cpu", "unrecorded"])
def test_foreign_table_is_not_applied_and_said_once(tmp_path, foreign):
    model = _model(tmp_path)
    here = machine_signature("cpu")
    amd = dataclasses.replace(here, vendor="AuthenticAMD", model="AMD EPYC", flags=("avx2", "fma"))
    _table(amd if foreign == "other-cpu" else None).save(model / TABLE_FILE)
    with pytest.warns(UserWarning, match="not applied"):
        assert find_table(model, "cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per table file, not per engine start
        assert find_table(model, "cpu") is None
    with pytest.warns(UserWarning, match="running the defaults"):  # autotune off (conftest)
        gemm = SmoothGemm(model_path=model)
    assert not gemm.table.entries  # the foreign table's addmm is nowhere used
    assert gemm.table.lookup("qkv", 9).cpu_impl == "linear"


def test_first_start_tunes_the_decode_buckets_once_and_caches(tmp_path, monkeypatch):
    model = _model(tmp_path)
    monkeypatch.setenv("XYSERVE_GEMM_AUTOTUNE", "quick")
    calls: list[int] = []

    def fake_tune_one(w, x, device, repeat, allow_tf32=False):
        calls.append(x.shape[0])
        return GemmConfig(cpu_impl="addmm")

    monkeypatch.setattr(tune_mod, "tune_one", fake_tune_one)
    first = SmoothGemm(model_path=model, device="cpu")
    path = cache_path(model, "cpu")
    assert path.is_file() and not (model / TABLE_FILE).exists()  # in the cache, not the model
    assert sorted(set(calls)) == [1, 16, 32, 48, 64]  # the decode buckets, for every op
    assert len(calls) == 5 * len(OPS)
    assert first.table.quick and first.table.machine == machine_signature("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # past the decode buckets: defaults, silently
        assert first.table.lookup("qkv", 300, *model_shapes(CFG)["qkv"]).cpu_impl == "linear"
    calls.clear()
    second = SmoothGemm(model_path=model, device="cpu")
    assert calls == []  # reused from the cache
    assert second.table.entries == first.table.entries


def test_a_bfloat16_first_start_tunes_in_bfloat16_and_caches_apart(tmp_path, monkeypatch):
    """A bfloat16 engine's first start times its GEMMs in bfloat16 (oneDNN/AMX entry points
    rank differently there) and keeps that table apart from the float32 one."""
    model = _model(tmp_path)
    monkeypatch.setenv("XYSERVE_GEMM_AUTOTUNE", "quick")
    dtypes: set[torch.dtype] = set()

    def fake_tune_one(w, x, device, repeat, allow_tf32=False):
        dtypes.add(x.dtype)
        return GemmConfig(cpu_impl="dnnl")

    monkeypatch.setattr(tune_mod, "tune_one", fake_tune_one)
    gemm = SmoothGemm(model_path=model, device="cpu", dtype="bfloat16")
    assert dtypes == {torch.bfloat16}
    bf16 = Precision("bfloat16")
    assert cache_path(model, "cpu", bf16).is_file() and not cache_path(model, "cpu").exists()
    assert gemm.table.dtype == "bfloat16" and gemm.table.lookup("qkv", 16).cpu_impl == "dnnl"
    dtypes.clear()
    again = SmoothGemm(model_path=model, device="cpu", dtype="bfloat16")
    assert dtypes == set() and again.table.entries == gemm.table.entries  # from the cache


def test_cache_is_keyed_by_model_shapes_and_honours_the_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "c"))
    a = _model(tmp_path / "a")
    b = _model(tmp_path / "b", CFG | {"vocab_size": 60})  # another lm_head shape
    assert cache_path(a, "cpu").parent == tmp_path / "c" / "gemm_tables"
    assert cache_path(a, "cpu") != cache_path(b, "cpu")
    assert machine_signature("cpu").digest() in cache_path(a, "cpu").name


def test_bad_autotune_mode_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XYSERVE_GEMM_AUTOTUNE", "sometimes")
    with pytest.raises(ValueError, match="XYSERVE_GEMM_AUTOTUNE"):
        SmoothGemm(model_path=_model(tmp_path))


def test_a_tune_for_another_device_leaves_the_table_beside_the_model(tmp_path, monkeypatch):
    """One file name serves every device: a CUDA tune of a model whose folder holds a CPU table
    goes to the cache folder, where find_table looks next, and the CPU table stays."""
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "cache"))
    gpu = MachineSignature(kind="cuda", vendor="NVIDIA", model="Test GPU", capability="9.0")
    monkeypatch.setattr("xyserve.plan.machine.cuda_signature", lambda index=0: gpu)
    model = _model(tmp_path / "m")
    assert tune_mod.default_out(model, "cuda", False) == model / TABLE_FILE  # none there yet
    _table(cpu_signature()).save(model / TABLE_FILE)
    assert tune_mod.default_out(model, "cpu", False) == model / TABLE_FILE
    out = tune_mod.default_out(model, "cuda", False)
    assert out == cache_path(model, "cuda") != model / TABLE_FILE
    cuda = _table(gpu)
    cuda.device = "cuda"
    cuda.save(out)
    assert find_table(model, "cuda").machine == gpu
    assert find_table(model, "cpu").machine == cpu_signature()


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu = MachineSignature(kind="cuda", vendor="NVIDIA", model="Test GPU", capability="9.0")
    monkeypatch.setattr("xyserve.plan.machine.cuda_signature", lambda index=0: gpu)
    return gpu


def _cuda_table(gpu: MachineSignature, dtype: str | None, tf32: bool = False) -> GemmTable:
    t = _table(gpu)
    t.device, t.dtype, t.allow_tf32 = "cuda", dtype, tf32
    return t


def test_a_table_applies_only_at_the_precision_it_was_tuned_at(tmp_path, fake_gpu):
    """A bfloat16 tile choice says nothing of float32, nor TF32 dots of exact ones."""
    model = _model(tmp_path)
    _cuda_table(fake_gpu, "bfloat16").save(model / TABLE_FILE)
    assert find_table(model, "cuda", Precision("bfloat16")) is not None
    with pytest.warns(UserWarning, match="tuned in bfloat16; this run is float32"):
        assert find_table(model, "cuda", Precision("float32")) is None
    _cuda_table(fake_gpu, "float32", tf32=True).save(model / TABLE_FILE)
    assert find_table(model, "cuda", Precision("float32", allow_tf32=True)) is not None
    with pytest.warns(UserWarning, match="tuned in float32-tf32; this run is float32"):
        assert find_table(model, "cuda", Precision("float32")) is None
    with pytest.raises(ValueError, match="does not apply here: it was tuned in float32-tf32"):
        SmoothGemm(table_path=model / TABLE_FILE, device="cuda", dtype="float32")
    # The cache keeps one table per precision, so tuning bf16 does not evict float32's.
    assert cache_path(model, "cuda", Precision("bfloat16")) != cache_path(model, "cuda")


def test_tables_without_a_recorded_precision(tmp_path, fake_gpu):
    """Before version 3: a CPU table was tuned in float32; a CUDA one's dtype is unknown."""
    for device, machine in (("cpu", machine_signature("cpu")), ("cuda", fake_gpu)):
        t = _table(machine)
        t.device = device
        data = t.to_json() | {"version": 2}
        del data["dtype"], data["allow_tf32"]
        path = tmp_path / f"{device}.json"
        path.write_text(json.dumps(data))
        loaded = GemmTable.load(path)
        if device == "cpu":
            assert loaded.dtype == "float32" and load_checked(path, "cpu") is not None
        else:
            assert loaded.dtype is None
            with pytest.raises(ValueError, match="records no precision"):
                load_checked(path, "cuda", Precision("bfloat16"))


def test_an_explicit_table_of_another_machine_is_refused(tmp_path):
    here = machine_signature("cpu")
    amd = dataclasses.replace(here, vendor="AuthenticAMD", model="AMD EPYC", flags=("avx2",))
    path = _table(amd).save(tmp_path / "t.json")
    with pytest.raises(ValueError, match="AMD EPYC"):
        SmoothGemm(table_path=path)


def test_a_tune_at_another_precision_leaves_the_table_beside_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "cache"))
    model = _model(tmp_path / "m")
    _table(cpu_signature()).save(model / TABLE_FILE)  # float32
    bf16 = Precision("bfloat16")
    assert tune_mod.default_out(model, "cpu", False) == model / TABLE_FILE
    assert tune_mod.default_out(model, "cpu", False, bf16) == cache_path(model, "cpu", bf16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_draft_model_applies_a_table_only_at_the_engines_precision(tmp_path, dtype, monkeypatch):
    """The draft's GEMMs run in the engine's dtype, so its table is looked up at that dtype:
    a float32 table beside the draft applies to a float32 engine only."""
    from xyserve.model.config import ModelConfig
    from xyserve.spec.draft import DraftModelProposer

    # Through the engine's runner: a CPU float32 draft would otherwise run fused, no GEMMs.
    monkeypatch.setattr("xyserve.spec.draft_forward.unsupported", lambda model: "test")

    from tiny_models import build_model

    draft = build_model(tmp_path / "draft", with_tokenizer=False)
    cfg = json.loads((draft / "config.json").read_text())
    t = GemmTable(model="d", budget=64, shapes=model_shapes(cfg), machine=machine_signature("cpu"))
    for op in t.shapes:
        t.set(op, 16, GemmConfig(cpu_impl="addmm"))
    t.save(draft / TABLE_FILE)
    mcfg = ModelConfig.from_dir(draft)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bfloat16 case says the table is not applied
        proposer = DraftModelProposer(
            draft, mcfg, torch.device("cpu"), dtype, 8, 4, "meta", "smooth"
        )
    applied = bool(proposer.runner.gemm.table.entries)
    assert applied == (dtype == torch.float32)


@pytest.mark.parametrize("argv", [["--budget", "0"], ["--budget", "-4"], ["--repeat", "0"]])
def test_tune_refuses_a_budget_or_repeat_below_one(tmp_path, capsys, argv):
    """--budget 0 tuned no bucket and wrote an empty table beside the model, which then applied
    here (bench offline took the model for tuned, the engine ran defaults without a word);
    --repeat 0 was a StatisticsError after the weights were built."""
    model = _model(tmp_path / "m")
    with pytest.raises(SystemExit) as exc:
        tune_mod.main(["--model", str(model), "--device", "cpu", "--no-progress", *argv])
    assert exc.value.code == 2 and f"{argv[0]} must be at least 1" in capsys.readouterr().err
    assert not (model / TABLE_FILE).exists()


def test_model_shapes_read_head_dim_as_the_loader_does(tmp_path):
    """A Qwen3 config without head_dim: the engine runs 128 (HF's default), and the tuner
    tuned hidden / heads, so its table described other shapes than the ones that run."""
    import json

    from xyserve.model.config import ModelConfig

    for arch in ("Qwen3ForCausalLM", "LlamaForCausalLM"):
        cfg = {
            "architectures": [arch],
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 100,
        }
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        mc = ModelConfig.from_dir(tmp_path)
        q = mc.num_heads * mc.head_dim
        assert model_shapes(cfg)["qkv"] == (q + 2 * mc.num_kv_heads * mc.head_dim, 256)
        assert model_shapes(cfg)["o_proj"] == (256, q)


def _fake_quick_tune(monkeypatch) -> list[int]:
    monkeypatch.setenv("XYSERVE_GEMM_AUTOTUNE", "quick")
    calls: list[int] = []

    def fake_tune_one(w, x, device, repeat, allow_tf32=False):
        calls.append(x.shape[0])
        return GemmConfig(cpu_impl="addmm")

    monkeypatch.setattr(tune_mod, "tune_one", fake_tune_one)
    return calls


BROKEN_TABLES = {
    "truncated": '{"version": 3, "device": "cpu", "entr',
    "not-an-object": "[1, 2]",
    "newer-version": '{"version": 99, "device": "cpu", "entries": {}}',
    "entries-not-an-object": '{"version": 3, "device": "cpu", "entries": {"qkv": [1]}}',
    "machine-not-an-object": '{"version": 3, "device": "cpu", "machine": "x86"}',
    "bad-bucket": '{"version": 3, "device": "cpu", "entries": {"qkv": {"x": {}}}}',
    "unknown-impl": '{"version": 3, "entries": {"qkv": {"16": {"cpu_impl": "amx"}}}}',
    "not-utf8": b"\xff\xfe\x00",
}


@pytest.mark.parametrize("name", BROKEN_TABLES)
def test_a_broken_cache_file_is_reported_and_retuned(tmp_path, monkeypatch, name):
    """A truncated, corrupt or other-version table in the cache (or beside the model) is said
    once and replaced by a fresh tune; never a traceback at engine start."""
    model = _model(tmp_path / "m")
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "c"))
    path = cache_path(model, "cpu")
    path.parent.mkdir(parents=True)
    text = BROKEN_TABLES[name]
    for p in (path, model / TABLE_FILE):
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    with pytest.warns(UserWarning, match="cannot be read"):
        assert find_table(model, "cpu") is None
    with pytest.raises(ValueError, match="t.json"):  # named explicitly: a clear error
        load_checked(_write(tmp_path / "t.json", text), "cpu")
    calls = _fake_quick_tune(monkeypatch)
    gemm = SmoothGemm(model_path=model)
    assert calls and gemm.table.quick and gemm.table.lookup("qkv", 9).cpu_impl == "addmm"
    assert GemmTable.load(path).entries == gemm.table.entries  # the cache file is whole again


def _write(path, text):
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def test_save_replaces_the_file_atomically(tmp_path, monkeypatch):
    """A reader never sees a half-written table: the new one is written aside and renamed
    over the old one, and nothing else is left in the folder."""
    import xyserve.plan.gemm_table as gt

    path = _table(machine_signature("cpu"), "addmm").save(tmp_path / "t.json")
    seen: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(GemmTable.load(dst).entries["qkv"][16].cpu_impl)  # the old one, whole
        seen.append(GemmTable.load(src).entries["qkv"][16].cpu_impl)  # the new one, whole
        real_replace(src, dst)

    monkeypatch.setattr(gt.os, "replace", replace)
    _table(machine_signature("cpu"), "swap8").save(path)
    assert seen == ["addmm", "swap8"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
    assert GemmTable.load(path).entries["qkv"][16].cpu_impl == "swap8"


def test_first_start_with_an_unwritable_cache_folder_runs_on_its_tune(tmp_path, monkeypatch):
    model = _model(tmp_path / "m")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "file"))
    calls = _fake_quick_tune(monkeypatch)
    with pytest.warns(UserWarning, match="cannot cache the tuned GEMM table"):
        gemm = SmoothGemm(model_path=model)
    assert calls and gemm.table.quick and gemm.table.lookup("qkv", 9).cpu_impl == "addmm"


@pytest.mark.parametrize(
    "case, named",
    [
        ("no-heads", "config.json has no 'num_attention_heads'"),
        ("config-a-list", "is not a model's config"),
        ("out-a-folder", "not a file that can be written"),
        ("out-with-cache", "not with --cache"),
        ("cuda-here", "no CUDA device here"),
    ],
)
def test_tune_bad_arguments_are_usage_errors(tmp_path, capsys, monkeypatch, case, named):
    """Each was a traceback, the --out ones only after the whole tune had run."""
    ran: list[int] = []
    monkeypatch.setattr(tune_mod, "tune", lambda *a, **k: ran.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = {k: v for k, v in CFG.items() if k != "num_attention_heads"}
    model = _model(tmp_path / "m", cfg if case == "no-heads" else CFG)
    if case == "config-a-list":
        (model / "config.json").write_text("[1]")
    argv = {
        "out-a-folder": ["--out", str(tmp_path)],
        "out-with-cache": ["--out", str(tmp_path / "t.json"), "--cache"],
        "cuda-here": ["--device", "cuda"],
    }.get(case, [])
    with pytest.raises(SystemExit) as exc:
        tune_mod.main(["--model", str(model), "--no-progress", *argv])
    assert exc.value.code == 2 and named in capsys.readouterr().err
    assert not ran


def test_a_table_tuned_with_another_thread_count_is_not_applied(tmp_path, monkeypatch):
    """The vendor GEMM splits its work over the torch threads, so which entry point wins at a
    given M depends on their number: a table (and the cache file) belongs to one count. One
    saved before the count was recorded still applies."""
    model = _model(tmp_path / "m")
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "c"))
    here = machine_signature("cpu")
    assert here.threads == torch.get_num_threads() and "threads" in here.describe()
    _table(dataclasses.replace(here, threads=here.threads + 1)).save(model / TABLE_FILE)
    with pytest.warns(UserWarning, match=f"tuned with {here.threads + 1} torch threads"):
        assert find_table(model, "cpu") is None
    _table(dataclasses.replace(here, threads=0)).save(model / TABLE_FILE)  # unrecorded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_table(model, "cpu") is not None
    before = cache_path(model, "cpu")
    n = torch.get_num_threads()
    torch.set_num_threads(n + 1)
    try:
        assert cache_path(model, "cpu") != before
    finally:
        torch.set_num_threads(n)
    assert cache_path(model, "cpu") == before  # stable within a thread count


def test_cache_key_is_the_shapes_not_the_folder_and_the_folder_is_absolute(tmp_path, monkeypatch):
    """Two folders of one model (a copy, another hub revision) had two cache files and tuned
    twice; a relative cache folder depended on the folder a process started in, and a relative
    XDG_CACHE_HOME was used though the XDG spec says to ignore it."""
    monkeypatch.setenv("XYSERVE_CACHE_DIR", str(tmp_path / "c"))
    a, b = _model(tmp_path / "llama"), _model(tmp_path / "snapshots" / "0123abcd")
    assert cache_path(a, "cpu") == cache_path(b, "cpu")
    assert cache_path(a, "cpu") != cache_path(a, "cpu", Precision("bfloat16"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XYSERVE_CACHE_DIR", "rel")
    assert cache_path(a, "cpu").parent == tmp_path / "rel" / "gemm_tables"
    monkeypatch.delenv("XYSERVE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg, root in (("relative/cache", tmp_path / "home" / ".cache"), (str(tmp_path), tmp_path)):
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert cache_path(a, "cpu").parent == root / "xyserve" / "gemm_tables"

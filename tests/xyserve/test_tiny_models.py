"""The bundled tiny model pair (xy-tiny + xy-tiny-draft) and the script that trains it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xyserve.models import (
    DEFAULT_DRAFT_MODEL,
    DEFAULT_MODEL,
    MODELS_DIR,
    resolve_model,
)
from xyserve.tools import train_tiny

BUNDLED = [DEFAULT_MODEL, DEFAULT_DRAFT_MODEL]
REQUIRED_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "README.md",
]
TINY_ARGS = [
    "--max-files",
    "8",
    "--vocab-size",
    "320",
    "--steps",
    "4",
    "--draft-steps",
    "3",
    "--seq-len",
    "32",
    "--batch-size",
    "2",
    "--hidden",
    "32",
    "--layers",
    "2",
    "--heads",
    "2",
    "--intermediate",
    "64",
    "--draft-hidden",
    "16",
    "--draft-layers",
    "1",
    "--draft-heads",
    "1",
    "--draft-intermediate",
    "32",
    "--max-pos",
    "64",
    "--eval-windows",
    "4",
    "--sample-tokens",
    "6",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _safetensors_dtypes(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {str(f.get_tensor(k).dtype) for k in f.keys()}


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tok


# ----------------------------------------------------------------------------- resolve_model
def test_resolve_model_names_and_default():
    assert DEFAULT_MODEL == "xy-tiny" and DEFAULT_DRAFT_MODEL == "xy-tiny-draft"
    assert resolve_model(None) == MODELS_DIR / "xy-tiny"
    assert resolve_model("xy-tiny") == MODELS_DIR / "xy-tiny"
    assert resolve_model("xy-tiny-draft") == MODELS_DIR / "xy-tiny-draft"


def test_tokenizer_argument_takes_a_bundled_name_as_model_does(tiny_llama):
    """tokenizer='xy-tiny' was read as a relative path ('missing file: xy-tiny/tokenizer.json')."""
    from xyserve import LLM

    llm = LLM(str(tiny_llama), tokenizer="xy-tiny", cpu_fused_decode="off")
    assert llm.get_tokenizer().decode(llm.get_tokenizer().encode("def f():")) == "def f():"


def test_resolve_model_local_path(tmp_path):
    d = tmp_path / "my-model"
    d.mkdir()
    assert resolve_model(str(d)) == d.resolve()
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model(str(missing))
    with pytest.raises(FileNotFoundError, match="meta-llama/Llama-3-8B"):
        resolve_model("meta-llama/Llama-3-8B")  # not bundled, not local: never downloaded


# ------------------------------------------------------------------------------ bundled pair
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_dir_loads_with_transformers(name):
    import torch

    path = resolve_model(name)
    for f in REQUIRED_FILES:
        assert (path / f).is_file(), f"{name} lacks {f}"
    assert _safetensors_dtypes(path / "model.safetensors") <= {"torch.bfloat16", "torch.float16"}

    model, tok = _load(path)
    assert model.config.model_type == "llama"
    assert tok.eos_token == "<|endoftext|>"
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert "chat_template" in cfg and cfg["eos_token"] == "<|endoftext|>"
    assert "bos_token" in cfg and cfg["model_max_length"] >= 256
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "hi" in chat and chat.endswith("<|assistant|>\n")

    ids = tok("def fibonacci(n):", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "def fibonacci(n):"  # byte-level BPE round-trips
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_bundled_pair_shares_tokenizer_and_fits_budget():
    target, draft = resolve_model(DEFAULT_MODEL), resolve_model(DEFAULT_DRAFT_MODEL)
    assert (target / "tokenizer.json").read_bytes() == (draft / "tokenizer.json").read_bytes()
    t_cfg = json.loads((target / "config.json").read_text())
    d_cfg = json.loads((draft / "config.json").read_text())
    assert t_cfg["vocab_size"] == d_cfg["vocab_size"]
    # the draft is several times smaller than the target
    t_bytes = (target / "model.safetensors").stat().st_size
    d_bytes = (draft / "model.safetensors").stat().st_size
    assert d_bytes * 3 < t_bytes
    total = sum(f.stat().st_size for d in (target, draft) for f in d.iterdir())
    assert total <= 40 * 1024 * 1024
    for d in (target, draft):
        card = (d / "README.md").read_text()
        assert "held-out cross-entropy" in card and "def fibonacci(n):" in card


def test_bundled_pair_predicts_python_and_draft_tracks_target():
    """Both models beat uniform guessing by far, and the draft mostly agrees with the target."""
    import math

    import torch

    text = (
        "import os\n\n\ndef read_file(path):\n    with open(path) as f:\n        return f.read()\n"
        "\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n"
        "\n    def __repr__(self):\n        return f'Point({self.x!r}, {self.y!r})'\n"
    )
    greedy = {}
    for name in BUNDLED:
        model, tok = _load(resolve_model(name))
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model(ids, labels=ids)
        assert out.loss.item() < 0.5 * math.log(len(tok)), name
        greedy[name] = out.logits[0].argmax(-1)
    agree = (greedy[DEFAULT_MODEL] == greedy[DEFAULT_DRAFT_MODEL]).float().mean().item()
    assert agree > 0.3


# ---------------------------------------------------------------------------- training script
def test_build_corpus_split_is_deterministic_and_skips_tests():
    a = train_tiny.build_corpus(max_files=None)
    b = train_tiny.build_corpus(max_files=None)
    train_paths = [p for p, _ in a.train]
    held_paths = [p for p, _ in a.heldout]
    assert train_paths == [p for p, _ in b.train] and held_paths == [p for p, _ in b.heldout]
    assert held_paths and not set(train_paths) & set(held_paths)
    assert len(held_paths) < len(train_paths)
    for p in train_paths + held_paths:
        parts = set(Path(p).parts)
        assert p.endswith(".py")
        assert not parts & {"test", "tests", "idle_test", "site-packages"}


# Fixed card facts: a fresh target, a distilled draft, and a resumed target whose first phase came
# from a card without ``training.json`` (no lr, no held-out loss, no threads recorded).
_CARD_COMMON = {
    "python": "3.11.7",
    "train_files": 698,
    "heldout_files": 33,
    "train_tokens": 3306790,
    "heldout_tokens": 177013,
    "vocab_size": 4096,
    "max_pos": 2048,
    "batch_size": 8,
    "seq_len": 256,
    "seed": 0,
    "threads": 1,
    "eval_tokens": 32768,
    "hidden": 256,
    "layers": 4,
    "heads": 4,
    "intermediate": 768,
    "params": 4458752,
    "sample": "def fibonacci(n):\n    return n<|endoftext|>",
}
CARD_INFOS = {
    "fresh_target": {
        **_CARD_COMMON,
        "role": "Target model of the pair; its draft is `xy-tiny-draft`. Draft held-out loss: 3.5.",
        "steps": 918,
        "seconds": 3000.0,
        "time_bound": False,
        "lr": 0.002,
        "heldout_loss": 3.9478855207562447,
        "agreement": 0.5201,
        "note": "This target is undertrained.",
    },
    "distilled_draft": {
        **_CARD_COMMON,
        "role": "Draft model of the pair.",
        "steps": 40,
        "seconds": 61.0,
        "time_bound": False,
        "lr": 0.003,
        "heldout_loss": 4.25,
        "agreement": 0.4,
        "distill": "0.5 x next-token CE + 0.5 x KL(target || draft) on the target's logits",
    },
    "target_without_draft": {
        **_CARD_COMMON,
        "role": "Target model, trained alone (--skip-draft).",
        "steps": 4,
        "seconds": 2.5,
        "time_bound": True,
        "lr": 0.002,
        "heldout_loss": 5.0,
    },
    "resumed_target": {
        **_CARD_COMMON,
        "role": "Target model, resumed.",
        "steps": 2854,
        "tokens_seen": 5844992,
        "seconds": 5280.6,
        "time_bound": True,
        "lr": "0.002 then 0.002",
        "heldout_loss": 3.1467180736362934,
        "agreement": 0.533,
        "phases": [
            {"steps": 918, "tokens": 1880064, "minutes": 50.0, "lr": None, "time_bound": True},
            {
                "steps": 1936,
                "tokens": 3964928,
                "minutes": 38.01,
                "threads": 1,
                "lr": 0.002,
                "heldout_loss": 3.1467180736362934,
                "time_bound": True,
            },
        ],
    },
}
CARD_DIR = Path(__file__).parent / "data"


@pytest.mark.parametrize("case", sorted(CARD_INFOS))
def test_model_card_renders_fixed_info_unchanged(case):
    """The card for fixed facts is the recorded text, byte for byte (``data/tiny_card_*.md``)."""
    card = train_tiny.render_card("xy-tiny", CARD_INFOS[case])
    assert card == (CARD_DIR / f"tiny_card_{case}.md").read_text()


def test_previous_phases_read_back_from_a_card_without_training_json(tmp_path):
    """A model dir without ``training.json``: its one phase is parsed from the card's text."""
    (tmp_path / "README.md").write_text(
        train_tiny.render_card("xy-tiny", CARD_INFOS["fresh_target"])
    )
    assert train_tiny.previous_phases(tmp_path) == [
        {
            "steps": 918,
            "tokens": 1880064,
            "minutes": 50.0,
            "threads": 1,
            "lr": 0.002,
            "time_bound": False,
        }
    ]
    (tmp_path / "README.md").write_text("# a card without training facts\n")
    with pytest.raises(ValueError, match="no training.json"):
        train_tiny.previous_phases(tmp_path)


def test_schedule_warms_up_decays_and_stops_at_the_time_cap():
    """Step-based: linear warm-up, cosine to 10% of the peak. A spent time cap ends training."""
    import math
    import time

    from xyserve.tools.train_tiny.train import Schedule

    s = Schedule(lr=1.0, steps=50, max_seconds=None, t0=time.time())
    assert s.warmup == 5
    assert [s.lr_for(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert s.lr_for(5) == pytest.approx(1.0)
    assert s.lr_for(5 + 45 // 2) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 22 / 45)))
    assert s.lr_for(50) == pytest.approx(0.1) and not s.time_bound
    # a cap whose time is half spent drives the cosine to its middle: lr 0.55
    half = Schedule(lr=1.0, steps=50, max_seconds=1000.0, t0=time.time() - 500.0)
    assert half.lr_for(1) == pytest.approx(0.4) and not half.time_bound  # warm-up ignores it
    assert half.lr_for(6) == pytest.approx(0.55, abs=0.01) and half.time_bound
    spent = Schedule(lr=1.0, steps=50, max_seconds=1.0, t0=time.time() - 10.0)
    assert spent.lr_for(4) == pytest.approx(1.0)
    assert spent.lr_for(5) is None and spent.time_bound


def test_train_tiny_end_to_end_writes_loadable_dirs(tmp_path):
    import torch

    out = tmp_path / "models"
    assert train_tiny.main([*TINY_ARGS, "--out", str(out)]) == 0
    for name in BUNDLED:
        d = out / name
        for f in REQUIRED_FILES:
            assert (d / f).is_file(), f"{name} lacks {f}"
        assert _safetensors_dtypes(d / "model.safetensors") == {"torch.bfloat16"}
        model, tok = _load(d)
        assert model.config.vocab_size == len(tok) <= 320
        card = (d / "README.md").read_text()
        assert "held-out cross-entropy" in card and "def fibonacci(n):" in card
        ids = tok("def f(x):", return_tensors="pt").input_ids
        with torch.no_grad():
            assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    assert "top-1 agreement" in (out / "xy-tiny-draft" / "README.md").read_text()
    # nothing half-written is left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLED)
    t_params = sum(p.numel() for p in _load(out / "xy-tiny")[0].parameters())
    d_params = sum(p.numel() for p in _load(out / "xy-tiny-draft")[0].parameters())
    assert d_params < t_params


def test_train_tiny_parallel_draft_matches_sequential(tmp_path):
    """--parallel trains the draft in a forked process; same seed -> same weights as in-process."""
    from safetensors.torch import load_file

    assert train_tiny.main([*TINY_ARGS, "--out", str(tmp_path / "seq")]) == 0
    assert train_tiny.main([*TINY_ARGS, "--parallel", "--out", str(tmp_path / "par")]) == 0
    for name in BUNDLED:
        a = load_file(str(tmp_path / "seq" / name / "model.safetensors"))
        b = load_file(str(tmp_path / "par" / name / "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name


def test_train_tiny_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    args = [*TINY_ARGS, "--skip-draft", "--seed", "3"]
    assert train_tiny.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert train_tiny.main([*args, "--out", str(tmp_path / "b")]) == 0
    a = load_file(str(tmp_path / "a" / "xy-tiny" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "xy-tiny" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    ta = (tmp_path / "a" / "xy-tiny" / "tokenizer.json").read_bytes()
    assert ta == (tmp_path / "b" / "xy-tiny" / "tokenizer.json").read_bytes()


def test_train_tiny_module_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "xyserve.tools.train_tiny", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--steps" in r.stdout and "--max-files" in r.stdout and "--out" in r.stdout


def test_train_tiny_resume_target(tmp_path):
    """--resume-target continues a target: same tokenizer files, loads, card lists both phases."""
    import torch

    first, second = tmp_path / "first", tmp_path / "second"
    assert train_tiny.main([*TINY_ARGS, "--out", str(first)]) == 0
    src = first / "xy-tiny"
    args = [*TINY_ARGS, "--steps", "3", "--resume-target", str(src), "--out", str(second)]
    assert train_tiny.main(args) == 0
    d = second / "xy-tiny"
    assert sorted(p.name for p in second.iterdir()) == ["xy-tiny"]  # no draft, nothing half-written
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / f).read_bytes() == (src / f).read_bytes(), f
    assert _safetensors_dtypes(d / "model.safetensors") == {"torch.bfloat16"}
    assert json.loads((d / "config.json").read_text()) == json.loads(
        (src / "config.json").read_text()
    )
    phases = json.loads((d / "training.json").read_text())["phases"]
    assert [p["steps"] for p in phases] == [4, 3]
    card = (d / "README.md").read_text()
    assert "| 1 | 4 |" in card and "| 2 | 3 |" in card and "top-1 agreement" in card
    assert "def fibonacci(n):" in card
    model, tok = _load(d)
    old, _ = _load(src)
    assert any((a != b).any() for a, b in zip(model.parameters(), old.parameters()))
    ids = tok("def f(x):", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_train_tiny_distill_draft(tmp_path):
    """--distill-draft continues a draft against its target: the tokenizer files are copied,
    the weights move, the card lists both phases and the distillation, and the flags that
    only this mode reads are refused without it."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_tiny.main([*TINY_ARGS, "--out", str(first)]) == 0
    src = first / "xy-tiny-draft"
    args = [*TINY_ARGS, "--draft-steps", "3", "--distill-alpha", "0.5", "--greedy-prompts", "5"]
    assert train_tiny.main([*args, "--distill-draft", str(src), "--out", str(second)]) == 0
    d = second / "xy-tiny-draft"
    assert sorted(p.name for p in second.iterdir()) == ["xy-tiny-draft"]
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / f).read_bytes() == (src / f).read_bytes(), f
    assert _safetensors_dtypes(d / "model.safetensors") == {"torch.bfloat16"}
    phases = json.loads((d / "training.json").read_text())["phases"]
    assert [p["steps"] for p in phases] == [3, 3]
    card = (d / "README.md").read_text()
    assert "| 1 | 3 |" in card and "| 2 | 3 |" in card and "top-1 agreement" in card
    assert "0.5 x KL(target || draft) + 0.5 x CE against the target's greedy token" in card
    assert "greedy continuations of 5 train prefixes" in card
    model, _ = _load(d)
    old, _ = _load(src)
    assert any((a != b).any() for a, b in zip(model.parameters(), old.parameters()))
    # a third phase, on train windows alone: the card names each phase's objective
    third = tmp_path / "third"
    args = [
        *args,
        "--distill-alpha",
        "1",
        "--greedy-share",
        "0",
        "--teacher",
        str(first / "xy-tiny"),
    ]
    assert train_tiny.main([*args, "--distill-draft", str(d), "--out", str(third)]) == 0
    card = (third / "xy-tiny-draft" / "README.md").read_text()
    assert (
        "objective: phase 1: next-token CE; phase 2: 0.5 x KL(target || draft) + 0.5 x CE "
        "against the target's greedy token, on train windows and, for 0.5 of the batches, the "
        "target's greedy continuations of 5 train prefixes; phase 3: 1 x KL(target || draft) + "
        "0 x CE against the target's greedy token, on train windows\n"
    ) in card
    for bad in (["--greedy-share", "0.3"], ["--greedy-s", "0"], ["--teacher", str(src)]):
        with pytest.raises(SystemExit):
            train_tiny.parse_args([*TINY_ARGS, *bad])
    with pytest.raises(SystemExit):
        train_tiny.parse_args([*TINY_ARGS, "--distill-draft", str(src), "--greedy-share", "2"])


def test_greedy_pool_rows_are_the_models_greedy_continuations():
    """Each row of the pool is a train prefix, then at every later position the model's argmax
    over the tokens before it, EOS left out (it never ends a row early)."""
    import numpy as np
    import torch

    from xyserve.tools.train_tiny.data import greedy_pool
    from xyserve.tools.train_tiny.train import Size, make_model

    model = make_model(Size(16, 1, 1, 32), 40, 64, eos_id=0, seed=1).eval()
    stream = np.arange(200, dtype=np.int64) % 37 + 1
    pool = greedy_pool(model, stream, 3, 11, seed=5, batch=2)
    assert pool.shape == (3, 12)
    for row in pool:
        assert (np.diff(row[:6].numpy()) % 37 == 1).all()  # a window of the stream
        with torch.no_grad():
            logits = model(input_ids=row[None, :-1]).logits[0]
        logits[:, 0] = -torch.inf  # EOS
        assert row[6:].tolist() == logits[5:].argmax(-1).tolist()

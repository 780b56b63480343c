"""Train the bundled tiny model pair (``xy-tiny`` target + ``xy-tiny-draft``) on this machine.

The corpus is the Python standard library's own sources (found with ``sysconfig``), split
deterministically into train and held-out files by a hash of each file's relative path. A
byte-level BPE tokenizer is trained with ``tokenizers``; then two ``LlamaForCausalLM`` models that
share it are trained with plain PyTorch/AdamW: first the target, then a several times smaller
draft (optionally distilled from the target). Each model is written as an HF-format directory
(``config.json``, bf16 ``model.safetensors``, tokenizer files, ``generation_config.json`` and a
model card ``README.md``). Directories are written to a temporary sibling and renamed at the end,
so a partially written model never appears at the output path.

Usage::

    python -m xyserve.tools.train_tiny --out src/xyserve/models
    xyserve train-tiny --out /tmp/tiny --max-files 20 --steps 5 --vocab-size 300 ...

Continuing an existing target (same tokenizer and architecture, the draft is left as it is)::

    python -m xyserve.tools.train_tiny --resume-target src/xyserve/models/xy-tiny \
        --out /tmp/resumed --max-minutes 40 --threads 1

``--resume-target DIR`` loads DIR's bf16 weights (trained in float32), reuses DIR's tokenizer files
byte for byte, skips draft training, runs a fresh warm-up + cosine schedule for ``--steps`` /
``--max-minutes`` on differently seeded windows, and evaluates held-out loss and the draft's top-1
agreement (draft from ``--resume-draft``, default: DIR's sibling ``--draft-name``) on the same
held-out windows as a fresh run. The card lists every training phase (kept in ``training.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("xyserve.train_tiny")

EOS_TOKEN = "<|endoftext|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [EOS_TOKEN, *ROLE_TOKENS]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SAMPLE_PROMPT = "def fibonacci(n):"
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


# --------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    root: Path
    train: list[tuple[str, str]]  # (relative path, text)
    heldout: list[tuple[str, str]]


def _is_heldout(rel: str, heldout_pct: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return (h % 10_000) < heldout_pct * 100


def build_corpus(
    root: Path | None = None, max_files: int | None = None, heldout_pct: float = 5.0
) -> Corpus:
    """Collect stdlib ``*.py`` files (no test dirs / site-packages), split by path hash."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                files.append(str((Path(dirpath) / fn).relative_to(root).as_posix()))
    files.sort()
    if not files:
        raise FileNotFoundError(f"no *.py files found under {root}")
    train_paths = [f for f in files if not _is_heldout(f, heldout_pct)]
    held_paths = [f for f in files if _is_heldout(f, heldout_pct)]
    if max_files is not None:
        # keep the split's proportions but cap the total, deterministically (sorted by path)
        n_held = max(1, round(max_files * heldout_pct / 100))
        train_paths = train_paths[: max(1, max_files - n_held)]
        held_paths = held_paths[:n_held]

    def read(paths: list[str]) -> list[tuple[str, str]]:
        out = []
        for rel in paths:
            try:
                text = (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                out.append((rel, text))
        return out

    train, heldout = read(train_paths), read(held_paths)
    if not heldout and len(train) > 1:  # tiny corpora: always keep one held-out file
        heldout = [train.pop()]
    if not train or not heldout:
        raise ValueError(f"corpus under {root} is too small for a train/held-out split")
    return Corpus(root=root, train=train, heldout=heldout)


# ------------------------------------------------------------------------------------ tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": list(ROLE_TOKENS),
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def encode_texts(tok, texts: list[str], eos_id: int):
    """Concatenate ``text <|endoftext|>`` for every file into one token stream."""
    import numpy as np

    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------- model
@dataclass
class Size:
    hidden: int
    layers: int
    heads: int
    intermediate: int


def make_model(size: Size, vocab_size: int, max_pos: int, eos_id: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.float()
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _windows(stream, seq_len: int, n: int, gen):
    import torch

    hi = len(stream) - seq_len - 1
    if hi <= 0:
        raise ValueError(f"token stream of {len(stream)} tokens is too short for seq_len {seq_len}")
    starts = torch.randint(0, hi + 1, (n,), generator=gen).tolist()
    import numpy as np

    return torch.from_numpy(np.stack([stream[s : s + seq_len + 1] for s in starts]))


def heldout_batches(stream, seq_len: int, batch_size: int, max_windows: int):
    """Deterministic non-overlapping held-out windows."""
    import torch

    n = min(max_windows, max(1, (len(stream) - 1) // seq_len))
    if (len(stream) - 1) < seq_len:
        raise ValueError("held-out stream is shorter than seq_len")
    stride = max(seq_len, (len(stream) - seq_len - 1) // max(1, n))
    wins = [stream[i * stride : i * stride + seq_len + 1] for i in range(n)]
    wins = [w for w in wins if len(w) == seq_len + 1]
    import numpy as np

    x = torch.from_numpy(np.stack(wins))
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def train_model(
    model,
    stream,
    *,
    steps: int,
    seq_len: int,
    batch_size: int,
    lr: float,
    seed: int,
    name: str,
    teacher=None,
    distill_alpha: float = 0.5,
    log_every: int = 10,
    progress: bool = True,
    max_seconds: float | None = None,
) -> dict:
    """AdamW + linear warmup + cosine decay on random windows of ``stream``."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    warmup = max(1, min(100, steps // 10))

    def lr_at(step: int, progress: float | None = None) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup) if progress is None else progress
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    model.train()
    if teacher is not None:
        teacher.eval()
    t0 = time.time()
    ema = None
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress, mininterval=2.0)
    done = 0
    time_bound = False
    for step in bar:
        # With a wall-clock cap the cosine schedule runs on max(step progress, time progress),
        # so the learning rate is fully decayed when the cap is reached (a shared CPU may be
        # slower than planned). Without a cap (or when it does not bind) it is step-based and
        # the run is deterministic.
        progress = None
        if max_seconds is not None and step >= warmup:
            by_time = (time.time() - t0) / max_seconds
            by_step = (step - warmup) / max(1, steps - warmup)
            if by_time > by_step:
                progress, time_bound = by_time, True
            if by_time >= 1.0:
                log.warning("%s: time cap of %.0fs reached after %d steps", name, max_seconds, step)
                break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress)
        batch = _windows(stream, seq_len, batch_size, gen)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=x).logits.float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss = ce
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(input_ids=x).logits.float()
            kl = F.kl_div(
                F.log_softmax(logits, -1).reshape(-1, logits.size(-1)),
                F.log_softmax(t_logits, -1).reshape(-1, logits.size(-1)),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - distill_alpha) * ce + distill_alpha * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        ce_v = ce.item()
        ema = ce_v if ema is None else 0.95 * ema + 0.05 * ce_v
        bar.set_postfix(loss=f"{ema:.3f}")
        if step % log_every == 0 or step == steps - 1:
            el = time.time() - t0
            tps = (step + 1) * batch_size * seq_len / max(el, 1e-9)
            log.info(
                "%s step %d/%d ce %.4f (ema %.4f) lr %.2e  %.0f tok/s  %.0fs",
                name,
                step + 1,
                steps,
                ce_v,
                ema,
                opt.param_groups[0]["lr"],
                tps,
                el,
            )
    bar.close()
    model.eval()
    return {
        "steps": done,
        "seconds": time.time() - t0,
        "final_train_loss_ema": ema,
        "time_bound": time_bound,
    }


def bf16_roundtrip(model) -> None:
    """Round the weights to bf16 (what is saved), keeping fp32 compute for evaluation."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def evaluate(model, batches) -> float:
    import torch
    import torch.nn.functional as F

    tot, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            x, y = b[:, :-1], b[:, 1:]
            logits = model(input_ids=x).logits.float()
            tot += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
            ).item()
            n += y.numel()
    return tot / max(1, n)


def top1_agreement(draft, target, batches) -> float:
    import torch

    agree, n = 0, 0
    with torch.no_grad():
        for b in batches:
            x = b[:, :-1]
            a = draft(input_ids=x).logits.argmax(-1)
            t = target(input_ids=x).logits.argmax(-1)
            agree += int((a == t).sum())
            n += t.numel()
    return agree / max(1, n)


def greedy_sample(model, tok, prompt: str, max_new_tokens: int, eos_id: int) -> str:
    import torch

    ids = tok.encode(prompt).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    return prompt + tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=False)


# ---------------------------------------------------------------------------------------- write
def _card(name: str, info: dict) -> str:
    lines = [
        "---",
        "license: psf-2.0",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "---",
        "",
        f"# {name}",
        "",
        info["role"],
        "",
        "Trained from scratch on this project's CPU by `python -m xyserve.tools.train_tiny` "
        "(`src/xyserve/tools/train_tiny.py`).",
        "",
        "## Corpus",
        "",
        f"The `*.py` sources of the Python {info['python']} standard library (PSF licence), "
        "found with `sysconfig.get_paths()['stdlib']`, excluding `test`/`tests`/`idle_test` "
        "directories and `site-packages`. Files are split by a SHA-256 hash of their relative "
        f"path: {info['train_files']} train files ({info['train_tokens']:,} tokens), "
        f"{info['heldout_files']} held-out files ({info['heldout_tokens']:,} tokens).",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        "| architecture | `LlamaForCausalLM` (tied input/output embeddings) |",
        f"| parameters | {info['params']:,} |",
        f"| hidden / layers / heads / MLP | {info['hidden']} / {info['layers']} / "
        f"{info['heads']} / {info['intermediate']} |",
        f"| vocabulary | {info['vocab_size']} (byte-level BPE, `tokenizers`) |",
        f"| context (max_position_embeddings) | {info['max_pos']} |",
        "| weights | bfloat16 safetensors |",
        "",
        "## Training",
        "",
        f"- steps: {info['steps']}, batch {info['batch_size']} x {info['seq_len']} tokens "
        f"({info.get('tokens_seen', info['steps'] * info['batch_size'] * info['seq_len']):,} "
        "tokens seen" + (", all phases)" if info.get("phases") else ")"),
        f"- optimizer: AdamW (betas 0.9/0.95, weight decay 0.1), peak lr {info['lr']}, "
        "linear warm-up then cosine decay to 10%",
        "- schedule: "
        + (
            "time-capped (the cosine followed elapsed wall-clock time on a shared CPU, so "
            "this run is not bit-reproducible)"
            if info.get("time_bound")
            else "step-based (reproducible with the seed)"
        ),
        f"- seed: {info['seed']}; wall time {info['seconds'] / 60:.1f} min on {info['threads']} "
        "CPU thread(s)",
    ]
    if info.get("distill"):
        lines.append(f"- objective: {info['distill']}")
    if info.get("phases"):
        lines += [
            "",
            "Training phases (each with its own warm-up + cosine schedule; later phases resume "
            "from the previous weights with the same tokenizer):",
            "",
            "| phase | steps | tokens seen | wall time | peak lr | threads | held-out loss after |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, ph in enumerate(info["phases"], 1):
            loss = ph.get("heldout_loss")
            lines.append(
                f"| {i} | {ph['steps']} | {ph['tokens']:,} | {ph['minutes']:.1f} min | "
                f"{ph.get('lr', '?')} | {ph.get('threads', '?')} | "
                + (f"{loss:.4f}" if loss is not None else "?")
                + " |"
            )
        lines.append(
            f"| total | {sum(ph['steps'] for ph in info['phases'])} | "
            f"{sum(ph['tokens'] for ph in info['phases']):,} | "
            f"{sum(ph['minutes'] for ph in info['phases']):.1f} min | | | |"
        )
    lines += [
        "",
        "## Evaluation (held-out files, bf16 weights)",
        "",
        f"- held-out cross-entropy: **{info['heldout_loss']:.4f}** nats/token "
        f"(perplexity {math.exp(info['heldout_loss']):.2f}) over {info['eval_tokens']:,} tokens",
    ]
    if info.get("agreement") is not None:
        lines.append(
            f"- draft top-1 agreement with the target's greedy next token: "
            f"**{info['agreement'] * 100:.1f}%** over {info['eval_tokens']:,} held-out positions"
        )
    if info.get("note"):
        lines += ["", "## Known limitation", "", info["note"]]
    lines += [
        "",
        f"## Greedy continuation of `{SAMPLE_PROMPT}`",
        "",
        "```python",
        info["sample"],
        "```",
        "",
        "This is a toy model for testing a serving engine (speculative decoding, scheduling); "
        "it is not useful for anything else.",
        "",
    ]
    return "\n".join(lines)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_model_dir(
    model,
    tok,
    out_dir: Path,
    info: dict,
    max_pos: int,
    eos_id: int,
    tokenizer_from: Path | None = None,
) -> None:
    """Write an HF-format directory atomically (temp sibling, then rename).

    With ``tokenizer_from`` the tokenizer files are copied byte for byte from that directory.
    ``info["phases"]`` (if any) is also written to ``training.json``.
    """
    import torch
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        do_sample=False,
        max_new_tokens=128,
    )
    model.save_pretrained(tmp, safe_serialization=True)
    if info.get("phases"):
        (tmp / "training.json").write_text(json.dumps({"phases": info["phases"]}, indent=2) + "\n")
    if tokenizer_from is not None:
        for f in TOKENIZER_FILES:
            shutil.copyfile(Path(tokenizer_from) / f, tmp / f)
    else:
        _write_tokenizer(tok, tmp, max_pos)
    (tmp / "README.md").write_text(_card(out_dir.name, info))
    model.float()
    for f in tmp.iterdir():
        f.chmod(0o644)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _write_tokenizer(tok, tmp: Path, max_pos: int) -> None:
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(max_pos), indent=2) + "\n"
    )
    (tmp / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": EOS_TOKEN,
                "pad_token": EOS_TOKEN,
                "additional_special_tokens": ROLE_TOKENS,
            },
            indent=2,
        )
        + "\n"
    )


# ------------------------------------------------------------------------------- draft helpers
def _draft_size(args) -> Size:
    return Size(args.draft_hidden, args.draft_layers, args.draft_heads, args.draft_intermediate)


def _train_draft(args, vocab, max_pos, eos_id, train_stream, seq_len, teacher=None):
    draft = make_model(_draft_size(args), vocab, max_pos, eos_id, args.seed + 100)
    log.info("draft: %d params", n_params(draft))
    stats = train_model(
        draft,
        train_stream,
        steps=args.draft_steps if args.draft_steps is not None else args.steps,
        seq_len=seq_len,
        batch_size=args.batch_size,
        lr=args.draft_lr,
        seed=args.seed + 2,
        name=args.draft_name,
        teacher=teacher,
        distill_alpha=args.distill_alpha,
        log_every=args.log_every,
        progress=not args.no_progress,
        max_seconds=args.draft_max_minutes * 60 if args.draft_max_minutes else None,
    )
    return draft, stats


def _draft_child(args, vocab, max_pos, eos_id, train_stream, seq_len, threads, out_path) -> None:
    """Runs in a forked process: train the draft and save its weights + stats to ``out_path``."""
    import torch

    torch.set_num_threads(threads)
    draft, stats = _train_draft(args, vocab, max_pos, eos_id, train_stream, seq_len)
    torch.save({"state_dict": draft.state_dict(), "stats": stats}, out_path)


# ----------------------------------------------------------------------------------------- main
def _prepare_data(args, tok=None, max_pos: int | None = None):
    """Corpus split, tokenizer (trained unless given), token streams and held-out windows."""
    import torch

    corpus = build_corpus(args.stdlib, args.max_files, args.heldout_pct)
    train_texts = [t for _, t in corpus.train]
    held_texts = [t for _, t in corpus.heldout]
    log.info(
        "corpus %s: %d train files, %d held-out files",
        corpus.root,
        len(train_texts),
        len(held_texts),
    )
    if tok is None:
        tok = train_tokenizer(train_texts, args.vocab_size)
    vocab = tok.get_vocab_size()
    eos_id = tok.token_to_id(EOS_TOKEN)
    train_stream = encode_texts(tok, train_texts, eos_id)
    held_stream = encode_texts(tok, held_texts, eos_id)
    log.info(
        "tokenizer vocab %d; %d train tokens, %d held-out tokens",
        vocab,
        len(train_stream),
        len(held_stream),
    )
    seq_len = min(args.seq_len, len(held_stream) - 1, len(train_stream) - 2)
    eval_batches = heldout_batches(held_stream, seq_len, args.batch_size, args.eval_windows)
    eval_tokens = sum(b[:, 1:].numel() for b in eval_batches)
    common = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "train_files": len(train_texts),
        "heldout_files": len(held_texts),
        "train_tokens": len(train_stream),
        "heldout_tokens": len(held_stream),
        "vocab_size": vocab,
        "max_pos": max_pos or max(args.max_pos, seq_len),
        "batch_size": args.batch_size,
        "seq_len": seq_len,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "eval_tokens": eval_tokens,
    }
    return tok, train_stream, eval_batches, common


def _previous_phases(model_dir: Path) -> list[dict]:
    """Training phases of an existing model dir: its ``training.json``, else parsed from its card."""
    record = model_dir / "training.json"
    if record.is_file():
        return json.loads(record.read_text())["phases"]
    card = (model_dir / "README.md").read_text()
    m = re.search(r"- steps: (\d+), batch \d+ x \d+ tokens \(([\d,]+) tokens seen\)", card)
    w = re.search(r"wall time ([\d.]+) min on (\d+) CPU", card)
    lr = re.search(r"peak lr ([\d.e+-]+),", card)
    if not (m and w):
        raise ValueError(f"{model_dir}: no training.json, and its card has no steps / wall time")
    return [
        {
            "steps": int(m[1]),
            "tokens": int(m[2].replace(",", "")),
            "minutes": float(w[1]),
            "threads": int(w[2]),
            "lr": float(lr[1]) if lr else None,
            "time_bound": "time-capped" in card,
        }
    ]


def resume_target(args, t_start: float) -> int:
    """``--resume-target``: continue training an existing target; the draft is only evaluated."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    src = Path(args.resume_target)
    draft_dir = Path(args.resume_draft) if args.resume_draft else src.parent / args.draft_name
    if (draft_dir / "tokenizer.json").read_bytes() != (src / "tokenizer.json").read_bytes():
        raise ValueError(f"{draft_dir} does not share {src}'s tokenizer")
    phases = _previous_phases(src)
    target = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    draft = LlamaForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS_TOKEN)
    max_pos = target.config.max_position_embeddings
    _, train_stream, eval_batches, common = _prepare_data(args, tok, max_pos)
    seq_len = common["seq_len"]
    if common["vocab_size"] != target.config.vocab_size:
        raise ValueError(f"{src}: tokenizer and model vocab sizes differ")
    phases[-1]["heldout_loss"] = evaluate(target, eval_batches)  # same weights, measured here
    d_loss = evaluate(draft, eval_batches)
    log.info(
        "resuming %s (%d params): held-out loss %.4f (draft %.4f) after %d phase(s)",
        src,
        n_params(target),
        phases[-1]["heldout_loss"],
        d_loss,
        len(phases),
    )
    stats = train_model(
        target,
        train_stream,
        steps=args.steps,
        seq_len=seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed + 1 + 1000 * len(phases),  # windows differ from earlier phases
        name=args.target_name,
        log_every=args.log_every,
        progress=not args.no_progress,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    bf16_roundtrip(target)
    t_loss = evaluate(target, eval_batches)
    agree = top1_agreement(draft, target, eval_batches)
    sample = greedy_sample(target, tok, SAMPLE_PROMPT, args.sample_tokens, eos_id)
    log.info(
        "held-out loss %.4f (draft %.4f); agreement %.4f; sample:\n%s",
        t_loss,
        d_loss,
        agree,
        sample,
    )
    phases.append(
        {
            "steps": stats["steps"],
            "tokens": stats["steps"] * args.batch_size * seq_len,
            "minutes": round(stats["seconds"] / 60, 2),
            "threads": common["threads"],
            "lr": args.lr,
            "heldout_loss": t_loss,
            "time_bound": stats["time_bound"],
        }
    )
    cfg = target.config
    info = {
        **common,
        **stats,
        "role": "Target model of xyserve's bundled tiny pair (default model); its speculative "
        f"draft is `{draft_dir.name}`. Draft held-out loss: {d_loss:.4f}.",
        "params": n_params(target),
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "intermediate": cfg.intermediate_size,
        "steps": sum(p["steps"] for p in phases),
        "tokens_seen": sum(p["tokens"] for p in phases),
        "seconds": 60 * sum(p["minutes"] for p in phases),
        "time_bound": any(p.get("time_bound") for p in phases),
        "lr": " then ".join(f"{p['lr']}" for p in phases),
        "heldout_loss": t_loss,
        "agreement": agree,
        "sample": sample,
        "phases": phases,
    }
    if t_loss >= d_loss:
        info["note"] = (
            f"This target is undertrained: its held-out loss ({t_loss:.4f}) is higher than the "
            f"draft's ({d_loss:.4f}). Resume it again with --resume-target to fix this."
        )
    save_model_dir(
        target, tok, Path(args.out) / args.target_name, info, max_pos, eos_id, tokenizer_from=src
    )
    result = {k: info[k] for k in ("params", "steps", "tokens_seen", "heldout_loss", "agreement")}
    result.update(draft_heldout_loss=d_loss, phase=phases[-1], total_seconds=time.time() - t_start)
    log.info("done: %s", json.dumps(result, indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="xyserve train-tiny",
        description="Train the bundled tiny Llama target + draft pair on the Python stdlib.",
    )
    p.add_argument("--out", default="src/xyserve/models", help="parent output directory")
    p.add_argument("--target-name", default="xy-tiny")
    p.add_argument("--draft-name", default="xy-tiny-draft")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stdlib", default=None, help="source root (default: sysconfig stdlib)")
    p.add_argument("--max-files", type=int, default=None, help="cap on corpus files")
    p.add_argument("--heldout-pct", type=float, default=5.0)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-pos", type=int, default=2048, help="max_position_embeddings")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=1500, help="target training steps")
    p.add_argument("--draft-steps", type=int, default=4000, help="draft training steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--draft-lr", type=float, default=3e-3)
    p.add_argument("--distill-alpha", type=float, default=0.0, help="0 = plain next-token CE")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--draft-hidden", type=int, default=128)
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--draft-heads", type=int, default=2)
    p.add_argument("--draft-intermediate", type=int, default=384)
    p.add_argument("--eval-windows", type=int, default=128)
    p.add_argument("--sample-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock cap for the target: the LR schedule also follows elapsed time and "
        "training stops at the cap (the card records the steps done); makes runs timing-dependent",
    )
    p.add_argument("--draft-max-minutes", type=float, default=None, help="same, for the draft")
    p.add_argument("--skip-draft", action="store_true")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="train the draft in a forked process alongside the target, splitting --threads "
        "between them (no distillation); more robust on a busy shared CPU",
    )
    p.add_argument(
        "--resume-target",
        metavar="DIR",
        default=None,
        help="continue training the target model directory DIR (same tokenizer and architecture): "
        "skips tokenizer and draft training, runs a fresh warm-up + cosine schedule for --steps / "
        "--max-minutes, and writes --out/--target-name with a card listing every phase",
    )
    p.add_argument(
        "--resume-draft",
        metavar="DIR",
        default=None,
        help="draft evaluated with --resume-target (default: DIR's sibling --draft-name)",
    )
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)

    import numpy as np
    import torch

    torch.set_num_threads(max(1, args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    t_start = time.time()
    if args.resume_target:
        return resume_target(args, t_start)
    tok, train_stream, eval_batches, common = _prepare_data(args)
    vocab, eos_id, seq_len, max_pos = (
        tok.get_vocab_size(),
        tok.token_to_id(EOS_TOKEN),
        common["seq_len"],
        common["max_pos"],
    )
    results: dict[str, dict] = {}

    # ---- draft in a parallel process (forked before any model exists)
    child = None
    parallel = args.parallel and not args.skip_draft
    if parallel:
        import multiprocessing as mp
        import tempfile

        if args.distill_alpha > 0:
            raise SystemExit("--parallel cannot distill (the target is not trained yet)")
        per_proc = max(1, args.threads // 2)
        child_out = Path(tempfile.mkdtemp(prefix="xy-draft-")) / "draft.pt"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        child = mp.get_context("fork").Process(
            target=_draft_child,
            args=(args, vocab, max_pos, eos_id, train_stream, seq_len, per_proc, child_out),
            daemon=True,
        )
        child.start()
        torch.set_num_threads(per_proc)
        common["threads"] = per_proc

    # ---- target
    t_size = Size(args.hidden, args.layers, args.heads, args.intermediate)
    target = make_model(t_size, vocab, max_pos, eos_id, args.seed)
    log.info("target: %d params", n_params(target))
    stats = train_model(
        target,
        train_stream,
        steps=args.steps,
        seq_len=seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed + 1,
        name=args.target_name,
        log_every=args.log_every,
        progress=not args.no_progress,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    bf16_roundtrip(target)
    t_loss = evaluate(target, eval_batches)
    t_sample = greedy_sample(target, tok, SAMPLE_PROMPT, args.sample_tokens, eos_id)
    log.info("target held-out loss %.4f; sample:\n%s", t_loss, t_sample)
    t_info = {
        **common,
        **stats,
        "role": "Target model of xyserve's bundled tiny pair (default model); its speculative "
        "draft is `xy-tiny-draft`.",
        "params": n_params(target),
        "hidden": t_size.hidden,
        "layers": t_size.layers,
        "heads": t_size.heads,
        "intermediate": t_size.intermediate,
        "lr": args.lr,
        "heldout_loss": t_loss,
        "sample": t_sample,
    }

    # ---- draft
    d_info = None
    if not args.skip_draft:
        d_size = _draft_size(args)
        if child is not None:
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"draft training process failed (exit code {child.exitcode})")
            saved = torch.load(child_out, weights_only=False)
            shutil.rmtree(child_out.parent, ignore_errors=True)
            draft = make_model(d_size, vocab, max_pos, eos_id, args.seed + 100)
            draft.load_state_dict(saved["state_dict"])
            draft.eval()
            d_stats = saved["stats"]
        else:
            teacher = target if args.distill_alpha > 0 else None
            draft, d_stats = _train_draft(
                args, vocab, max_pos, eos_id, train_stream, seq_len, teacher
            )
        bf16_roundtrip(draft)
        d_loss = evaluate(draft, eval_batches)
        agree = top1_agreement(draft, target, eval_batches)
        d_sample = greedy_sample(draft, tok, SAMPLE_PROMPT, args.sample_tokens, eos_id)
        log.info("draft held-out loss %.4f; top-1 agreement %.4f", d_loss, agree)
        d_info = {
            **common,
            **d_stats,
            "role": "Draft model of xyserve's bundled tiny pair, for speculative decoding with "
            f"the target `{args.target_name}` (same tokenizer). The target's held-out loss is "
            f"{t_loss:.4f}.",
            "params": n_params(draft),
            "hidden": d_size.hidden,
            "layers": d_size.layers,
            "heads": d_size.heads,
            "intermediate": d_size.intermediate,
            "lr": args.draft_lr,
            "heldout_loss": d_loss,
            "agreement": agree,
            "sample": d_sample,
        }
        if args.distill_alpha > 0:
            d_info["distill"] = (
                f"{1 - args.distill_alpha:g} x next-token CE + {args.distill_alpha:g} x "
                f"KL(target || draft) on the target's logits"
            )
        if parallel:
            d_info["distill"] = "next-token CE, trained in parallel with the target"
        t_info["agreement"] = agree
        if t_loss >= d_loss:
            t_info["note"] = (
                f"This target is undertrained: it saw {t_info['steps'] * args.batch_size * seq_len:,} "
                f"tokens against the draft's {d_info['steps'] * args.batch_size * seq_len:,}, and "
                f"its held-out loss ({t_loss:.4f}) is higher than the draft's ({d_loss:.4f}). "
                "Give the target more training time (e.g. a longer --max-minutes, or the draft a "
                "shorter --draft-max-minutes) to fix this."
            )
        t_info["role"] += f" Draft held-out loss: {d_loss:.4f}."

    out = Path(args.out)
    save_model_dir(target, tok, out / args.target_name, t_info, max_pos, eos_id)
    results["target"] = {k: t_info[k] for k in ("params", "steps", "seconds", "heldout_loss")}
    if d_info is not None:
        save_model_dir(draft, tok, out / args.draft_name, d_info, max_pos, eos_id)
        results["draft"] = {
            k: d_info[k] for k in ("params", "steps", "seconds", "heldout_loss", "agreement")
        }
    results["total_seconds"] = time.time() - t_start
    results["sample"] = t_sample
    log.info("done: %s", json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

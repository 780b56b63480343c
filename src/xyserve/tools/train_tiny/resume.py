"""``--resume-target``: continue training an existing target; its draft is only evaluated.

The target's bf16 weights are loaded (and trained in float32), its tokenizer files are reused byte
for byte, and a fresh warm-up + cosine schedule runs on windows seeded apart from earlier phases.
Held-out loss and the draft's agreement are measured on the same held-out windows as a fresh run.
The card lists every training phase, which are also kept in ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .card import previous_phases
from .data import TrainingData, prepare_data
from .model_dir import save_model_dir
from .run import finish_model, train_target
from .train import evaluate, model_facts, n_params, top1_agreement

log = logging.getLogger("xyserve.train_tiny")


def load_pair(src: Path, draft_dir: Path):
    """The target and draft (float32, eval mode) and their shared tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    target = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    draft = LlamaForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    return target, draft, Tokenizer.from_file(str(src / "tokenizer.json"))


def open_phase(args: argparse.Namespace, target_dir: Path, draft_dir: Path, trained: Path):
    """The pair loaded for one more phase of ``trained`` (``target_dir`` or ``draft_dir``),
    which must share the tokenizer: (its earlier phases, the last one's held-out loss measured
    here on the run's held-out windows; target; draft; tokenizer; the run's data)."""
    if (draft_dir / "tokenizer.json").read_bytes() != (target_dir / "tokenizer.json").read_bytes():
        raise ValueError(f"{draft_dir} and {target_dir} do not share a tokenizer")
    phases = previous_phases(trained)
    target, draft, tok = load_pair(target_dir, draft_dir)
    model = target if trained == target_dir else draft
    data = prepare_data(args, tok, model.config.max_position_embeddings)
    if data.common["vocab_size"] != model.config.vocab_size:
        raise ValueError(f"{trained}: tokenizer and model vocab sizes differ")
    phases[-1]["heldout_loss"] = evaluate(model, data.eval_batches)  # same weights, measured here
    return phases, target, draft, tok, data


def new_phase(
    args: argparse.Namespace, data: TrainingData, stats: dict, heldout_loss: float, lr: float
) -> dict:
    """The record of the phase just trained, as kept in ``training.json``."""
    return {
        "steps": stats["steps"],
        "tokens": stats["steps"] * args.batch_size * data.seq_len,
        "minutes": round(stats["seconds"] / 60, 2),
        "threads": data.common["threads"],
        "lr": lr,
        "heldout_loss": heldout_loss,
        "time_bound": stats["time_bound"],
    }


def phase_totals(phases: list[dict]) -> dict:
    """The card's training facts of a model trained in ``phases``: totals over all of them."""
    return {
        "steps": sum(p["steps"] for p in phases),
        "tokens_seen": sum(p["tokens"] for p in phases),
        "seconds": 60 * sum(p["minutes"] for p in phases),
        "time_bound": any(p.get("time_bound") for p in phases),
        "lr": " then ".join(f"{p['lr']}" for p in phases),
    }


def _resumed_info(data: TrainingData, stats: dict, target, phases: list[dict], **facts) -> dict:
    """The card facts of the resumed target; step, token and time totals span every phase.

    ``facts`` holds this run's figures: ``draft_name``, ``draft_loss``, ``heldout_loss``,
    ``agreement`` and ``sample``.
    """
    t_loss, d_loss = facts["heldout_loss"], facts["draft_loss"]
    info = {
        **data.common,
        **stats,
        "role": "Target model of xyserve's bundled tiny pair (default model); its speculative "
        f"draft is `{facts['draft_name']}`. Draft held-out loss: {d_loss:.4f}.",
        **model_facts(target),
        **phase_totals(phases),
        "heldout_loss": t_loss,
        "agreement": facts["agreement"],
        "sample": facts["sample"],
        "phases": phases,
    }
    if t_loss >= d_loss:
        info["note"] = (
            f"This target is undertrained: its held-out loss ({t_loss:.4f}) is higher than the "
            f"draft's ({d_loss:.4f}). Resume it again with --resume-target to fix this."
        )
    return info


def resume_target(args: argparse.Namespace, t_start: float) -> int:
    """Train the target ``--resume-target`` for one more phase and write it to ``--out``."""
    src = Path(args.resume_target)
    draft_dir = Path(args.resume_draft) if args.resume_draft else src.parent / args.draft_name
    phases, target, draft, tok, data = open_phase(args, src, draft_dir, trained=src)
    d_loss = evaluate(draft, data.eval_batches)
    log.info(
        "resuming %s (%d params): held-out loss %.4f (draft %.4f) after %d phase(s)",
        *(src, n_params(target), phases[-1]["heldout_loss"], d_loss, len(phases)),
    )
    # a new seed per phase, so its windows differ from earlier phases'
    stats = train_target(target, data, args, seed=args.seed + 1 + 1000 * len(phases))
    t_loss, sample = finish_model(target, data, args)
    agree = top1_agreement(draft, target, data.eval_batches)
    log.info(
        "held-out loss %.4f (draft %.4f); agreement %.4f; sample:\n%s",
        *(t_loss, d_loss, agree, sample),
    )
    phases.append(new_phase(args, data, stats, t_loss, args.lr))
    info = _resumed_info(
        data,
        stats,
        target,
        phases,
        draft_name=draft_dir.name,
        draft_loss=d_loss,
        heldout_loss=t_loss,
        agreement=agree,
        sample=sample,
    )
    out_dir = Path(args.out) / args.target_name
    save_model_dir(
        target, tok, out_dir, info, data.common["max_pos"], data.eos_id, tokenizer_from=src
    )
    result = {k: info[k] for k in ("params", "steps", "tokens_seen", "heldout_loss", "agreement")}
    result.update(draft_heldout_loss=d_loss, phase=phases[-1], total_seconds=time.time() - t_start)
    log.info("done: %s", json.dumps(result, indent=2))
    return 0

"""A fresh run: train the tokenizer, the target, then the draft, and write both model directories.

The draft trains after the target in this process (distilled from it with ``--distill-alpha``), or
alongside it in a forked process with ``--parallel``. Each card states the other model's held-out
loss; the target's card also gets the draft's top-1 agreement, and a note when the target ends up
worse than the draft (then it needs more training time).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .data import TrainingData, prepare_data
from .draft import ParallelDraft, train_draft
from .model_dir import save_model_dir
from .run import finish_model, train_target
from .train import Size, make_model, model_facts, n_params, top1_agreement

log = logging.getLogger("xyserve.train_tiny")


def _fresh_target(args: argparse.Namespace, data: TrainingData):
    """A new target trained, rounded to bf16 and evaluated: (model, card facts)."""
    size = Size(args.hidden, args.layers, args.heads, args.intermediate)
    common = data.common
    target = make_model(size, common["vocab_size"], common["max_pos"], data.eos_id, args.seed)
    log.info("target: %d params", n_params(target))
    stats = train_target(target, data, args, seed=args.seed + 1)
    loss, sample = finish_model(target, data, args)
    log.info("target held-out loss %.4f; sample:\n%s", loss, sample)
    info = {
        **common,
        **stats,
        "role": "Target model of xyserve's bundled tiny pair (default model); its speculative "
        "draft is `xy-tiny-draft`.",
        **model_facts(target),
        "lr": args.lr,
        "heldout_loss": loss,
        "sample": sample,
    }
    return target, info


def _draft_info(
    args: argparse.Namespace, data: TrainingData, draft, stats: dict, target, t_info: dict
) -> dict:
    """Round the trained draft to bf16, evaluate it against the held-out data and the target."""
    loss, sample = finish_model(draft, data, args)
    agree = top1_agreement(draft, target, data.eval_batches)
    log.info("draft held-out loss %.4f; top-1 agreement %.4f", loss, agree)
    info = {
        **data.common,
        **stats,
        "role": "Draft model of xyserve's bundled tiny pair, for speculative decoding with "
        f"the target `{args.target_name}` (same tokenizer). The target's held-out loss is "
        f"{t_info['heldout_loss']:.4f}.",
        **model_facts(draft),
        "lr": args.draft_lr,
        "heldout_loss": loss,
        "agreement": agree,
        "sample": sample,
    }
    if args.distill_alpha > 0:
        info["distill"] = (
            f"{1 - args.distill_alpha:g} x next-token CE + {args.distill_alpha:g} x "
            f"KL(target || draft) on the target's logits"
        )
    if args.parallel:
        info["distill"] = "next-token CE, trained in parallel with the target"
    return info


def _link_target_to_draft(args: argparse.Namespace, t_info: dict, d_info: dict) -> None:
    """Add the draft's agreement and loss to the target's card, and a note if it is the better."""
    t_loss, d_loss = t_info["heldout_loss"], d_info["heldout_loss"]
    tokens_per_step = args.batch_size * t_info["seq_len"]
    t_info["agreement"] = d_info["agreement"]
    if t_loss >= d_loss:
        t_info["note"] = (
            f"This target is undertrained: it saw {t_info['steps'] * tokens_per_step:,} "
            f"tokens against the draft's {d_info['steps'] * tokens_per_step:,}, and "
            f"its held-out loss ({t_loss:.4f}) is higher than the draft's ({d_loss:.4f}). "
            "Give the target more training time (e.g. a longer --max-minutes, or the draft a "
            "shorter --draft-max-minutes) to fix this."
        )
    t_info["role"] += f" Draft held-out loss: {d_loss:.4f}."


def _save_pair(
    args: argparse.Namespace, data: TrainingData, target, t_info: dict, draft, d_info: dict | None
) -> dict:
    """Write the model directories; returns the run's summary."""
    out, max_pos = Path(args.out), data.common["max_pos"]
    save_model_dir(target, data.tok, out / args.target_name, t_info, max_pos, data.eos_id)
    results = {"target": {k: t_info[k] for k in ("params", "steps", "seconds", "heldout_loss")}}
    if d_info is not None:
        save_model_dir(draft, data.tok, out / args.draft_name, d_info, max_pos, data.eos_id)
        results["draft"] = {
            k: d_info[k] for k in ("params", "steps", "seconds", "heldout_loss", "agreement")
        }
    return results


def train_pair(args: argparse.Namespace, t_start: float) -> int:
    """Train and write the target and (unless ``--skip-draft``) the draft."""
    import torch

    data = prepare_data(args)
    child = None
    if args.parallel and not args.skip_draft:
        child = ParallelDraft.start(args, data)  # forked before any model exists
        torch.set_num_threads(child.threads)
        data.common["threads"] = child.threads
    target, t_info = _fresh_target(args, data)
    draft = d_info = None
    if not args.skip_draft:
        if child is not None:
            draft, d_stats = child.join(args, data)
        else:
            teacher = target if args.distill_alpha > 0 else None
            draft, d_stats = train_draft(args, data, teacher)
        d_info = _draft_info(args, data, draft, d_stats, target, t_info)
        _link_target_to_draft(args, t_info, d_info)
    results = _save_pair(args, data, target, t_info, draft, d_info)
    results["total_seconds"] = time.time() - t_start
    results["sample"] = t_info["sample"]
    log.info("done: %s", json.dumps(results, indent=2))
    return 0

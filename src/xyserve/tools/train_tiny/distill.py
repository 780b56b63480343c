"""``--distill-draft``: continue training an existing draft against its target, so that the
draft's greedy token is the target's more often (what greedy speculative decoding accepts).

The target (``--teacher``, default the draft's sibling ``--target-name``) and the draft are
loaded from their bf16 weights (the draft trained in float32) and must share the tokenizer,
whose files are copied byte for byte. The loss is ``--distill-alpha`` x KL(target || draft)
plus the rest x a cross-entropy against the target's greedy token, on random windows of the
train corpus and, for ``--greedy-share`` of the batches, on the target's own greedy
continuations of ``--greedy-prompts`` train prefixes (generated once, before training): the
text a draft reads while it speculates for greedy decoding. A fresh warm-up + cosine schedule
runs for ``--draft-steps`` / ``--draft-max-minutes`` at ``--draft-lr``. Held-out loss and top-1
agreement are measured before and after on the same held-out windows as a fresh run; the card
lists every training phase (kept in ``training.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .data import greedy_pool
from .model_dir import save_model_dir
from .resume import new_phase, open_phase, phase_totals
from .run import finish_model, train_for_run
from .train import evaluate, model_facts, top1_agreement

log = logging.getLogger("xyserve.train_tiny")


def _objective(args: argparse.Namespace) -> str:
    """How this phase trains the draft, as its record in ``training.json`` keeps it."""
    a = args.distill_alpha
    data = "train windows"
    if args.greedy_share > 0:
        data += (
            f" and, for {args.greedy_share:g} of the batches, the target's greedy continuations "
            f"of {args.greedy_prompts:,} train prefixes"
        )
    return (
        f"{a:g} x KL(target || draft) + {1 - a:g} x CE against the target's greedy token, on {data}"
    )


def objectives(phases: list[dict]) -> str:
    """The card's line on how each phase trained the model (a phase that records no objective
    is a fresh run's: next-token CE)."""
    return "; ".join(
        f"phase {i}: {p.get('objective', 'next-token CE')}" for i, p in enumerate(phases, 1)
    )


def distill_draft(args: argparse.Namespace, t_start: float) -> int:
    """Train the draft ``--distill-draft`` for one more phase against its target and write it
    to ``--out``/``--draft-name``."""
    src = Path(args.distill_draft)
    teacher_dir = Path(args.teacher) if args.teacher else src.parent / args.target_name
    phases, target, draft, tok, data = open_phase(args, teacher_dir, src, trained=src)
    before = top1_agreement(draft, target, data.eval_batches)
    log.info(
        "distilling %s from %s: held-out loss %.4f, top-1 agreement %.4f",
        *(src, teacher_dir, phases[-1]["heldout_loss"], before),
    )
    seed = args.seed + 2 + 1000 * len(phases)  # windows apart from earlier phases'
    pool = None
    if args.greedy_share > 0:
        pool = greedy_pool(
            target, data.train_stream, args.greedy_prompts, data.seq_len, seed,
            progress=not args.no_progress,
        )  # fmt: skip
    stats = train_for_run(
        draft,
        data,
        args,
        steps=args.draft_steps,
        lr=args.draft_lr,
        seed=seed,
        name=args.draft_name,
        max_minutes=args.draft_max_minutes,
        teacher=target,
        pool=pool,
        hard_labels="teacher",
    )
    loss, sample = finish_model(draft, data, args)
    agree = top1_agreement(draft, target, data.eval_batches)
    log.info("held-out loss %.4f; top-1 agreement %.4f (was %.4f)", loss, agree, before)
    phases.append(
        {**new_phase(args, data, stats, loss, args.draft_lr), "objective": _objective(args)}
    )
    t_loss = evaluate(target, data.eval_batches)
    info = {
        **data.common,
        **stats,
        "role": "Draft model of xyserve's bundled tiny pair, for speculative decoding with "
        f"the target `{teacher_dir.name}` (same tokenizer), distilled from it in its last "
        f"phase (top-1 agreement {before:.1%} before it). The target's held-out loss is "
        f"{t_loss:.4f}.",
        **model_facts(draft),
        **phase_totals(phases),
        "heldout_loss": loss,
        "agreement": agree,
        "distill": objectives(phases),
        "sample": sample,
        "phases": phases,
    }
    out_dir = Path(args.out) / args.draft_name
    save_model_dir(
        draft, tok, out_dir, info, data.common["max_pos"], data.eos_id, tokenizer_from=src
    )
    result = {k: info[k] for k in ("params", "steps", "tokens_seen", "heldout_loss", "agreement")}
    result.update(agreement_before=before, phase=phases[-1], total_seconds=time.time() - t_start)
    log.info("done: %s", json.dumps(result, indent=2))
    return 0

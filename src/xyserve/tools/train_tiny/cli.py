"""``xyserve train-tiny`` / ``python -m xyserve.tools.train_tiny``: the command line.

Parses the flags, makes the run reproducible (seeds, deterministic torch, ``--threads``), then
either trains a fresh pair (``pair.train_pair``) or continues a target (``resume.resume_target``).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time

from .corpus import HELDOUT_PCT
from .distill import distill_draft
from .pair import train_pair
from .resume import resume_target

log = logging.getLogger("xyserve.train_tiny")


# What --distill-draft's own flags default to; they are None when not given, so that a run of
# another mode can refuse them.
DISTILL_DEFAULTS = {"greedy_share": 0.5, "greedy_prompts": 3000}


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="src/xyserve/models", help="parent output directory")
    p.add_argument("--target-name", default="xy-tiny")
    p.add_argument("--draft-name", default="xy-tiny-draft")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stdlib", default=None, help="source root (default: sysconfig stdlib)")
    p.add_argument("--max-files", type=int, default=None, help="cap on corpus files")
    p.add_argument("--heldout-pct", type=float, default=HELDOUT_PCT)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-pos", type=int, default=2048, help="max_position_embeddings")


def _add_optimiser_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=1500, help="target training steps")
    p.add_argument("--draft-steps", type=int, default=4000, help="draft training steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--draft-lr", type=float, default=3e-3)
    p.add_argument("--distill-alpha", type=float, default=0.0, help="0 = plain next-token CE")


def _add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--draft-hidden", type=int, default=128)
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--draft-heads", type=int, default=2)
    p.add_argument("--draft-intermediate", type=int, default=384)


def _add_run_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--distill-draft",
        metavar="DIR",
        default=None,
        help="continue training the draft model directory DIR against its target (--teacher): "
        "--distill-alpha x KL(target || draft) + the rest x CE against the target's greedy "
        "token, on train windows and (--greedy-share) the target's greedy continuations; a fresh "
        "warm-up + cosine schedule for --draft-steps / --draft-max-minutes at --draft-lr; writes "
        "--out/--draft-name with a card listing every phase",
    )
    p.add_argument(
        "--teacher",
        metavar="DIR",
        default=None,
        help="the target --distill-draft learns from (default: DIR's sibling --target-name)",
    )
    p.add_argument(
        "--greedy-share",
        type=float,
        help="with --distill-draft: the share of batches drawn from the target's greedy "
        f"continuations of train prefixes instead of train windows (default: "
        f"{DISTILL_DEFAULTS['greedy_share']})",
    )
    p.add_argument(
        "--greedy-prompts",
        type=int,
        help="with --distill-draft: how many greedy continuations to generate (default: "
        f"{DISTILL_DEFAULTS['greedy_prompts']})",
    )
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="xyserve train-tiny",
        description="Train the bundled tiny Llama target + draft pair on the Python stdlib.",
    )
    for add in (_add_data_args, _add_optimiser_args, _add_size_args, _add_run_args):
        add(p)
    args = p.parse_args(argv)
    for flag, low in _LOWER_BOUNDS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None and not value >= low:  # NaN too
            p.error(f"{flag} must be at least {low}, got {value}")
    if not 0.0 <= args.heldout_pct < 100.0:
        p.error(f"--heldout-pct must be in [0, 100), got {args.heldout_pct}")
    if not 0.0 <= args.distill_alpha <= 1.0:
        p.error(f"--distill-alpha must be in [0, 1], got {args.distill_alpha}")
    if args.distill_draft and args.resume_target:
        p.error("--distill-draft and --resume-target are two runs: give one")
    own = ("teacher", *DISTILL_DEFAULTS)
    given = [f"--{k.replace('_', '-')}" for k in own if getattr(args, k) is not None]
    if given and not args.distill_draft:  # else accepted and ignored
        p.error(f"{', '.join(given)}: for --distill-draft only")
    for key, value in DISTILL_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0.0 <= args.greedy_share <= 1.0:
        p.error(f"--greedy-share must be in [0, 1], got {args.greedy_share}")
    return args


# Each flag's smallest sensible value: a negative step count trained without end (its schedule
# never reached it), and a zero size or rate fails deep inside training, or trains nothing.
_COUNTS = (
    "--max-files", "--vocab-size", "--seq-len", "--max-pos", "--batch-size", "--steps",
    "--draft-steps", "--hidden", "--layers", "--heads", "--intermediate", "--draft-hidden",
    "--draft-layers", "--draft-heads", "--draft-intermediate", "--threads", "--log-every",
    "--eval-windows", "--greedy-prompts",
)  # fmt: skip
_LOWER_BOUNDS: dict[str, float] = {
    **dict.fromkeys(_COUNTS, 1),
    "--sample-tokens": 0,
    "--lr": 1e-12,
    "--draft-lr": 1e-12,
    "--max-minutes": 1e-9,
    "--draft-max-minutes": 1e-9,
}


def _configure(args: argparse.Namespace) -> None:
    """Log to stderr (unless logging is set up already), set threads, seed every generator."""
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure(args)
    t_start = time.time()
    if args.resume_target:
        return resume_target(args, t_start)
    if args.distill_draft:
        return distill_draft(args, t_start)
    return train_pair(args, t_start)

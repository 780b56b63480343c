"""Training the draft model, in this process or in a forked one alongside the target.

With ``--parallel`` the draft trains in a process forked before any model exists, each process
using half of ``--threads``; the child saves its weights and stats to a temporary file that the
parent loads into a draft built the same way. Both paths seed identically, so the draft's weights
are the same either way (distillation needs the trained target, so it is in-process only).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .data import TrainingData
from .run import train_for_run
from .train import Size, make_model, n_params

log = logging.getLogger("xyserve.train_tiny")


def draft_size(args: argparse.Namespace) -> Size:
    return Size(args.draft_hidden, args.draft_layers, args.draft_heads, args.draft_intermediate)


def _new_draft(args: argparse.Namespace, data: TrainingData):
    common = data.common
    return make_model(
        draft_size(args), common["vocab_size"], common["max_pos"], data.eos_id, args.seed + 100
    )


def train_draft(args: argparse.Namespace, data: TrainingData, teacher=None):
    """A new draft trained on the run's data (distilled from ``teacher`` if given): (model, stats)."""
    draft = _new_draft(args, data)
    log.info("draft: %d params", n_params(draft))
    stats = train_for_run(
        draft,
        data,
        args,
        steps=args.draft_steps if args.draft_steps is not None else args.steps,
        lr=args.draft_lr,
        seed=args.seed + 2,
        name=args.draft_name,
        max_minutes=args.draft_max_minutes,
        teacher=teacher,
    )
    return draft, stats


def _draft_child(args: argparse.Namespace, data: TrainingData, threads: int, out: Path) -> None:
    """Runs in a forked process: train the draft and save its weights + stats to ``out``."""
    import torch

    torch.set_num_threads(threads)
    draft, stats = train_draft(args, data)
    torch.save({"state_dict": draft.state_dict(), "stats": stats}, out)


@dataclass
class ParallelDraft:
    """A draft being trained in a forked process."""

    process: object  # a ``multiprocessing`` process
    out: Path  # where the child saves the weights and stats
    threads: int  # torch threads of each process

    @classmethod
    def start(cls, args: argparse.Namespace, data: TrainingData) -> ParallelDraft:
        """Fork the draft's process; the caller then trains the target on ``threads`` threads."""
        import multiprocessing as mp

        if args.distill_alpha > 0:
            raise SystemExit("--parallel cannot distill (the target is not trained yet)")
        threads = max(1, args.threads // 2)
        out = Path(tempfile.mkdtemp(prefix="xy-draft-")) / "draft.pt"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        process = mp.get_context("fork").Process(
            target=_draft_child, args=(args, data, threads, out), daemon=True
        )
        process.start()
        return cls(process, out, threads)

    def join(self, args: argparse.Namespace, data: TrainingData):
        """Wait for the child and load its draft: (model in eval mode, stats)."""
        import torch

        self.process.join()
        if self.process.exitcode != 0:
            raise RuntimeError(f"draft training process failed (exit code {self.process.exitcode})")
        saved = torch.load(self.out, weights_only=False)
        shutil.rmtree(self.out.parent, ignore_errors=True)
        draft = _new_draft(args, data)
        draft.load_state_dict(saved["state_dict"])
        draft.eval()
        return draft, saved["stats"]

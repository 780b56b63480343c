"""The steps every model of a run goes through, with the command line's settings: train it on the
run's data, then round it to the saved bf16 weights, measure its held-out loss and take a sample.
"""

from __future__ import annotations

import argparse

from .data import Batches, TrainingData
from .train import SAMPLE_PROMPT, bf16_roundtrip, evaluate, greedy_sample, train_model


def train_for_run(
    model,
    data: TrainingData,
    args: argparse.Namespace,
    *,
    steps: int,
    lr: float,
    seed: int,
    name: str,
    max_minutes: float | None,
    teacher=None,
    pool=None,
    hard_labels: str = "data",
) -> dict:
    """``train_model`` on the run's train stream (and ``pool``'s rows for ``--greedy-share`` of
    the batches) with its batch shape, logging and progress bar."""
    return train_model(
        model,
        Batches(data.train_stream, data.seq_len, args.batch_size, pool, args.greedy_share),
        steps=steps,
        lr=lr,
        seed=seed,
        name=name,
        teacher=teacher,
        distill_alpha=args.distill_alpha,
        hard_labels=hard_labels,
        log_every=args.log_every,
        progress=not args.no_progress,
        max_seconds=max_minutes * 60 if max_minutes else None,
    )


def train_target(model, data: TrainingData, args: argparse.Namespace, seed: int) -> dict:
    """Train the target with ``--steps``, ``--lr`` and ``--max-minutes`` on windows of ``seed``."""
    return train_for_run(
        model,
        data,
        args,
        steps=args.steps,
        lr=args.lr,
        seed=seed,
        name=args.target_name,
        max_minutes=args.max_minutes,
    )


def finish_model(model, data: TrainingData, args: argparse.Namespace) -> tuple[float, str]:
    """Round ``model`` to bf16, then its held-out loss and greedy sample (``--sample-tokens``)."""
    bf16_roundtrip(model)
    loss = evaluate(model, data.eval_batches)
    sample = greedy_sample(model, data.tok, SAMPLE_PROMPT, args.sample_tokens, data.eos_id)
    return loss, sample

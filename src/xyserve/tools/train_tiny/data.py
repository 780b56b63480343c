"""What a training run reads: the tokenized corpus as token streams, and windows cut from them.

Training draws random windows from the train stream (one generator per model, so runs are
reproducible); evaluation uses fixed, evenly spread held-out windows, so every model of a run (and
every resumed phase) is measured on the same tokens.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from .corpus import build_corpus
from .tokenizer import EOS_TOKEN, encode_texts, train_tokenizer

log = logging.getLogger("xyserve.train_tiny")


@dataclass
class TrainingData:
    """The tokenizer, the train token stream, the held-out batches, and the facts for the card."""

    tok: object  # a ``tokenizers.Tokenizer``
    train_stream: object  # int64 numpy array
    eval_batches: list  # of (batch, seq_len + 1) int64 tensors
    common: dict  # corpus, shape and run facts shared by every card of the run

    @property
    def eos_id(self) -> int:
        return self.tok.token_to_id(EOS_TOKEN)

    @property
    def seq_len(self) -> int:
        return self.common["seq_len"]


def random_windows(stream, seq_len: int, n: int, gen):
    """``n`` windows of ``seq_len + 1`` tokens at random starts drawn from ``gen``."""
    import numpy as np
    import torch

    hi = len(stream) - seq_len - 1
    if hi <= 0:
        raise ValueError(f"token stream of {len(stream)} tokens is too short for seq_len {seq_len}")
    starts = torch.randint(0, hi + 1, (n,), generator=gen).tolist()
    return torch.from_numpy(np.stack([stream[s : s + seq_len + 1] for s in starts]))


@dataclass
class Batches:
    """Training batches of ``batch_size`` rows of ``seq_len + 1`` tokens: random windows of
    ``stream`` and, for a share ``pool_share`` of the batches, random rows of ``pool`` (whole
    sequences of that length, e.g. a target's greedy continuations). Without a pool the draws
    are those of ``random_windows`` alone, so earlier runs reproduce."""

    stream: object  # int64 numpy array
    seq_len: int
    batch_size: int
    pool: object = None  # (n, seq_len + 1) int64 tensor
    pool_share: float = 0.0

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_len

    def draw(self, gen):
        import torch

        if self.pool is not None and torch.rand(1, generator=gen).item() < self.pool_share:
            return self.pool[torch.randint(0, len(self.pool), (self.batch_size,), generator=gen)]
        return random_windows(self.stream, self.seq_len, self.batch_size, gen)


def greedy_pool(
    model, stream, n: int, seq_len: int, seed: int, batch: int = 64, progress: bool = True
):
    """``n`` sequences of ``seq_len + 1`` tokens: a prefix of the train ``stream`` at a random
    start (its first half), then ``model``'s greedy continuation to the full length: the
    text a draft reads when it speculates for greedy decoding with ``model``. Each
    continuation token is ``model``'s argmax there, EOS left out so that every row is full."""
    import torch
    from tqdm import tqdm

    prefix = (seq_len + 1) // 2
    gen = torch.Generator().manual_seed(seed)
    prefixes = random_windows(stream, prefix - 1, n, gen)  # windows of ``prefix`` tokens
    out = []
    for i in tqdm(
        range(0, n, batch), desc="greedy continuations", mininterval=2.0, disable=not progress
    ):
        x = prefixes[i : i + batch]
        with torch.no_grad():
            y = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=seq_len + 1 - prefix,
                min_new_tokens=seq_len + 1 - prefix,
                do_sample=False,
            )
        out.append(y)
    return torch.cat(out)


def heldout_batches(stream, seq_len: int, batch_size: int, max_windows: int):
    """Deterministic non-overlapping held-out windows."""
    import numpy as np
    import torch

    n = min(max_windows, max(1, (len(stream) - 1) // seq_len))
    if (len(stream) - 1) < seq_len:
        raise ValueError("held-out stream is shorter than seq_len")
    stride = max(seq_len, (len(stream) - seq_len - 1) // max(1, n))
    wins = [stream[i * stride : i * stride + seq_len + 1] for i in range(n)]
    wins = [w for w in wins if len(w) == seq_len + 1]
    x = torch.from_numpy(np.stack(wins))
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def prepare_data(args: argparse.Namespace, tok=None, max_pos: int | None = None) -> TrainingData:
    """Corpus split, tokenizer (trained unless given), token streams and held-out windows.

    ``seq_len`` shrinks to what the streams hold (tiny test corpora); ``max_pos`` defaults to
    ``--max-pos`` (at least ``seq_len``) unless given by a model being resumed.
    """
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
        "eval_tokens": sum(b[:, 1:].numel() for b in eval_batches),
    }
    return TrainingData(tok, train_stream, eval_batches, common)

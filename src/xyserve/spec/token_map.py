"""A draft's token map: the token ids it may propose (FR-Spec, Zhao et al. 2025; SGLang's
``speculative_token_map``).

A small draft spends a large share of each pass in its lm_head: a vocabulary's rows of its
hidden size can weigh as much as its few layers. Frequent tokens make up most of what a
target emits, so a draft that scores only them reads a fraction of that head per pass and
proposes nearly the same tokens. Verification is unchanged, so output is too: a target token
outside the map is never proposed, and the chain stops there.

The map is a versioned data file (schema ``xyserve.draft-token-map/1``): the token ids, most
frequent first, the vocabulary they index, and where their counts came from. ``xyserve
token-map`` writes one from text; a draft directory's ``token_map.json`` is used by default
(``speculative_config`` key ``draft_token_map``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from pathlib import Path

import numpy as np

from xyserve.bench.data_file import read_versioned
from xyserve.output_files import write_text

SCHEMA = "xyserve.draft-token-map/1"
FILE_NAME = "token_map.json"  # in a draft directory: its default map


def load_token_map(path: str | Path, vocab_size: int) -> np.ndarray:
    """The token ids of the map in ``path`` for a vocabulary of ``vocab_size``, checked: a
    ValueError names the file and the field (another vocabulary, ids out of range or
    repeated, an empty list)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"draft_token_map: no such file {str(p)!r}")
    data = read_versioned(p, SCHEMA)
    if data.get("vocab_size") != vocab_size:
        raise ValueError(
            f"{p}: field 'vocab_size' is {data.get('vocab_size')!r}, but the draft has "
            f"{vocab_size} tokens"
        )
    ids = data.get("token_ids")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
    ):
        raise ValueError(f"{p}: field 'token_ids' must be a non-empty list of token ids")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(
            f"{p}: field 'token_ids' has ids outside the vocabulary of {vocab_size}: {bad[:5]}"
        )
    arr = np.asarray(ids, dtype=np.int64)
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{p}: field 'token_ids' repeats ids")
    return arr


def count_tokens(encode, texts, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in ``texts`` (``encode(text) -> ids``)."""
    counts = np.zeros(vocab_size, np.int64)
    for text in texts:
        np.add.at(counts, np.asarray(encode(text), dtype=np.int64), 1)
    return counts


def most_frequent(counts: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` most frequent ids, most frequent first (ties: the lower id first)."""
    return np.argsort(-counts, kind="stable")[:size]


def _text_files(paths: list[str], pattern: str) -> list[Path]:
    """The files named, and every file under the directories named whose name matches
    ``pattern``, in a stable order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out += [Path(root) / f for f in sorted(files) if fnmatch.fnmatch(f, pattern)]
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--text: no such file or directory {str(p)!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``xyserve token-map``: a draft's token map from the token counts of some text."""
    ap = argparse.ArgumentParser(prog="xyserve token-map", description=main.__doc__)
    ap.add_argument("--model", required=True, help="the draft directory (its tokenizer)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", help="text files or directories")
    src.add_argument(
        "--train-tiny-corpus",
        action="store_true",
        help="the train files of `xyserve train-tiny`'s corpus (the bundled pair's)",
    )
    ap.add_argument("--pattern", default="*", help="file names read under a directory")
    ap.add_argument("--size", type=int, required=True, help="how many token ids to keep")
    ap.add_argument("--out", help=f"the file to write (default: MODEL/{FILE_NAME})")
    args = ap.parse_args(argv)
    from tokenizers import Tokenizer

    from xyserve.model.config import ModelConfig

    model = Path(args.model)
    try:
        vocab = ModelConfig.from_dir(model).vocab_size
        tok = Tokenizer.from_file(str(model / "tokenizer.json"))
        if args.train_tiny_corpus:
            from xyserve.tools.train_tiny.corpus import HELDOUT_PCT, build_corpus

            corpus = build_corpus(None, None, HELDOUT_PCT)
            texts, where = [t for _, t in corpus.train], f"train-tiny's corpus ({corpus.root})"
        else:
            files = _text_files(args.text, args.pattern)
            texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
            where = f"{', '.join(args.text)}, pattern {args.pattern!r}"
    except (OSError, ValueError) as e:
        ap.error(str(e))
    if not 1 <= args.size <= vocab:
        ap.error(f"--size must be between 1 and the vocabulary's {vocab}, got {args.size}")
    if not texts:
        ap.error(f"--text: no file matches {args.pattern!r}")
    counts = count_tokens(lambda t: tok.encode(t).ids, texts, vocab)
    ids = most_frequent(counts, args.size)
    covered = counts[ids].sum() / max(1, counts.sum())
    data = {
        "schema": SCHEMA,
        "vocab_size": vocab,
        "source": f"the {args.size} most frequent tokens of {len(texts)} files ({where}): "
        f"{covered:.1%} of their {int(counts.sum())} tokens",
        "token_ids": ids.tolist(),
    }
    out = Path(args.out) if args.out else model / FILE_NAME
    write_text(out, json.dumps(data) + "\n")
    print(f"{out}: {data['source']}")
    return 0

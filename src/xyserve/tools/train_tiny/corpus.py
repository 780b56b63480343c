"""The training corpus: the Python standard library's own ``*.py`` sources, split into train and
held-out files.

The split is deterministic and stable as files come and go: a file is held out when a SHA-256 hash
of its relative path falls in the lowest ``heldout_pct`` percent, so adding or removing one file
never moves another across the split.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELDOUT_PCT = 5.0  # the share of files held out, by default (``--heldout-pct``)
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@dataclass
class Corpus:
    root: Path
    train: list[tuple[str, str]]  # (relative path, text)
    heldout: list[tuple[str, str]]


def _is_heldout(rel: str, heldout_pct: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return (h % 10_000) < heldout_pct * 100


def _source_files(root: Path) -> list[str]:
    """Sorted relative paths of the ``*.py`` files under ``root``, outside ``EXCLUDED_DIRS``."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                files.append(str((Path(dirpath) / fn).relative_to(root).as_posix()))
    files.sort()
    if not files:
        raise FileNotFoundError(f"no *.py files found under {root}")
    return files


def _split(
    files: list[str], heldout_pct: float, max_files: int | None
) -> tuple[list[str], list[str]]:
    """Train and held-out paths; ``max_files`` caps the total, keeping the split's proportions."""
    train_paths = [f for f in files if not _is_heldout(f, heldout_pct)]
    held_paths = [f for f in files if _is_heldout(f, heldout_pct)]
    if max_files is not None:
        # deterministic: the first paths of each side, in sorted order
        n_held = max(1, round(max_files * heldout_pct / 100))
        train_paths = train_paths[: max(1, max_files - n_held)]
        held_paths = held_paths[:n_held]
    return train_paths, held_paths


def _read_texts(root: Path, paths: list[str]) -> list[tuple[str, str]]:
    """``(path, text)`` of the files that decode as UTF-8 and are not blank; the others are skipped."""
    out = []
    for rel in paths:
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            out.append((rel, text))
    return out


def build_corpus(
    root: Path | None = None, max_files: int | None = None, heldout_pct: float = 5.0
) -> Corpus:
    """Collect stdlib ``*.py`` files (no test dirs / site-packages), split by path hash."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    train_paths, held_paths = _split(_source_files(root), heldout_pct, max_files)
    train, heldout = _read_texts(root, train_paths), _read_texts(root, held_paths)
    if not heldout and len(train) > 1:  # tiny corpora: always keep one held-out file
        heldout = [train.pop()]
    if not train or not heldout:
        raise ValueError(f"corpus under {root} is too small for a train/held-out split")
    return Corpus(root=root, train=train, heldout=heldout)

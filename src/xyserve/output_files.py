"""Result files named on a command line (``--json``, ``--out``, ``--plot``): checked when the
arguments are parsed, so that a path that cannot be written is a usage error before a
benchmark or a tune runs, not a traceback after it, with its results lost."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def writable_file(path: Path) -> bool:
    """Whether a file can be written at ``path``, its missing folders made first
    (``write_text`` makes them): not a folder, and the nearest existing folder above it is
    one this process may write in."""
    if path.is_dir():
        return False
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def output_file(text: str) -> str:
    """An argparse ``type`` for a result file's path."""
    if not writable_file(Path(text)):
        raise argparse.ArgumentTypeError(f"{text}: not a file that can be written")
    return text


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` into ``path``, its missing folders made."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)

"""The CPU fused forward of this checkout against another git ref's, alternated call by call in
one process, for changes of a few percent on a machine whose speed drifts by more than that
between processes.

    python scripts/ab_fused.py --base HEAD~1 --model xy-tiny --context 150 --rows 1,9,12

The base ref's ``src/xyserve`` is exported (``git archive``) into a cache folder keyed by its
commit, as the package ``xyserve_base`` (its imports of ``xyserve`` rewritten), so the two
versions load side by side, each with its own numba cache. Both pack the same model; a call
runs R causal rows of one request after C keys of context (a verify chain's shape; R = 1 is a
decode), on torch's thread count. Printed per R: each side's median, and the median and
interquartile range of the paired ratio base / checkout (> 1: the checkout is faster). The
order within a pair alternates, so neither side always runs on the caches the other left.
``xyserve`` is whatever the interpreter imports (the editable install's checkout, or
``PYTHONPATH=<checkout>/src``); both folders are printed.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "xyserve" / "ab_fused"


def export_base(ref: str) -> Path:
    """The folder holding ``xyserve_base``: ``ref``'s package, exported once per commit."""
    sha = subprocess.run(
        ["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    where = CACHE / sha
    pkg = where / "xyserve_base"
    if pkg.is_dir():
        return where
    blob = subprocess.run(
        ["git", "archive", sha, "src/xyserve"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(where, filter="data")
    (where / "src" / "xyserve").rename(pkg)
    (where / "src").rmdir()
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"(?<![\w-])xyserve(?=\.[a-z_])", "xyserve_base", text)
        text = re.sub(r"\b(from|import) xyserve\b(?!_)", r"\1 xyserve_base", text)
        path.write_text(text)
    return where


def rows_for(ff, context: int, n: int, table: np.ndarray):
    """``n`` causal rows of one request after ``context`` keys, as ``ff.Rows``."""
    pos = np.arange(context, context + n, dtype=np.int64)
    return ff.Rows(
        ids=np.arange(n, dtype=np.int64) + 5, pos=pos, slots=pos.copy(),
        table_of=np.zeros(n, np.int64), tables=table, ctx_len=pos + 1,
        extra_off=np.zeros(n + 1, np.int64), extra_slots=np.zeros(0, np.int64),
        out_rows=np.arange(n, dtype=np.int64),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="the git ref to compare against")
    ap.add_argument("--model", default="xy-tiny", help="a model folder or a bundled name")
    ap.add_argument("--context", type=int, default=150, help="keys before the rows")
    ap.add_argument("--rows", default="1,9", help="row counts, comma-separated")
    ap.add_argument("--reps", type=int, default=200, help="pairs per row count")
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(export_base(args.base)))
    from xyserve.model.loader import load_model
    from xyserve.models import resolve_model

    model = load_model(resolve_model(args.model), torch.device("cpu"), torch.float32)
    counts = [int(x) for x in args.rows.split(",")]
    bs = args.block_size
    blocks = (args.context + max(counts)) // bs + 1
    table = np.arange(blocks, dtype=np.int64)[None]
    sides = {}
    for name, pkg in (("base", "xyserve_base"), ("checkout", "xyserve")):
        ff = importlib.import_module(f"{pkg}.kernels.cpu.fused_forward")
        pack = importlib.import_module(f"{pkg}.spec.draft_forward").pack_model
        w = pack(model, amx_tiles=False)
        k, v = ff.new_cache(w, blocks, bs, np.float32)
        k[:] = 0.01
        v[:] = 0.01
        rows = {n: rows_for(ff, args.context, n, table) for n in counts}
        for n in counts:  # compiles, or loads numba's cache
            ff.forward(w, k, v, rows[n], True)
        sides[name] = (ff, w, k, v, rows)
    times = {(s, n): [] for s in sides for n in counts}
    for i in range(args.reps):
        for n in counts:
            for s in ("base", "checkout") if i % 2 == 0 else ("checkout", "base"):
                ff, w, k, v, rows = sides[s]
                t0 = time.perf_counter()
                ff.forward(w, k, v, rows[n], True)
                times[(s, n)].append(time.perf_counter() - t0)
    where = {s: Path(sides[s][0].__file__).parents[3] for s in sides}
    print(f"{args.model}, {args.context} keys, {torch.get_num_threads()} threads")
    print(f"base {args.base}: {where['base']}; checkout: {where['checkout']}")
    for n in counts:
        a, b = times[("base", n)], times[("checkout", n)]
        ratios = sorted(x / y for x, y in zip(a, b))
        q1, q3 = ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]
        print(
            f"rows {n:3d}: base {1e3 * statistics.median(a):.3f} ms, checkout "
            f"{1e3 * statistics.median(b):.3f} ms, base / checkout {statistics.median(ratios):.3f} "
            f"(IQR {q1:.3f}-{q3:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``xyserve tune --model PATH``: offline SmoothGEMM tuning (paper §4.3.2, §6.3).

For each linear op of the model (shapes from its ``config.json``) and each virtually padded M
up to the token budget, profile the candidate configurations and keep the best. On CUDA the
candidates are Triton tile shapes, swizzle groups and launch knobs, timed at the padded M (the
kernel computes whole tiles). On CPU they are the vendor-GEMM entry points and ``kernels.cpu.gemm``'s
numba kernel; the CPU computes the real rows only, so each candidate is timed at the bucket's
low, middle, odd top (pm - 1) and top M, on cold weights and on the input layout the forward
hands the op, and one is kept only if it beats plain ``F.linear`` (what ``torch.matmul``
runs) by a 3% margin at each of them. The table is versioned JSON that records the machine's
signature, written next to the model (or to the cache folder, ``gemm_table.cache_dir``, when
that folder is read-only, holds another device's table, or ``--cache`` is given), where
``SmoothGemm(model_path=...)`` finds it on the same machine. Every op is tuned by default, ``lm_head`` included.

``quick_tune`` is the first-start form: the decode buckets only (M up to 64), fewer rounds,
written to the cache folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from xyserve.kernels.cpu import gemm as cpu_gemm
from xyserve.kernels.cpu import prepacked
from xyserve.kernels.cpu.timing import block_time, calls_for, paired_ratio
from xyserve.kernels.gemm.smooth import CPU_CANDIDATES, SWAPPED_IMPLS, cpu_linear
from xyserve.model.loader import resolve_dtype
from xyserve.models import BUNDLED_MODELS, MODELS_DIR
from xyserve.output_files import output_file
from xyserve.plan.gemm_table import (
    OPS,
    TABLE_FILE,
    GemmConfig,
    GemmTable,
    Precision,
    bucket_low,
    buckets,
    cache_path,
    model_shapes,
)
from xyserve.plan.machine import machine_signature


def cpu_candidates(dtype: torch.dtype = torch.float32) -> list[GemmConfig]:
    """The CPU entry points worth profiling (CUDA's search is ``tune_cuda``'s)."""
    ready = {"numba": cpu_gemm.available(dtype), "dnnl": prepacked.available(dtype)}
    impls = [i for i in CPU_CANDIDATES if ready.get(i, True)]
    return [GemmConfig(cpu_impl=impl) for impl in impls]  # [0]: F.linear


COLD_BYTES = 64 << 20  # larger than most L3 caches: each timed call finds its weight cold


def cold_copies(w: torch.Tensor, total_bytes: int = COLD_BYTES) -> list[torch.Tensor]:
    """Copies of ``w`` to cycle through, so that each timed call finds its weight out of cache.

    In a decode step every layer's weights are read once and are evicted before the next step
    (the ~100M bench model streams 400 MB per step), so the CPU entry points are compared on
    cold weights, where their ranking can differ from the hot one (docs/perf.md).
    """
    n = max(1, min(32, -(-total_bytes // max(1, w.numel() * w.element_size()))))
    return [w] + [w.clone() for _ in range(n - 1)]


# The op whose output feeds each op's input in a layer (through a norm or an activation, which
# keep the layout). A swapped CPU GEMM leaves its output column-major, so the next op reads a
# column-major input; ops missing here read a row-major one (attention output, final norm).
UPSTREAM = {"gate_up": "o_proj", "down": "gate_up", "qkv": "down"}
DATAFLOW = ("o_proj", "gate_up", "down", "qkv", "lm_head")  # each after its upstream op


def tune(
    config: dict,
    budget: int,
    device: str,
    ops: list[str],
    repeat: int = 7,
    dtype: torch.dtype = torch.float32,
    model_name: str = "",
    progress: bool = True,
    max_m: int | None = None,
    allow_tf32: bool = False,
) -> GemmTable:
    """Tune every (op, bucket). On CPU each op is timed on the input layout the forward hands
    it: column-major where the bucket's upstream op was tuned to a swapped GEMM, since a
    choice timed on row-major inputs can be wrong for the layout it will really read
    (docs/perf.md)."""
    shapes = {op: s for op, s in model_shapes(config).items() if op in ops}
    table = GemmTable(
        model=model_name,
        device=device,
        budget=budget,
        shapes=shapes,
        machine=machine_signature(device),
        dtype=str(dtype).removeprefix("torch."),
        allow_tf32=Precision(str(dtype).removeprefix("torch."), allow_tf32).tf32(device),
        quick=max_m is not None,
    )
    order = sorted(shapes, key=lambda op: DATAFLOW.index(op) if op in DATAFLOW else len(DATAFLOW))
    pms = [pm for pm in buckets(budget) if max_m is None or pm <= max_m]
    work = [(op, pm) for pm in pms for op in order]
    gen = torch.Generator().manual_seed(0)
    weights = {
        op: (torch.randn((n, k), generator=gen) / k**0.5).to(device=device, dtype=dtype)
        for op, (n, k) in shapes.items()
    }
    cold = {op: cold_copies(w) for op, w in weights.items()} if device == "cpu" else {}
    for op, pm in tqdm(work, desc="tune", disable=not progress, file=sys.stderr):
        w = weights[op]
        up = table.entries.get(UPSTREAM.get(op, ""), {}).get(pm)
        if device == "cpu" and up is not None and up.cpu_impl in SWAPPED_IMPLS:
            x = torch.randn((w.shape[1], pm), generator=gen).to(dtype=dtype).t()  # column-major
        else:
            x = torch.randn((pm, w.shape[1]), generator=gen).to(device=device, dtype=dtype)
        best = tune_one(cold.get(op, w), x, device, repeat, allow_tf32)
        if best is not None:
            table.set(op, pm, best)
    return table


def tune_one(
    w: torch.Tensor | list[torch.Tensor],
    x: torch.Tensor,
    device: str,
    repeat: int,
    allow_tf32: bool = False,
) -> GemmConfig | None:
    """The best candidate for ``x @ w.T`` (``x`` has the bucket's padded M rows). On CPU ``w``
    may be a list of equal copies (``cold_copies``), cycled so that each call reads a cold one."""
    ws = w if isinstance(w, list) else [w]
    if device != "cuda":
        return _tune_one_cpu(ws, x, repeat)
    from xyserve.tools.tune_cuda import tune_one_cuda

    return tune_one_cuda(ws[0], x, allow_tf32=allow_tf32)[0]


def _tune_one_cpu(ws: list[torch.Tensor], x: torch.Tensor, repeat: int) -> GemmConfig:
    """The candidate with the lowest mean time relative to ``F.linear`` over the bucket's
    low, middle, odd top and top M, among those faster than it by ``pick_cpu``'s margin at
    each of them (else ``F.linear``).

    One config serves every M of the bucket, and the speed order of the entry points can flip
    inside a bucket (``swap`` wins at 64 rows and may lose at 63), so the bucket's best at its
    padded M alone is not enough. Candidates are timed interleaved, in blocks of calls about
    10 ms long (``kernels.cpu.timing``), and compared with ``F.linear`` by the median over ``repeat``
    rounds of their time ratio in the same round, so that a burst of interference does not
    pick a config.
    """
    pm = x.shape[0]
    lo = bucket_low(pm)
    ms = sorted({lo, (lo + pm) // 2, max(lo, pm - 1), pm})
    cfgs = cpu_candidates(x.dtype)  # the first is plain F.linear
    keys = [(c, m) for c in range(len(cfgs)) for m in ms]
    if any(c.cpu_impl == "dnnl" for c in cfgs):
        for w in ws:  # pack each cold copy now: the engine packs once, outside its steps
            prepacked.packed(w)
    nxt = itertools.cycle(ws).__next__
    fns = {(c, m): lambda c=c, m=m: cpu_linear(cfgs[c], x[:m], nxt(), None) for c, m in keys}
    calls = {m: calls_for(fns[0, m]) for m in ms}  # blocks as long as F.linear's, ~10 ms
    samples: dict[tuple[int, int], list[float]] = {key: [] for key in keys}
    for _ in range(repeat):
        for c, m in keys:
            samples[c, m].append(block_time(fns[c, m], calls[m]))
    ratio = {(c, m): paired_ratio(samples[c, m], samples[0, m]) for c, m in keys}
    return cfgs[pick_cpu(ratio, len(cfgs), ms)]


def pick_cpu(t: dict[tuple[int, int], float], n: int, ms: list[int], margin: float = 0.97) -> int:
    """Index of the candidate to keep, from times (or ratios to candidate 0) ``t[candidate, m]``;
    candidate 0 is the reference (``F.linear``), kept unless another is faster by ``margin``
    at every M, then the fastest on the mean. The margin is there because the swapped GEMM's
    speed at a given M can vary from process to process (docs/perf.md), so a bare tie at
    tuning time is no promise."""
    ok = [0] + [c for c in range(1, n) if all(t[c, m] <= margin * t[0, m] for m in ms)]
    return min(ok, key=lambda c: (sum(t[c, m] / t[0, m] for m in ms), c))


QUICK_MAX_M = 64  # the decode buckets: what a first start tunes
QUICK_REPEAT = 3


def quick_tune(
    model: str | os.PathLike,
    device: str = "cpu",
    progress: bool = True,
    precision: Precision = Precision(),
) -> GemmTable:
    """Tune the decode buckets of every op of ``model`` on this machine at ``precision``, save
    the table in the cache folder (keyed by the model's shapes, the machine and the precision)
    and return it. A cache folder that cannot be written is said once; the table then serves
    this process only."""
    model = Path(model)
    config = json.loads((model / "config.json").read_text())
    with torch.inference_mode():
        table = tune(
            config,
            QUICK_MAX_M,
            device,
            list(OPS),
            QUICK_REPEAT,
            getattr(torch, precision.dtype),
            model.name,
            progress,
            max_m=QUICK_MAX_M,
        )
    out = cache_path(model, device, precision)
    try:
        table.save(out)
    except OSError as e:
        warnings.warn(
            f"SmoothGEMM: cannot cache the tuned GEMM table at {out} ({e}); it serves this "
            f"process only (set XYSERVE_CACHE_DIR to a writable folder)",
            stacklevel=3,
        )
    return table


def default_out(
    model: Path, device: str, use_cache: bool, precision: Precision = Precision()
) -> Path:
    """Next to the model, unless ``--cache``, a read-only folder, or a table of another device
    or precision there (one file name serves them all: a CUDA or bfloat16 tune must not
    overwrite the CPU float32 table)."""
    side = model / TABLE_FILE
    if (
        use_cache
        or not os.access(model, os.W_OK)
        or _side_key(side) not in (None, (device, precision.tag(device)))
    ):
        return cache_path(model, device, precision)
    return side


def _side_key(path: Path) -> tuple[str, str | None] | None:
    """(device, precision tag) of the table at ``path``; None when there is none (or it is
    unreadable, so that a new table replaces it)."""
    try:
        t = GemmTable.load(path)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    tuned_at = Precision.of(t)
    return t.device, None if tuned_at is None else tuned_at.tag(t.device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xyserve tune", description="offline SmoothGEMM tuning")
    ap.add_argument(
        "--model", required=True, help="model folder (with config.json) or a bundled model name"
    )
    ap.add_argument("--budget", type=int, default=512, help="token budget: largest M")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, help="default: all")
    ap.add_argument("--repeat", type=int, default=7, help="CPU: rounds per bucket")
    ap.add_argument(
        "--out",
        type=output_file,
        help="table path (default: next to the model, else the cache folder)",
    )
    ap.add_argument("--cache", action="store_true", help="write to the cache folder")
    ap.add_argument(
        "--dtype", default="auto", help="the engine's dtype to tune for (auto: as the engine's)"
    )
    ap.add_argument(
        "--allow-tf32", action="store_true", help="CUDA float32: for engines run with it"
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    for flag in ("budget", "repeat"):  # 0 wrote an empty table that then counted as tuned
        if (value := getattr(args, flag)) < 1:
            ap.error(f"--{flag} must be at least 1, got {value}")
    if args.out and args.cache:
        ap.error("--out names the table's path: not with --cache")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (this torch sees none)")
    # a bundled name (xy-tiny), as `serve` takes it; anything else is a folder
    model = MODELS_DIR / args.model if args.model in BUNDLED_MODELS else Path(args.model)
    try:  # usage errors, not a traceback
        config = json.loads((model / "config.json").read_text())
        model_shapes(config)
    except (OSError, ValueError) as e:
        ap.error(f"--model {args.model}: cannot read config.json: {e}")
    except KeyError as e:
        ap.error(f"--model {args.model}: config.json has no {e.args[0]!r}")
    except (TypeError, AttributeError) as e:
        ap.error(f"--model {args.model}: config.json is not a model's config ({e})")
    try:  # a table applies only to engines run at the precision it was tuned at
        dtype = resolve_dtype(args.dtype, torch.device(device))
    except ValueError as e:
        ap.error(str(e))
    precision = Precision(str(dtype).removeprefix("torch."), args.allow_tf32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        table = tune(
            config,
            args.budget,
            device,
            args.ops,
            args.repeat,
            dtype,
            model.name,
            not args.no_progress,
            allow_tf32=args.allow_tf32,
        )
    out = Path(args.out) if args.out else default_out(model, device, args.cache, precision)
    try:
        table.save(out)
    except OSError as e:
        print(f"xyserve tune: cannot write the table to {out}: {e}", file=sys.stderr)
        return 1
    n = sum(len(v) for v in table.entries.values())
    print(
        f"tuned {n} (op, padded M) shapes on {device} ({table.machine.describe()}) "
        f"in {precision.tag(device)} "
        f"in {time.perf_counter() - t0:.1f}s -> {out}"
    )
    return 0

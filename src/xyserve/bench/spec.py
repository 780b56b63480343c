"""``xyserve bench spec``: speculative decoding against no speculation, side by side.

For every batch size, each method (``none`` and the speculative ones) runs the same greedy
prompts with fixed output lengths, and the order is repeated ``--rounds`` times, each round
starting one method later, so the methods alternate in time and none always runs first; then
more rounds while any method has run for less than ``--min-seconds`` in all (a large batch's
run takes a fraction of a second, and two rounds of it read ratios of 0.75 for the same steps),
up to ``MAX_ROUNDS``. One engine per method is built and warmed up once. Reported per batch and
method:

- output tok/s of the best round (on a shared machine other load only ever adds time) and its
  ratio to ``none``'s best round (``x none``), and the median over rounds of the ratio within
  each round (``x rnd``: the two ran back to back, while the best rounds of the two may come
  from different states of a shared machine, as short runs at large batches often do;
  ``--json`` keeps every round's seconds and ratio);
- engine steps, and ``none``'s steps over them: free of timing noise;
- the acceptance rate, the mean accepted length (tokens per verify), the proposer's share of
  the wall time, and whether every output equals ``none``'s (greedy identity).

Workloads are data files (schema ``xyserve.spec-workload/1``): text prompts and
``max_tokens``. A batch of ``b`` takes ``b`` prompts in turn, cycling; when ``b`` is smaller
than the workload, batches run one after another until every prompt has run once (batch 1
runs each prompt alone), so a small batch measures the whole workload, not its first prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from xyserve.bench.data_file import read_versioned
from xyserve.bench.offline_workload import find
from xyserve.output_files import output_file, write_text

SCHEMA = "xyserve.spec-workload/1"
METHODS = ("none", "ngram", "draft_model", "tree")
MAX_ROUNDS = 50  # --min-seconds stops adding rounds here


def load_spec_workload(path: str | Path) -> dict:
    """The spec workload file (a path or a packaged name), checked: a malformed file (not
    JSON, not an object, a ``max_tokens`` that is no whole number) used to end in a traceback
    that did not name the file."""
    p = Path(path)
    if not p.is_file():
        p = find("workloads", str(path) if str(path).endswith(".json") else f"{path}.json")
    data = read_versioned(p, SCHEMA)
    prompts = data.get("prompts")
    if not (isinstance(prompts, list) and prompts and all(isinstance(x, str) for x in prompts)):
        raise ValueError(f"{p}: field 'prompts' must be a non-empty list of strings")
    n = data.get("max_tokens")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{p}: field 'max_tokens' must be a whole number >= 1, got {n!r}")
    return data


def batch_groups(prompts: list[str], b: int) -> list[list[str]]:
    """Batches of ``b`` prompts taken in turn (cycling), enough for each prompt to run once."""
    n_groups = -(-len(prompts) // b)
    return [[prompts[(g * b + i) % len(prompts)] for i in range(b)] for g in range(n_groups)]


def _spec_config(method: str, k: int, adaptive: bool, tree_keys: dict) -> dict | None:
    if method == "none":
        return None
    cfg = {"method": method, "num_speculative_tokens": k, "adaptive": adaptive}
    if method == "tree":
        cfg.update(tree_keys)
    return cfg


def _tree_keys(args: argparse.Namespace) -> dict:
    keys = {"tree_branching": args.tree_branching, "tree_width": args.tree_width}
    keys["tree_nodes"] = args.tree_nodes
    keys["tree_beam"] = args.tree_beam
    return {k: v for k, v in keys.items() if v is not None}


class UsageError(Exception):
    """Engine arguments the engine refused while ``run`` built it; ``main`` reports it."""


def run(args: argparse.Namespace, work: dict) -> list[dict]:
    """Each method's engine over ``work`` (``load_spec_workload``'s, loaded once by ``main``
    to refuse a bad file before any engine is built), batch size by batch size; the rows."""
    from xyserve import LLM, SamplingParams

    methods = ["none"] + [m for m in args.methods.split(",") if m != "none"]
    try:  # a model, dtype or method the engine refuses: a usage error (main), not a traceback
        engines = {
            m: LLM(
                args.model,
                disable_progress_bar=True,
                max_num_seqs=max(args.batch_sizes),
                max_num_batched_tokens=args.max_num_batched_tokens,
                dtype=args.dtype,
                speculative_config=_spec_config(
                    m, args.num_speculative_tokens, not args.no_adaptive, _tree_keys(args)
                ),
            )
            for m in methods
        }
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    params = SamplingParams(temperature=0, max_tokens=work["max_tokens"], ignore_eos=True)
    for llm in engines.values():  # warm-up: kernels compiled, GEMM shapes seen
        llm.generate(work["prompts"][:2], SamplingParams(temperature=0, max_tokens=8), False)
    rows = []
    for b in args.batch_sizes:
        groups = batch_groups(work["prompts"], b)
        times: dict[str, list[float]] = {m: [] for m in methods}
        spec_time: dict[str, float] = {m: 0.0 for m in methods}
        counts: dict[str, list[int]] = {m: [0, 0, 0] for m in methods}
        outputs: dict[str, list[list[int]]] = {}
        steps: dict[str, int] = {}
        r = 0
        while r < args.rounds or (
            r < MAX_ROUNDS and min(sum(t) for t in times.values()) < args.min_seconds
        ):
            # each round starts one system later, so that none runs first in every round
            # (the system after a round's start ran on a machine the one before had warmed)
            for m in methods[r % len(methods) :] + methods[: r % len(methods)]:
                eng = engines[m].llm_engine
                s0 = _snapshot(eng)
                t0 = time.perf_counter()
                outs = [o for g in groups for o in engines[m].generate(g, params, use_tqdm=False)]
                times[m].append(time.perf_counter() - t0)
                s1 = _snapshot(eng)
                spec_time[m] += s1[3] - s0[3]
                steps[m] = s1[4] - s0[4]  # deterministic for greedy runs: the last round's
                counts[m] = [c + y - x for c, x, y in zip(counts[m], s0[:3], s1[:3])]
                outputs[m] = [o.outputs[0].token_ids for o in outs]
            r += 1
        ntok = sum(len(g) for g in groups) * work["max_tokens"]
        base = min(times["none"])
        for m in methods:
            med = min(times[m])
            # the round's ratio: none and m ran back to back, on one state of the machine
            paired = [t0 / t for t0, t in zip(times["none"], times[m])]
            drafts, draft_toks, acc = counts[m]
            rows.append(
                {
                    "batch": b,
                    "method": m,
                    "tok_s": ntok / med,
                    "speedup": base / med,
                    "round_speedups": paired,
                    "steps": steps[m],
                    "step_ratio": steps["none"] / steps[m],
                    "acceptance": acc / draft_toks if draft_toks else None,
                    "mean_accepted_len": 1 + acc / drafts if drafts else None,
                    "draft_share": spec_time[m] / sum(times[m]) if m != "none" else None,
                    "identical": outputs[m] == outputs["none"],
                    "seconds": times[m],
                    "rounds": r,
                }
            )
        _print_rows([r for r in rows if r["batch"] == b], header=b == args.batch_sizes[0])
    return rows


def _snapshot(engine) -> tuple[int, int, int, float, int]:
    s = engine.spec.stats if engine.spec is not None else None
    if s is None:
        return (0, 0, 0, 0.0, engine.num_steps)
    return (
        s.num_drafts,
        s.num_draft_tokens,
        s.num_accepted_tokens,
        s.propose_seconds,
        engine.num_steps,
    )


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _print_rows(rows: list[dict], header: bool) -> None:
    if header:
        print(
            f"{'batch':>5} {'method':<12} {'tok/s':>8} {'x none':>7} {'x rnd':>6} {'steps':>6} "
            f"{'steps/':>7} "
            f"{'accept':>7} "
            f"{'acc len':>7} {'draft %':>7} {'same':>5} {'rounds':>6}"
        )
    for r in rows:
        share = None if r["draft_share"] is None else 100 * r["draft_share"]
        print(
            f"{r['batch']:>5} {r['method']:<12} {r['tok_s']:>8.1f} {r['speedup']:>7.2f} "
            f"{statistics.median(r['round_speedups']):>6.2f} {r['steps']:>6} {r['step_ratio']:>7.2f} "
            f"{_fmt(r['acceptance'], '.2f'):>7} {_fmt(r['mean_accepted_len'], '.2f'):>7} "
            f"{_fmt(share, '.1f'):>7} {str(r['identical']):>5} {r['rounds']:>6}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xyserve bench spec", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="xy-tiny")
    p.add_argument("--workload", default="spec_code", help="a file or a packaged name")
    p.add_argument("--methods", default="ngram,draft_model,tree", help="compared with none")
    p.add_argument(
        "--batch-sizes", default="1,4,16,64", type=lambda s: [int(x) for x in s.split(",")]
    )
    p.add_argument("--num-speculative-tokens", type=int, default=4)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument(
        "--dtype", default="auto", help="the engines' dtype (auto: float32 on CPU), as `serve`"
    )
    p.add_argument("--rounds", type=int, default=3, help="at least this many rounds")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help=f"then more rounds, up to {MAX_ROUNDS} in all, until every method has run this "
        "long at the batch size (0: --rounds exactly; default: %(default)s)",
    )
    p.add_argument("--no-adaptive", action="store_true", help="always k proposals")
    p.add_argument(
        "--tree-branching",
        type=lambda s: [int(x) for x in s.split(",")],
        help="the tree method's branching list, e.g. 3,1,1,1 (default: width 2, depth k)",
    )
    p.add_argument("--tree-width", type=int, help="the tree method's tree_width")
    p.add_argument("--tree-nodes", type=int, help="a dynamic tree of this many nodes")
    p.add_argument("--tree-beam", type=int, help="nodes a dynamic tree expands per level")
    p.add_argument("--json", type=output_file, help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.rounds < 1:  # 0 was a traceback once every engine was built
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if not args.min_seconds >= 0:
        p.error(f"--min-seconds must be at least 0, got {args.min_seconds}")
    if min(args.batch_sizes) < 1:  # a negative size ran no request and divided by 0 steps
        p.error(f"--batch-sizes must all be at least 1, got {args.batch_sizes}")
    tree_flags = [f"--{k.replace('_', '-')}" for k in _tree_keys(args)]
    if tree_flags and "tree" not in args.methods.split(","):  # else accepted and ignored
        p.error(f"{', '.join(tree_flags)}: for the tree method only, not in --methods")
    try:  # a usage error, not a traceback once the engines are built
        work = load_spec_workload(args.workload)
    except (OSError, ValueError) as e:
        p.error(str(e))
    try:
        rows = run(args, work)
    except UsageError as e:
        p.error(str(e))
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0

"""End to end on a GPU: xyserve (hybrid, meta + smooth backends) against HF transformers
``generate`` in static batches, on the same random-weight Llama config, same prompts, greedy,
fixed output lengths. xyserve runs with CUDA graphs and with ``enforce_eager``, side by side.
Prints output tok/s, the ratio to HF, xyserve's mean step time, and the per-step overhead:

* ``ms/step``: wall time of the timed run over its engine steps;
* ``replay ms``: GPU time of one replayed graph (CUDA events around ``replay``), the device
  time of a step's forward without host gaps, averaged over the replayed steps;
* ``overhead``: ``ms/step`` minus ``replay ms``, the host work and launch gaps of a step (an
  estimate: the eager run runs the same kernels, so its overhead is reckoned against the graph
  run's replay time too; steps that are not replayed, the long prefills, count in ``ms/step``).

Run from the repository root with ``PYTHONPATH=src python scripts/gpu_e2e.py [--requests 32 128]``
(``scripts/gpu_check.sh`` runs it). Needs CUDA; not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from xyserve import LLM, SamplingParams
from xyserve.bench.offline_systems import run_hf
from xyserve.bench.offline_workload import Workload, build_random_model, load_workload, packaged


class TimedGraph:
    """A captured graph whose replays are timed on the GPU with a pair of CUDA events."""

    def __init__(self, graph: torch.cuda.CUDAGraph) -> None:
        self.graph = graph
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def replay(self) -> None:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        self.graph.replay()
        b.record()
        self.events.append((a, b))


def run_xyserve(model: Path, work: Workload, dtype: str, engine_args: dict) -> dict:
    """One timed run: seconds, steps, replayed steps and their mean GPU ms."""
    t0 = time.perf_counter()
    llm = LLM(str(model), device="cuda", dtype=dtype, skip_tokenizer_init=True, **engine_args)
    start_s = time.perf_counter() - t0
    params = [
        SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for o in work.output_lens
    ]
    prompts = [{"prompt_token_ids": p} for p in work.prompts]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up: Triton compiles here
    graphs = llm.llm_engine.runner.graphs
    timed = {}
    if graphs is not None:
        timed = {size: TimedGraph(g) for size, g in graphs.graphs.items()}
        graphs.graphs.update(timed)
    steps0 = llm.llm_engine.num_steps
    torch.cuda.synchronize()
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    assert sum(len(o.outputs[0].token_ids) for o in outs) == work.num_output_tokens
    steps = llm.llm_engine.num_steps - steps0
    replays = [a.elapsed_time(b) for tg in timed.values() for a, b in tg.events]
    del llm, graphs, timed
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "seconds": elapsed,
        "steps": steps,
        "replayed_steps": len(replays),
        "replay_ms": sum(replays) / len(replays) if replays else None,
        "engine_start_s": start_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-config", default="llama-100m.json")
    ap.add_argument("--workload", default="offline_decode_heavy.json")
    ap.add_argument("--requests", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument(
        "--graphs",
        choices=("both", "on", "off"),
        default="both",
        help="xyserve with CUDA graphs, with enforce_eager, or both side by side (default)",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    modes = {"both": ("graphs", "eager"), "on": ("graphs",), "off": ("eager",)}[args.graphs]
    tdtype = getattr(torch, args.dtype)
    cfg_file = packaged("models", args.model_config)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_random_model(cfg_file, Path(tmp) / "m", seed=0)
        vocab = json.loads(cfg_file.read_text())["vocab_size"]
        for n in args.requests:
            base = load_workload(args.workload, vocab, seed=0)
            reps = -(-n // len(base.prompts))
            work = Workload(base.name, (base.prompts * reps)[:n], (base.output_lens * reps)[:n])
            engine_args = {
                "max_num_seqs": max(n, 1),
                "max_num_batched_tokens": args.max_num_batched_tokens,
                "enable_prefix_caching": False,  # the prompts repeat: no free cache hits
            }
            runs = {
                mode: run_xyserve(
                    model, work, args.dtype, {**engine_args, "enforce_eager": mode == "eager"}
                )
                for mode in modes
            }
            # Warm-up at the timed batch size: HF's first ``generate`` at a new batch shape
            # costs several seconds of one-off set-up on the GPU (11.3 s against 2.0 s for the
            # next batches of 32, seen on an H200), which would count against HF otherwise.
            k = args.hf_batch_size
            run_hf(
                model,
                Workload(work.name, work.prompts[:k], work.output_lens[:k]),
                k,
                "cuda",
                tdtype,
            )
            t_hf = run_hf(model, work, args.hf_batch_size, "cuda", tdtype)
            replay_ms = (runs.get("graphs") or {}).get("replay_ms")
            hf_tok_s = work.num_output_tokens / t_hf
            for mode, r in runs.items():
                ms_step = 1e3 * r["seconds"] / max(1, r["steps"])
                row = {
                    "requests": n,
                    "mode": mode,
                    "output_tokens": work.num_output_tokens,
                    "xyserve_tok_s": work.num_output_tokens / r["seconds"],
                    "hf_tok_s": hf_tok_s,
                    "ratio": t_hf / r["seconds"],
                    "xyserve_steps": r["steps"],
                    "xyserve_ms_per_step": ms_step,
                    "replayed_steps": r["replayed_steps"],
                    "replay_ms": r["replay_ms"],
                    "overhead_ms_per_step": None if replay_ms is None else ms_step - replay_ms,
                    "engine_start_s": r["engine_start_s"],
                }
                results.append(row)
                extra = ""
                if replay_ms is not None and mode == "graphs":
                    extra = (
                        f", {r['replayed_steps']}/{r['steps']} steps replayed, "
                        f"{replay_ms:.2f} GPU ms each; overhead "
                        f"~{row['overhead_ms_per_step']:.2f} ms/step"
                    )
                elif replay_ms is not None:
                    extra = (
                        f"; overhead ~{row['overhead_ms_per_step']:.2f} ms/step against the "
                        f"graph run's {replay_ms:.2f} GPU ms replays"
                    )
                print(
                    f"e2e {args.dtype} {n} requests {mode}: xyserve {row['xyserve_tok_s']:.0f} "
                    f"tok/s ({r['steps']} steps, {ms_step:.2f} ms/step{extra}; engine start "
                    f"{r['engine_start_s']:.1f} s), HF static batches of {args.hf_batch_size} "
                    f"{hf_tok_s:.0f} tok/s: {row['ratio']:.2f}x",
                    flush=True,
                )
            if len(runs) == 2:
                g, e = runs["graphs"], runs["eager"]
                print(f"e2e {n} requests: graphs / eager speed {e['seconds'] / g['seconds']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

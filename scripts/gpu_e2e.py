"""End to end on a GPU: xyserve (hybrid, meta + smooth backends) against HF transformers
``generate`` in static batches, on the same random-weight Llama config, same prompts, greedy,
fixed output lengths. Prints output tok/s, the ratio, and xyserve's mean step time.

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
from xyserve.bench.offline import Workload, build_random_model, load_workload, packaged, run_hf


def run_xyserve(model: Path, work: Workload, dtype: str, engine_args: dict) -> tuple[float, int]:
    llm = LLM(str(model), device="cuda", dtype=dtype, skip_tokenizer_init=True, **engine_args)
    params = [
        SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for o in work.output_lens
    ]
    prompts = [{"prompt_token_ids": p} for p in work.prompts]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up: Triton compiles here
    steps0 = llm.llm_engine.num_steps
    torch.cuda.synchronize()
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    assert sum(len(o.outputs[0].token_ids) for o in outs) == work.num_output_tokens
    steps = llm.llm_engine.num_steps - steps0
    del llm
    gc.collect()
    return elapsed, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-config", default="llama-100m.json")
    ap.add_argument("--workload", default="offline_decode_heavy.json")
    ap.add_argument("--requests", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--json")
    args = ap.parse_args()
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
            t_xy, steps = run_xyserve(model, work, args.dtype, engine_args)
            run_hf(
                model,
                Workload(work.name, work.prompts[:2], work.output_lens[:2]),
                2,
                "cuda",
                tdtype,
            )
            t_hf = run_hf(model, work, args.hf_batch_size, "cuda", tdtype)
            row = {
                "requests": n,
                "output_tokens": work.num_output_tokens,
                "xyserve_tok_s": work.num_output_tokens / t_xy,
                "hf_tok_s": work.num_output_tokens / t_hf,
                "ratio": t_hf / t_xy,
                "xyserve_steps": steps,
                "xyserve_ms_per_step": 1e3 * t_xy / max(1, steps),
            }
            results.append(row)
            print(
                f"e2e {args.dtype} {n} requests: xyserve {row['xyserve_tok_s']:.0f} tok/s "
                f"({steps} steps, {row['xyserve_ms_per_step']:.1f} ms/step), HF static batches "
                f"of {args.hf_batch_size} {row['hf_tok_s']:.0f} tok/s: {row['ratio']:.2f}x",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

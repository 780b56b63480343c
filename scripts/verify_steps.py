"""Per-step wall, main-thread CPU and process CPU time of a batch-1 run, with or without
speculation: the median over one run's steps after the first (the prefill).

Process CPU above the main thread's says that other threads (OpenMP pools) worked or spun
during the steps; wall above process CPU says the threads waited for a core. A one-off
measuring tool, not a benchmark (docs/perf.md, "Threads for small kernels"):

    PYTHONPATH=src python scripts/verify_steps.py --model xy-tiny [--spec ngram]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="xy-tiny")
    ap.add_argument("--spec", choices=["none", "ngram"], default="none")
    ap.add_argument("--k", type=int, default=4, help="num_speculative_tokens (fixed)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="runs; the last one is reported")
    args = ap.parse_args()

    from xyserve import LLM, SamplingParams

    spec = None
    if args.spec == "ngram":
        spec = {"method": "ngram", "num_speculative_tokens": args.k, "adaptive": False}
    llm = LLM(args.model, max_num_seqs=1, skip_tokenizer_init=True, speculative_config=spec)
    # a prompt that repeats itself, so that n-gram lookup proposes and is accepted
    prompt = {"prompt_token_ids": [(7 * i) % 500 + 3 for i in range(64)]}
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    eng = llm.llm_engine
    rec: list[tuple[float, float, float]] = []
    real_step = eng.step

    def step():
        t, c, p = time.perf_counter(), time.thread_time(), time.process_time()
        out = real_step()
        rec.append((time.perf_counter() - t, time.thread_time() - c, time.process_time() - p))
        return out

    eng.step = step
    for _ in range(args.rounds):
        rec.clear()
        llm.generate([prompt], params, use_tqdm=False)
    body = rec[1:]
    wall, thread, proc = (statistics.median(x[i] for x in body) * 1e3 for i in range(3))
    print(
        f"{args.spec}: {len(rec)} steps; median step wall {wall:.3f} ms, "
        f"thread CPU {thread:.3f} ms, process CPU {proc:.3f} ms"
    )


if __name__ == "__main__":
    main()

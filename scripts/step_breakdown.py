"""Where a step's time goes at batch 1: the engine's step split into its parts.

Wraps the functions one step calls (schedule, plan building, forward, sampling, update,
outputs) with timers, runs one greedy request through ``LLM`` and prints the mean time of
each part per step, and what is left of the step outside them. A one-off measuring tool, not
a benchmark: the figures are as noisy as the machine (docs/perf.md, batch 1).

    PYTHONPATH=src python scripts/step_breakdown.py --model /tmp/b18-m76 [--spec '{...}']
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict

TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(owner: object, attr: str, label: str) -> None:
    """Replace ``owner.attr`` with a wrapper adding its wall time to ``TIMES[label]``."""
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - t
            CALLS[label] += 1

    setattr(owner, attr, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="runs; the last one is reported")
    ap.add_argument("--spec", default=None, help="speculative_config as JSON")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from xyserve import LLM, SamplingParams  # noqa: I001 - first: it sets OpenMP's wait policy

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from xyserve.engine import engine, runner
    from xyserve.model import llama
    from xyserve.plan import attention_metadata

    spec = json.loads(args.spec) if args.spec else None
    llm = LLM(args.model, max_num_seqs=1, skip_tokenizer_init=True, speculative_config=spec)
    eng = llm.llm_engine
    timed(eng.scheduler, "schedule", "schedule")
    timed(eng.scheduler, "update", "update")
    timed(eng.runner, "build_table", "plan: token table")
    timed(attention_metadata.AttentionMetadata, "build", "plan: attention metadata")
    timed(eng.runner.attn, "plan", "plan: attention plan")
    timed(eng.runner.gemm, "plan", "plan: gemm plan")
    timed(llama.LlamaModel, "forward", "forward")
    timed(engine, "sample", "sample")
    timed(eng.output, "make_output", "outputs")
    timed(runner.ModelRunner, "execute", "execute (plans + forward)")
    if eng.spec is not None:
        timed(eng.spec, "propose", "spec: propose")
        timed(eng.spec, "verify", "spec: verify")
    timed(eng, "step", "step")
    prompt = {"prompt_token_ids": [(7 * i) % 500 + 3 for i in range(args.prompt_len)]}
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    for _ in range(args.rounds):
        TIMES.clear()
        CALLS.clear()
        t = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)
        wall = time.perf_counter() - t
        print(f"round: {wall:.3f} s")
    steps = CALLS["step"]
    ntok = len(out[0].outputs[0].token_ids)
    print(f"{steps} steps, {ntok} tokens, {wall:.3f} s, {ntok / wall:.1f} tok/s")
    for label in sorted(TIMES, key=lambda k: -TIMES[k]):
        per = TIMES[label] / max(1, steps) * 1e3
        print(
            f"  {label:28s} {TIMES[label] * 1e3:9.1f} ms  {per:7.3f} ms/step  ({CALLS[label]} calls)"
        )
    inside = TIMES["execute (plans + forward)"] + sum(
        TIMES[k] for k in ("schedule", "update", "sample", "outputs")
    )
    print(
        f"  step minus its timed parts: {(TIMES['step'] - inside) / max(1, steps) * 1e3:.3f} ms/step"
    )


if __name__ == "__main__":
    main()

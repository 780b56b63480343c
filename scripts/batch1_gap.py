"""Where a batch-1 decode step's time goes beyond its GEMVs: runs of one model.

1. the model's own one-row GEMVs (qkv, o_proj, gate_up, down per layer), back to back, on the
   loaded weight tensors and on clones of them (whether the weights' memory matters);
2. the engine's greedy generation on the eager forward with every one-row GEMM replaced by a
   preallocated zero tensor (host work, small ops, attention and sampling alone; multi-row
   GEMMs, the prefill's, stay real);
3. the same generation for real, on the eager forward (``cpu_fused_decode="off"``);
4. the same generation with the decode steps as one fused call (``cpu_fused_decode="on"``),
   its rounds interleaved with 3's. Per token: best wall time and the process's CPU time.
A one-off measuring tool, not a benchmark (docs/perf.md, issue 18's batch-1 sections):

    PYTHONPATH=src python scripts/batch1_gap.py --model /tmp/b18-m76
"""

from __future__ import annotations

import argparse
import time

from gemv_floor import best_ms  # this folder's: the same best-of timer


def generate(llm, max_tokens: int) -> tuple[float, float]:
    """One greedy generation: (wall, process CPU) ms per output token."""
    from xyserve import SamplingParams

    prompt = {"prompt_token_ids": [(7 * i) % 500 + 3 for i in range(64)]}
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    wall, cpu = time.perf_counter(), time.process_time()
    llm.generate([prompt], params, use_tqdm=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall * 1e3 / max_tokens, cpu * 1e3 / max_tokens


def best_of(llm, max_tokens: int, rounds: int) -> tuple[float, float]:
    generate(llm, max_tokens)
    runs = [generate(llm, max_tokens) for _ in range(rounds)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch's (and so numba's) count")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import xyserve.kernels.gemm.smooth as smooth
    from xyserve import LLM

    llm = LLM(args.model, max_num_seqs=1, skip_tokenizer_init=True, cpu_fused_decode="off")
    model = llm.llm_engine.model
    mats = [w for layer in model.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    clones = [w.clone() for w in mats]
    xs = {k: torch.randn(1, k) for k in {w.shape[1] for w in mats}}

    def gemvs(ws):
        return lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in ws]

    print(f"{len(mats)} GEMVs, model weights: {best_ms(gemvs(mats), 15):.2f} ms")
    print(f"{len(mats)} GEMVs, clones:        {best_ms(gemvs(clones), 15):.2f} ms")
    fused = LLM(args.model, max_num_seqs=1, skip_tokenizer_init=True, cpu_fused_decode="on")
    eager_runs, fused_runs = [], []
    for _ in range(args.rounds):  # interleaved, so that the machine's load reaches both
        eager_runs.append(best_of(llm, args.max_tokens, 1))
        fused_runs.append(best_of(fused, args.max_tokens, 1))
    zeros: dict[tuple[int, int], torch.Tensor] = {}
    cpu_linear = smooth.cpu_linear

    def one_row_stub(cfg, x, weight, bias):
        if x.shape[0] > 1:
            return cpu_linear(cfg, x, weight, bias)
        key = (x.shape[0], weight.shape[0])
        return zeros.setdefault(key, torch.zeros(key))

    smooth.cpu_linear = one_row_stub
    try:
        stubbed = best_of(llm, args.max_tokens, args.rounds)
    finally:
        smooth.cpu_linear = cpu_linear

    def line(name: str, runs: list[tuple[float, float]]) -> str:
        wall = ", ".join(f"{w:.2f}" for w, _ in runs)
        cpu = ", ".join(f"{c:.2f}" for _, c in runs)
        return f"{name} ms per token, wall {wall}; process CPU {cpu}"

    print(line("generation, eager, one-row GEMMs stubbed:", [stubbed]))
    print(line("generation, eager (real):                ", eager_runs))
    print(line("generation, fused decode:                ", fused_runs))


if __name__ == "__main__":
    main()

"""Where a batch-1 decode step's time goes beyond its GEMVs: three runs of one model.

1. the model's own one-row GEMVs (qkv, o_proj, gate_up, down per layer), back to back, on the
   loaded weight tensors and on clones of them (whether the weights' memory matters);
2. the engine's greedy generation with every one-row GEMM replaced by a preallocated zero
   tensor (host work, small ops, attention and sampling alone; multi-row GEMMs, the prefill's,
   stay real);
3. the same generation for real.
A one-off measuring tool, not a benchmark (docs/perf.md, issue 18's quiet-machine figures):

    PYTHONPATH=src python scripts/batch1_gap.py --model /tmp/b18-m76
"""

from __future__ import annotations

import argparse

from gemv_floor import best_ms  # this folder's: the same best-of timer


def generate_ms_per_token(llm, max_tokens: int, rounds: int) -> float:
    from xyserve import SamplingParams

    prompt = {"prompt_token_ids": [(7 * i) % 500 + 3 for i in range(64)]}
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return best_ms(lambda: llm.generate([prompt], params, use_tqdm=False), rounds) / max_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    import xyserve.kernels.gemm.smooth as smooth
    from xyserve import LLM

    llm = LLM(args.model, max_num_seqs=1, skip_tokenizer_init=True)
    model = llm.llm_engine.model
    mats = [w for layer in model.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    clones = [w.clone() for w in mats]
    xs = {k: torch.randn(1, k) for k in {w.shape[1] for w in mats}}

    def gemvs(ws):
        return lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in ws]

    print(f"{len(mats)} GEMVs, model weights: {best_ms(gemvs(mats), 15):.2f} ms")
    print(f"{len(mats)} GEMVs, clones:        {best_ms(gemvs(clones), 15):.2f} ms")
    real = generate_ms_per_token(llm, args.max_tokens, args.rounds)
    zeros: dict[tuple[int, int], torch.Tensor] = {}
    cpu_linear = smooth.cpu_linear

    def one_row_stub(cfg, x, weight, bias):
        if x.shape[0] > 1:
            return cpu_linear(cfg, x, weight, bias)
        key = (x.shape[0], weight.shape[0])
        return zeros.setdefault(key, torch.zeros(key))

    smooth.cpu_linear = one_row_stub
    try:
        stubbed = generate_ms_per_token(llm, args.max_tokens, args.rounds)
    finally:
        smooth.cpu_linear = cpu_linear
    print(f"generation, one-row GEMMs stubbed: {stubbed:.2f} ms per token")
    print(f"generation, real:                  {real:.2f} ms per token")


if __name__ == "__main__":
    main()

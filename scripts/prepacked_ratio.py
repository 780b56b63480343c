"""``F.linear`` against oneDNN on a prepacked weight (``kernels.cpu.prepacked``), per op shape
of a model and per M: the time ratio (> 1: prepacked faster). One thread by default, timed in
the calling thread's CPU time on the same (hot) weight every call, so it shows the entry
points' own cost, not what the tuner sees with cold weights at the engine's threads. A one-off
measuring tool (docs/perf.md, "Prepacked weights on oneDNN"):

    python scripts/prepacked_ratio.py --config src/xyserve/bench/models/llama-76m-v600.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from xyserve.kernels.cpu import prepacked


def best_us(fn, calls: int = 20, blocks: int = 5) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(blocks):
        t = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - t) / calls)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="an HF config.json (Llama-style)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 5, 8, 16, 32, 64, 128])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = json.loads(open(args.config).read())
    h, inter = c["hidden_size"], c["intermediate_size"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    kv = c.get("num_key_value_heads", c["num_attention_heads"])
    shapes = {
        "qkv": ((c["num_attention_heads"] + 2 * kv) * d, h),
        "o_proj": (h, c["num_attention_heads"] * d),
        "gate_up": (2 * inter, h),
        "down": (h, inter),
        "lm_head": (c["vocab_size"], h),
    }
    print("op        " + " ".join(f"M={m:<5d}" for m in args.ms))
    for op, (n, k) in shapes.items():
        w = torch.randn(n, k)
        cells = []
        for m in args.ms:
            x = torch.randn(m, k)
            plain = best_us(lambda x=x, w=w: torch.nn.functional.linear(x, w))
            packed = best_us(lambda x=x, w=w: prepacked.linear(x, w, None))
            cells.append(f"{plain / packed:7.2f}")
        print(f"{op:9s} " + " ".join(cells))


if __name__ == "__main__":
    main()

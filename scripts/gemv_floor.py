"""The batch-1 floor of a model on this CPU: its decode step's GEMVs alone, back to back.

Each linear layer of the model's config (qkv, o_proj, gate_up, down per layer, random weights of
their shapes) runs once on one row, in order, as a decode step does; the best of several steps
is the time that streaming the weights takes here with ``F.linear``, without attention, norms,
RoPE or the engine. Beside it, one GEMV over the same bytes and a ``sum`` over them. A one-off
measuring tool, not a benchmark (docs/perf.md, issue 18's quiet-machine figures):

    python scripts/gemv_floor.py --config src/xyserve/bench/models/llama-76m-v600.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def best_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="an HF config.json (Llama-style)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c = json.loads(open(args.config).read())
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    kv = c.get("num_key_value_heads", c["num_attention_heads"])
    qkv = (c["num_attention_heads"] + 2 * kv) * d
    shapes = [(qkv, h), (h, c["num_attention_heads"] * d), (2 * inter, h), (h, inter)]
    mats = [torch.randn(n, k) for _ in range(layers) for n, k in shapes]
    xs = {k: torch.randn(1, k) for _, k in shapes}
    mb = sum(m.numel() for m in mats) * 4 / 1e6

    def step() -> None:
        for m in mats:
            torch.nn.functional.linear(xs[m.shape[1]], m)

    t = best_ms(step, args.reps)
    print(f"{len(mats)} GEMVs over {mb:.0f} MB: {t:.2f} ms ({mb / t:.1f} GB/s)")
    flat = torch.cat([m.reshape(-1) for m in mats])
    big, x = flat[: flat.numel() // h * h].view(-1, h), torch.randn(1, h)
    t1 = best_ms(lambda: torch.nn.functional.linear(x, big), args.reps)
    t2 = best_ms(lambda: flat.sum(), args.reps)
    print(f"one GEMV over the same bytes: {t1:.2f} ms; sum: {t2:.2f} ms ({mb / t2:.1f} GB/s)")


if __name__ == "__main__":
    main()

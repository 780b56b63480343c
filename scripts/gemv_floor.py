"""The batch-1 floor of a model on this CPU: its decode step's GEMVs alone, back to back.

Each linear layer of the model's config (qkv, o_proj, gate_up, down per layer, random weights of
their shapes) runs once on one row, in order, as a decode step does; the best of several steps
is the time that streaming the weights takes here with ``F.linear``, without attention, norms,
RoPE or the engine. Beside it, one GEMV over the same bytes and a ``sum`` over them. With
``--fused``, also the whole one-row forward as one ``kernels.cpu.fused_forward`` call (the
engine's CPU fused decode path: every layer, attention over ``--context`` keys, the lm_head)
on the same weights, its rounds interleaved with the GEMVs'. A one-off measuring tool, not a
benchmark (docs/perf.md, issue 18's batch-1 sections):

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


def fused_step(c: dict, mats: list[torch.Tensor], context: int, threads: int):
    """A one-row fused forward over ``mats`` (qkv, o, gate_up, down per layer, in order) at
    position ``context - 1`` of a cache whose earlier positions hold zeros."""
    import numpy as np

    from xyserve.kernels.cpu import fused_forward as ff

    h, layers = c["hidden_size"], c["num_hidden_layers"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    ones = torch.ones(h)
    lay = [
        dict(zip(("qkv", "o", "gate_up", "down"), mats[4 * i : 4 * i + 4]))
        | {"input_norm": ones, "post_norm": ones, "qkv_bias": None, "o_bias": None}
        | {"q_norm": None, "k_norm": None}
        for i in range(layers)
    ]
    vocab = torch.randn(c["vocab_size"], h)
    table = torch.ones(context, d // 2)
    w = ff.pack(vocab, vocab, ones, lay, table, table, c["num_attention_heads"],
                c.get("num_key_value_heads", c["num_attention_heads"]), d, 1e-5, compact=False)  # fmt: skip
    bs = 16
    k, v = ff.new_cache(w, -(-context // bs), bs)
    p, one = context - 1, np.array([0])
    rows = ff.Rows(one, np.array([p]), np.array([p]), one, np.arange(k.shape[1])[None],
                   np.array([context]), np.zeros(2, np.int64), np.zeros(0, np.int64), one)  # fmt: skip
    return lambda: ff.forward(w, k, v, rows, parallel=True, threads=threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="an HF config.json (Llama-style)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--fused", action="store_true", help="time the fused one-row forward too")
    ap.add_argument("--context", type=int, default=192, help="--fused: keys the row attends to")
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
    if args.fused:
        fused = fused_step(c, mats, args.context, torch.get_num_threads())
        tf, tg = best_ms(fused, 1), best_ms(step, 1)
        for _ in range(args.reps):  # interleaved: the machine's load reaches both
            tf, tg = min(tf, best_ms(fused, 1)), min(tg, best_ms(step, 1))
        print(f"fused one-row forward (all of it, {args.context} keys): {tf:.2f} ms; the same "
              f"rounds' {len(mats)} GEMVs: {tg:.2f} ms (ratio {tg / tf:.2f})")  # fmt: skip
    flat = torch.cat([m.reshape(-1) for m in mats])
    big, x = flat[: flat.numel() // h * h].view(-1, h), torch.randn(1, h)
    t1 = best_ms(lambda: torch.nn.functional.linear(x, big), args.reps)
    t2 = best_ms(lambda: flat.sum(), args.reps)
    print(f"one GEMV over the same bytes: {t1:.2f} ms; sum: {t2:.2f} ms ({mb / t2:.1f} GB/s)")


if __name__ == "__main__":
    main()

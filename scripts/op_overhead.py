"""Per-call host overhead of the small ops at batch 1: each ``kernels.ops`` call (and the CPU
decode kernel's wrapper) against its numba kernel called alone on ready numpy arrays.

One token row at the shapes of a bundled model's config (hidden, heads, head_dim, MLP width,
vocabulary), float32, one thread; each figure is the minimum over repeats of the calling
thread's CPU time per call (``time.thread_time``: time the thread waits for a core on a shared
machine is left out, its cache misses are not). A one-off measuring tool, not a benchmark; it
runs on older trees too (``PYTHONPATH=/other/src``), which is how docs/perf.md's before/after
table was taken.

    PYTHONPATH=src python scripts/op_overhead.py --model xy-tiny
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from pathlib import Path

import numpy as np
import torch

import xyserve
from xyserve.kernels import ops
from xyserve.kernels.cpu import act, argmax, decode, norm, rope, use_cpu_threads
from xyserve.plan.meta_attention import build_decode_plan


def per_call_us(fn, number: int) -> float:
    fn()
    best = min(timeit.repeat(fn, number=number, repeat=7, timer=time.thread_time))
    return best / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="xy-tiny", help="a bundled model's name")
    ap.add_argument("--kv-len", type=int, default=100, help="keys the decode row attends to")
    ap.add_argument("--number", type=int, default=5000, help="calls per repeat")
    args = ap.parse_args()
    torch.set_num_threads(1)
    use_cpu_threads(1)
    cfg = json.loads(
        (Path(xyserve.__file__).parent / "models" / args.model / "config.json").read_text()
    )
    hidden, hq, hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, inter, vocab = cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    bs, blocks = 16, 64

    x, w = torch.randn((1, hidden), generator=gen), torch.randn(hidden, generator=gen)
    gu = torch.randn((1, 2 * inter), generator=gen)
    qkv = torch.randn((1, (hq + 2 * hkv) * d), generator=gen)
    kc, vc = torch.zeros((blocks, bs, hkv, d)), torch.zeros((blocks, bs, hkv, d))
    cos, sin = (
        torch.randn((1, 1, d // 2), generator=gen),
        torch.randn((1, 1, d // 2), generator=gen),
    )
    rotary, slots = ops.StepRotary(cos, sin), torch.tensor([5])
    logits = torch.randn((1, vocab), generator=gen)
    nblk = (args.kv_len + bs - 1) // bs
    plan = build_decode_plan([0], [args.kv_len], [list(range(nblk))], 1)
    q, out = torch.randn((1, hq, d), generator=gen), torch.zeros((1, hq, d))

    eps = np.float32(cfg["rms_norm_eps"])
    x_np, w_np, nout = x.numpy(), w.numpy(), np.empty((1, hidden), np.float32)
    gu_np, aout = gu.numpy(), np.empty((1, inter), np.float32)
    cos2, sin2 = cos.reshape(1, -1).numpy().copy(), sin.reshape(1, -1).numpy().copy()
    qo = np.empty((1, hq, d), np.float32)
    try:  # this tree's kernel reads the 4-D caches
        rope._rope_rows(qkv.numpy(), cos2, sin2, slots.numpy(), qo, kc.numpy(), vc.numpy())
        k_np, v_np = kc.numpy(), vc.numpy()
    except Exception:  # an older tree's: [slots, Hkv, D]
        k_np, v_np = kc.view(-1, hkv, d).numpy(), vc.view(-1, hkv, d).numpy()
    lg_np, gout = logits.numpy(), np.empty(1, np.int64)
    scale = np.float32(d**-0.5)
    p = plan
    rows = [
        (
            "rms_norm",
            lambda: ops.rms_norm(x, w, cfg["rms_norm_eps"]),
            lambda: norm._kernel(x_np, w_np, eps, nout),
        ),
        ("silu_mul", lambda: ops.silu_mul(gu), lambda: act._silu_mul_rows(gu_np, aout)),
        (
            "rope_and_cache",
            lambda: ops.rope_and_cache(qkv, rotary, slots, kc, vc),
            lambda: rope._rope_rows(qkv.numpy(), cos2, sin2, slots.numpy(), qo, k_np, v_np),
        ),
        (
            "decode attention (run_decode)",
            lambda: decode.run_decode(plan, q, kc, vc, float(scale), out),
            lambda: decode._decode_kernel(
                q.numpy(),
                kc.numpy(),
                vc.numpy(),
                p.tables,
                p.kv_lens,
                p.q_rows,
                p.worker_offsets,
                scale,
                out.numpy(),
            ),
        ),
        (
            "greedy_ids (1 row: torch argmax)",
            lambda: ops.greedy_ids(logits),
            lambda: argmax._row_kernel(lg_np, gout),
        ),
    ]
    print(f"{args.model}: one row, float32, one thread; us per call (thread CPU time, min of 7)")
    print(f"{'op':34s} {'wrapper':>8s} {'kernel':>8s} {'overhead':>9s}")
    for name, wrapped, kernel in rows:
        a, b = per_call_us(wrapped, args.number), per_call_us(kernel, args.number)
        print(f"{name:34s} {a:8.2f} {b:8.2f} {a - b:9.2f}")


if __name__ == "__main__":
    main()

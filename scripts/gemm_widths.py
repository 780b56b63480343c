"""One-off: the numba GEMM tile at each vector width this CPU runs, against F.linear.

    PYTHONPATH=src python scripts/gemm_widths.py [--threads 2] [--rounds 7]

Times ``cpu_gemm.linear`` at every width of ``cpu_isa.host_widths()`` and ``F.linear`` on the
~100M bench model's decode shapes (cold weights, as ``xyserve tune`` times them), interleaved in
blocks of about 10 ms, and prints each one's median per-round time ratio to ``F.linear``.
Not a test: the figures it prints go to docs/perf.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from xyserve.kernels.cpu import gemm as cpu_gemm
from xyserve.kernels.cpu.isa import host_widths
from xyserve.kernels.cpu.timing import block_time, calls_for, paired_ratio
from xyserve.plan.machine import cpu_signature
from xyserve.tools.tune import cold_copies

SHAPES = {  # (N, K) of the ~100M bench model (llama-100m.json), lm_head at vocab 600 and 32000
    "qkv": (1280, 768),
    "o_proj": (768, 768),
    "gate_up": (4096, 768),
    "down": (768, 2048),
    "lm_head600": (600, 768),
    "lm_head32k": (32000, 768),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = host_widths()
    print(f"machine: {cpu_signature().describe()}; widths {widths}; {args.threads} threads")
    print(f"{'op':<12}{'M':>4}" + "".join(f"{'w' + str(w):>8}" for w in widths) + f"{'GF/s':>8}")
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for (op, (n, k)), m in itertools.product(SHAPES.items(), args.ms):
            ws = cold_copies(torch.randn((n, k), generator=gen))
            x = torch.randn((m, k), generator=gen)
            nxt = itertools.cycle(ws).__next__
            fns = {"ref": lambda x=x, nxt=nxt: F.linear(x, nxt())}
            for w in widths:
                fns[w] = lambda w=w, x=x, nxt=nxt: cpu_gemm.linear(x, nxt(), None, args.threads, w)
            calls = calls_for(fns["ref"])
            samples = {key: [] for key in fns}
            for _ in range(args.rounds):
                for key, fn in fns.items():
                    samples[key].append(block_time(fn, calls))
            ratios = [paired_ratio(samples[w], samples["ref"]) for w in widths]
            best = min(min(samples[w]) for w in widths)
            gf = 2 * m * n * k / best / 1e9
            print(f"{op:<12}{m:>4}" + "".join(f"{r:>8.2f}" for r in ratios) + f"{gf:>8.1f}")


if __name__ == "__main__":
    main()

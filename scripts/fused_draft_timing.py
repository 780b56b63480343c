"""Time one fused draft pass (``kernels.cpu.fused_forward``) on the bundled draft's weights.

Rows are one-token rows of separate requests at position 20 (the proposal passes of a batch);
variants: the serial compilation with float32 weights, with bfloat16-bit weights (the default
for the bfloat16 draft checkpoint), and the parallel (``prange``) compilation. Each figure is
the minimum over repeats of the wall time per call (on a shared machine, other load only
adds). A one-off measuring tool behind docs/perf.md's "Fused draft forward and trees", not a
benchmark.

    PYTHONPATH=src python scripts/fused_draft_timing.py [--rows 1,4,16,64]
"""

from __future__ import annotations

import argparse
import time

import torch

from xyserve.kernels.cpu import fused_forward as ff
from xyserve.model.loader import load_model
from xyserve.models import DEFAULT_DRAFT_MODEL, resolve_model
from xyserve.spec.draft_forward import FusedDraft


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,4,16,64")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    model = load_model(resolve_model(DEFAULT_DRAFT_MODEL), torch.device("cpu"), torch.float32)
    drafts = {"f32": FusedDraft(model, 256, 16, False), "bf16": FusedDraft(model, 256, 16)}
    variants = [("serial f32", "f32", False), ("serial bf16", "bf16", False)]
    variants.append(("parallel bf16", "bf16", True))
    print(f"{'rows':>5} " + " ".join(f"{name + ' (us)':>20}" for name, _, _ in variants))
    for n in [int(x) for x in args.rows.split(",")]:
        best = {}
        for _ in range(args.repeats):
            for name, w, parallel in variants:
                d = drafts[w]
                b = d.builder()
                for i in range(n):
                    b.causal(b.add_table([2 * i, 2 * i + 1]), [5], 20)
                rows = b.rows()
                ff.forward(d.weights, d.k_cache, d.v_cache, rows, parallel)
                calls = max(5, 200 // n)
                t0 = time.perf_counter()
                for _ in range(calls):
                    ff.forward(d.weights, d.k_cache, d.v_cache, rows, parallel)
                us = (time.perf_counter() - t0) / calls * 1e6
                best[name] = min(best.get(name, us), us)
        print(f"{n:>5} " + " ".join(f"{best[name]:>20.1f}" for name, _, _ in variants))


if __name__ == "__main__":
    main()

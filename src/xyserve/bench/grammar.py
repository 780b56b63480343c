"""``xyserve bench grammar``: decode throughput with structured-output masks against none.

The same batch of requests (same prompts, seeds, ``max_tokens``, ``ignore_eos``) runs on one
engine without a constraint and with each constraint kind; rounds interleave the variants and
the best run of each counts. Constraints that never end (an unbounded regex, any JSON object
cut at ``max_tokens``) keep the token count equal across variants, so tok/s compare directly.
Grammars are compiled before the timed region (the server compiles them off the engine
thread); the timed region is the engine loop: matcher creation, mask filling and application.
"""

from __future__ import annotations

import argparse
import time

from tqdm.auto import tqdm

from xyserve.config import EngineConfig
from xyserve.sampling_params import SamplingParams

VARIANTS: dict[str, tuple[str, object] | None] = {
    "none": None,
    "regex": ("regex", "[a-zA-Z0-9 ,.]*"),
    "json_object": ("json_object", None),
}


def run_once(engine, prompts: list[str], params: list[SamplingParams]) -> tuple[float, int]:  # noqa: ANN001
    t0 = time.perf_counter()
    for p, sp in zip(prompts, params):
        engine.add_request(p, sp)
    tokens = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                tokens += sum(len(c.token_ids) for c in out.outputs)
    return time.perf_counter() - t0, tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xyserve bench grammar", description=__doc__)
    ap.add_argument("--model", default=None, help="model directory or bundled name")
    ap.add_argument("--batch", type=int, default=16, help="concurrent requests")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.batch < 1 or args.max_tokens < 1:
        ap.error("--rounds, --batch and --max-tokens must be at least 1")
    from xyserve.engine.engine import LLMEngine

    try:  # a model the engine refuses: a usage error, not a traceback
        engine = LLMEngine(EngineConfig(model=args.model, device="cpu"))
    except (OSError, ValueError) as e:
        ap.error(str(e))
    prompts = [f"Request {i}: write something about the number {i}." for i in range(args.batch)]
    specs = {
        name: None if v is None else engine.intake.compile_grammar(*v)
        for name, v in VARIANTS.items()
    }

    def params(name: str) -> list[SamplingParams]:
        out = []
        for i in range(args.batch):
            sp = SamplingParams(
                temperature=1.0, seed=i, max_tokens=args.max_tokens, ignore_eos=True
            )
            sp.structured = specs[name]
            out.append(sp)
        return out

    run_once(engine, prompts[:2], params("regex")[:2])  # warm-up: kernels, llguidance
    best: dict[str, tuple[float, int]] = {}
    names = list(VARIANTS)
    for r in tqdm(range(args.rounds), desc="rounds"):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            secs, toks = run_once(engine, prompts, params(name))
            if name not in best or secs < best[name][0]:
                best[name] = (secs, toks)
    base = best["none"][1] / best["none"][0]
    print(f"batch={args.batch} max_tokens={args.max_tokens} rounds={args.rounds} (best run)")
    print(f"{'variant':<12} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'vs none':>8}")
    for name in names:
        secs, toks = best[name]
        rate = toks / secs
        print(f"{name:<12} {toks:>7} {secs:>8.3f} {rate:>8.1f} {rate / base:>8.3f}")
    print_mask_costs(specs, args.batch, engine.model.cfg.vocab_size)
    return 0


def print_mask_costs(specs: dict, batch: int, vocab: int, repeats: int = 50) -> None:
    """The masks alone: filling them for ``batch`` fresh matchers and applying them (best of
    ``repeats``), the part of a step that structured outputs add."""
    import torch

    from xyserve.engine.structured import fill_masks

    print(f"masks alone, {batch} rows x {vocab} tokens, best of {repeats}:")
    logits = torch.randn(batch, vocab)
    for name, spec in specs.items():
        if spec is None:
            continue
        matchers = [spec.new_matcher() for _ in range(batch)]
        fill = apply = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            allowed = fill_masks(matchers, vocab)
            t1 = time.perf_counter()
            logits.masked_fill(~allowed, float("-inf"))
            t2 = time.perf_counter()
            fill, apply = min(fill, t1 - t0), min(apply, t2 - t1)
        print(f"{name:<12} fill {fill * 1e3:.3f} ms  apply {apply * 1e3:.3f} ms")

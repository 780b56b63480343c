"""The systems ``bench offline`` compares, each timed on the same workload: xyserve (hybrid or
baseline policy), HF transformers in static batches, and llama.cpp; their greedy tokens checked
against HF's before any timing; and the fresh process each run gets."""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from xyserve.bench.offline_workload import Workload

PEERS = ("hf", "llama.cpp")
CHECK_PROMPTS = 2  # prompts and output tokens compared with HF's before timing
CHECK_TOKENS = 16


def run_xyserve(model: Path, work: Workload, policy: str, engine_args: dict) -> float:
    from xyserve import LLM, SamplingParams

    llm = LLM(str(model), scheduler_policy=policy, skip_tokenizer_init=True, **engine_args)
    params = [
        SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for o in work.output_lens
    ]
    prompts = [{"prompt_token_ids": p} for p in work.prompts]
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t
    got = sum(len(o.outputs[0].token_ids) for o in outs)
    assert got == work.num_output_tokens, (got, work.num_output_tokens)
    del llm
    gc.collect()
    return elapsed


def run_hf(
    model: Path,
    work: Workload,
    batch_size: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """HF ``generate`` in static batches: each runs until its longest request is done."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype).eval().to(device)
    t = time.perf_counter()
    for i in tqdm(
        range(0, len(work.prompts), batch_size), desc=f"HF static batches of {batch_size}"
    ):
        batch = work.prompts[i : i + batch_size]
        new = max(work.output_lens[i : i + batch_size])
        width = max(len(p) for p in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(batch):  # left padding, as HF recommends for generation
            ids[j, width - len(p) :] = torch.tensor(p)
            mask[j, width - len(p) :] = 1
        with torch.inference_mode():
            m.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    del m
    gc.collect()
    return elapsed


def run_llama_cpp(gguf: Path, work: Workload, batch_size: int) -> float:
    from xyserve.bench.peers.llama_cpp import run_llama_cpp as run

    return run(gguf, work.prompts, work.output_lens, batch_size, torch.get_num_threads())


def tune_if_needed(model: Path, budget: int) -> None:
    """SmoothGEMM is tuned offline per model (paper §6.3); do it once, as a deployment would."""
    from xyserve.plan.gemm_table import OPS, find_table
    from xyserve.tools import tune

    if find_table(model, "cpu") is None:
        tune.main(
            ["--model", str(model), "--budget", str(budget), "--device", "cpu", "--ops", *OPS]
        )


# ---- each run in a fresh process ------------------------------------------------------------


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def isolated(threads: int | None, fn: Callable[..., float], *args: object) -> float:
    """``fn(*args)`` in a fresh spawned process with ``threads`` torch threads."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=_set_threads, initargs=(threads,)
    ) as pool:
        return pool.submit(fn, *args).result()


def round_order(names: list[str], r: int) -> list[str]:
    """The systems' order in round ``r``: the list rotated by r."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


# ---- the greedy check -----------------------------------------------------------------------


def greedy_hf(model: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """HF's greedy continuations, one prompt at a time (no padding): the reference."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            g = m.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            outs.append(g[0, len(p) :].tolist())
    return outs


def greedy_xyserve(
    model: Path, prompts: list[list[int]], new_tokens: int, engine_args: dict
) -> list[list[int]]:
    from xyserve import LLM, SamplingParams

    llm = LLM(str(model), skip_tokenizer_init=True, **engine_args)
    sp = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def greedy_llama_cpp(gguf: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from xyserve.bench.peers.llama_cpp import LlamaCpp

    llm = LlamaCpp(gguf, len(prompts), max(map(len, prompts)) + new_tokens, torch.get_num_threads())
    try:
        return llm.greedy(prompts, new_tokens)
    finally:
        llm.close()


def first_mismatch(got: list[list[int]], ref: list[list[int]]) -> str | None:
    """Where ``got`` first differs from ``ref`` (prompt, token), or None."""
    for i, (a, b) in enumerate(zip(got, ref)):
        for j, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"prompt {i}, output token {j}: {x} against HF's {y}"
        if len(a) != len(b):
            return f"prompt {i}: {len(a)} tokens against HF's {len(b)}"
    return None


def check_greedy(
    model: Path, work: Workload, engine_args: dict, gguf: Path | None, threads: int | None
) -> None:
    """xyserve's (and llama.cpp's) greedy tokens equal HF's on the first prompts, or the bench
    stops: timing systems that compute something else would compare nothing. Each in a fresh
    process, like the timed runs."""
    prompts = work.prompts[:CHECK_PROMPTS]
    n = min(CHECK_TOKENS, min(work.output_lens))
    ref = isolated(threads, greedy_hf, model, prompts, n)
    others = {"xyserve": isolated(threads, greedy_xyserve, model, prompts, n, engine_args)}
    if gguf is not None:
        others["llama.cpp"] = isolated(threads, greedy_llama_cpp, gguf, prompts, n)
    for name, got in others.items():
        if where := first_mismatch(got, ref):
            raise SystemExit(
                f"bench offline: {name}'s greedy tokens differ from HF's ({where}); not timing "
                f"(--no-check skips this check)"
            )
    print(f"greedy check: {', '.join(others)} equal HF on {len(prompts)} prompts x {n} tokens")

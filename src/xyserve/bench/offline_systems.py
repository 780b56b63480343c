"""The systems ``bench offline`` compares, each timed on the same workload: xyserve (hybrid or
baseline policy), HF transformers in static batches, and llama.cpp; their greedy tokens checked
against HF's before any timing; and the fresh process each run gets."""

from __future__ import annotations

import concurrent.futures
import gc
import json
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


def run_llama_cpp(gguf: Path, work: Workload, batch_size: int, kv_dtype: str = "float32") -> float:
    from xyserve.bench.peers.llama_cpp import run_llama_cpp as run

    threads = torch.get_num_threads()
    return run(gguf, work.prompts, work.output_lens, batch_size, threads, kv_dtype)


def gemm_table(model: Path, budget: int, dtype: str = "float32", tune: bool = True) -> dict:
    """The SmoothGEMM table the xyserve runs will use, described for the report.

    SmoothGEMM is tuned offline per model (paper §6.3): with ``tune``, a model without a full
    table of this machine at ``dtype`` (none, or one that is quick, lacks an op, or stops short
    of ``budget``'s buckets, such as the first-start table) is tuned in full first, as a
    deployment would. Without it the table is used as found, and the description says what it
    lacks; where there is none and the engines would tune their first start
    (``XYSERVE_GEMM_AUTOTUNE=quick``), that quick tune is done here, once, so every run shares it.
    """
    from xyserve.kernels.gemm.smooth import autotune_mode
    from xyserve.plan.gemm_table import OPS, Precision, find_table, model_shapes
    from xyserve.tools import tune as tuner

    precision = Precision(dtype)
    shapes = model_shapes(json.loads((model / "config.json").read_text()))
    table = find_table(model, "cpu", precision)
    gaps = ["no table for this machine"] if table is None else table.gaps(shapes, budget)
    if table is not None and table.quick:
        gaps.insert(0, "a quick (first-start) table")
    tuned_now = False
    if gaps and tune:
        print(f"bench offline: tuning SmoothGEMM for {model} ({'; '.join(gaps)})")
        args = ["--model", str(model), "--budget", str(budget), "--device", "cpu"]
        if tuner.main([*args, "--dtype", dtype, "--ops", *OPS]) != 0:
            raise SystemExit("bench offline: the SmoothGEMM tune failed (--no-tune skips it)")
        table, tuned_now = find_table(model, "cpu", precision), True
    elif table is None and autotune_mode() == "quick":
        table = tuner.quick_tune(model, "cpu", precision=precision)
        tuned_now = True
    info: dict = {"source": None, "kind": "none", "tuned_now": tuned_now, "dtype": dtype}
    if table is None:
        info["lacks"] = ["no table for this machine"]
        info["text"] = f"none for this machine in {dtype}: SmoothGEMM defaults (F.linear)"
        return info
    lacks = table.gaps(shapes, budget)
    kind = "quick" if table.quick else "full" if not lacks else "partial"
    info |= {"source": table.source or None, "kind": kind, "budget": table.budget}
    info |= {"machine": table.machine.describe() if table.machine else None, "lacks": lacks}
    where = table.source or "the cache folder (not written: see the warning)"
    info["text"] = (
        f"{where} ({kind}, budget {table.budget}, {dtype}, tuned on this machine"
        f"{', just now' if tuned_now else ''})"
        + (f"; untuned shapes run the defaults: {'; '.join(lacks)}" if lacks else "")
    )
    return info


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


def greedy_llama_cpp(
    gguf: Path, prompts: list[list[int]], new_tokens: int, kv_dtype: str = "float32"
) -> list[list[int]]:
    from xyserve.bench.peers.llama_cpp import LlamaCpp

    max_len = max(map(len, prompts)) + new_tokens
    llm = LlamaCpp(gguf, len(prompts), max_len, torch.get_num_threads(), kv_dtype=kv_dtype)
    try:
        return llm.greedy(prompts, new_tokens)
    finally:
        llm.close()


def first_mismatch(got: list[list[int]], ref: list[list[int]]) -> str | None:
    """Where ``got`` first differs from ``ref`` (prompt, token, or a prompt not answered),
    or None."""
    if len(got) != len(ref):  # zip would compare the answered prompts only, and pass
        return f"{len(got)} prompts answered of {len(ref)}"
    for i, (a, b) in enumerate(zip(got, ref)):
        for j, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"prompt {i}, output token {j}: {x} against HF's {y}"
        if len(a) != len(b):
            return f"prompt {i}: {len(a)} tokens against HF's {len(b)}"
    return None


# bfloat16: systems one bfloat16 rounding apart may pick different tokens among near-ties, so
# each token a system picked must be within this share of the row's largest |logit| of HF's best
# logit there (HF in bfloat16, along the system's own tokens). 2^-5 is 4-8 bfloat16 ulps.
BF16_CHECK_REL_TOL = 2**-5


def hf_logits_along(
    model: Path, prompts: list[list[int]], outs: list[list[int]], dtype: torch.dtype
) -> list[torch.Tensor]:
    """HF's logits (float32, [len(out), vocab]) at each output position of ``prompt + out``."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype).eval()
    rows = []
    with torch.inference_mode():
        for p, o in zip(prompts, outs):
            logits = m(torch.tensor([p + o])).logits[0].float()
            rows.append(logits[len(p) - 1 : len(p) - 1 + len(o)])
    return rows


def first_off_greedy(
    outs: list[list[int]], logits: list[torch.Tensor], rel: float, new_tokens: int, prompts: int
) -> str | None:
    """Where a token of ``outs`` is further than ``rel`` (of the row's largest |logit|) below
    the best of HF's ``logits`` there (``hf_logits_along``), or where ``outs`` does not hold
    ``new_tokens`` tokens for each of the ``prompts`` prompts; None if neither."""
    if len(outs) != prompts:
        return f"{len(outs)} prompts answered of {prompts}"
    for i, (o, lg) in enumerate(zip(outs, logits)):
        if len(o) != new_tokens:
            return f"prompt {i}: {len(o)} tokens against the {new_tokens} asked"
        for j, t in enumerate(o):
            if not 0 <= t < lg.shape[1]:
                return f"prompt {i}, output token {j}: {t} is no token id"
            best, tol = float(lg[j].max()), rel * float(lg[j].abs().max())
            if float(lg[j, t]) < best - tol:
                return f"prompt {i}, output token {j}: {t} is {best - float(lg[j, t]):.3g} below"
    return None


def check_greedy(
    model: Path,
    work: Workload,
    engine_args: dict,
    gguf: Path | None,
    threads: int | None,
    dtype: str = "float32",
) -> None:
    """xyserve's (and llama.cpp's) greedy tokens equal HF's on the first prompts, or the bench
    stops: timing systems that compute something else would compare nothing. Each in a fresh
    process, like the timed runs. In bfloat16, where near-ties may go either way, each token
    must instead be HF's greedy choice up to ``BF16_CHECK_REL_TOL`` (HF along its tokens)."""
    prompts = work.prompts[:CHECK_PROMPTS]
    n = min(CHECK_TOKENS, min(work.output_lens))
    others = {"xyserve": isolated(threads, greedy_xyserve, model, prompts, n, engine_args)}
    if gguf is not None:
        # K/V as the weights
        others["llama.cpp"] = isolated(threads, greedy_llama_cpp, gguf, prompts, n, dtype)
    if dtype == "float32":
        ref = isolated(threads, greedy_hf, model, prompts, n)
        wrong = {name: first_mismatch(got, ref) for name, got in others.items()}
        agree = "equal HF"
    else:
        tdtype = getattr(torch, dtype)
        wrong = {
            name: first_off_greedy(
                got,
                isolated(threads, hf_logits_along, model, prompts, got, tdtype),
                BF16_CHECK_REL_TOL,
                n,
                len(prompts),
            )
            for name, got in others.items()
        }
        agree = f"follow HF's {dtype} greedy choice (to {BF16_CHECK_REL_TOL:g} of |logit|)"
    for name, where in wrong.items():
        if where:
            raise SystemExit(
                f"bench offline: {name}'s greedy tokens differ from HF's ({where}); not timing "
                f"(--no-check skips this check)"
            )
    print(f"greedy check: {', '.join(others)} {agree} on {len(prompts)} prompts x {n} tokens")

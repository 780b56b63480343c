"""``xyserve bench offline``: hybrid vs baseline scheduling vs peers (HF transformers,
llama.cpp), side by side.

All three run the same prompts (token ids) with greedy decoding and fixed output lengths
(``ignore_eos``), one after the other, each run in a fresh (spawned) process unless
``--in-process``: in one process, xyserve ran 6% slower after an HF run than before it
(one-off: 31.6-32.7 s against 29.9-30.3 s), from state that one system leaves to the next.
HF transformers uses static batches: each batch runs until its longest request is done, which
is the cost continuous batching removes.
"Model GFLOP/s" divides the workload's model FLOPs (every prompt and output token once, linear
layers plus attention) by wall time, so the figures share a numerator; the matmul peak is
measured in the same run, and the roof is the output tok/s that the workload's linear-layer
FLOPs alone allow at that peak. llama.cpp (``--peers hf,llama.cpp``) runs the same weights
converted to an F32 GGUF (``peers.gguf_export``); before any timing, its greedy tokens and
xyserve's are compared with HF's on the first prompts, and a mismatch stops the bench.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import multiprocessing
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from xyserve.plan.machine import cpu_signature

WORKLOAD_SCHEMA = "xyserve.offline-workload/1"


@dataclass
class Workload:
    name: str
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


def packaged(kind: str, name: str) -> Path:
    return Path(str(resources.files("xyserve.bench") / kind / name))


def load_workload(path: str | Path, vocab_size: int, seed: int = 0, limit: int | None = None):
    path = Path(path)
    if not path.is_file():
        path = packaged("workloads", str(path))
    data = json.loads(path.read_text())
    if data.get("schema") != WORKLOAD_SCHEMA:
        raise ValueError(f"{path}: schema must be {WORKLOAD_SCHEMA!r}, got {data.get('schema')!r}")
    rng = random.Random(seed)
    plen = int(data.get("shared_prefix_len", 0))
    prefixes: dict = {}
    prompts, outs = [], []
    for i, r in enumerate(data["requests"][:limit]):
        n, o = int(r["prompt_len"]), int(r["output_len"])
        if n < 1 or o < 1:
            raise ValueError(f"{path}: request {i}: prompt_len and output_len must be >= 1")
        g = r.get("prefix_group")
        head: list[int] = []
        if g is not None and plen:
            head = prefixes.setdefault(g, [rng.randrange(3, vocab_size) for _ in range(plen)])
            head = head[: max(0, n - 1)]
        prompts.append(head + [rng.randrange(3, vocab_size) for _ in range(n - len(head))])
        outs.append(o)
    return Workload(data.get("name", path.stem), prompts, outs)


def matmul_peak_gflops(n: int = 1024, reps: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def linear_flops(cfg: dict, work: Workload) -> float:
    """FLOPs of the linear layers: every prompt and output token once, lm_head per output."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // heads
    kvh = cfg.get("num_key_value_heads") or heads
    per_tok = 2 * layers * (h * (heads + 2 * kvh) * d + heads * d * h + 3 * h * inter)
    total = 0.0
    for p, o in zip(work.prompts, work.output_lens):
        total += per_tok * (len(p) + o) + 2 * h * cfg["vocab_size"] * o
    return total


def model_flops(cfg: dict, work: Workload) -> float:
    """Linear layers plus attention (QK^T and PV, causal)."""
    heads, layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // heads
    total = linear_flops(cfg, work)
    for p, o in zip(work.prompts, work.output_lens):
        n = len(p) + o
        total += layers * 4 * heads * d * (n * (n + 1) / 2)
    return total


def build_random_model(config_file: Path, out: Path, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads(config_file.read_text())
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    model.save_pretrained(str(out))
    return out


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


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def round_order(names: list[str], r: int) -> list[str]:
    """The systems' order in round ``r``: the list rotated by r."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def _isolated(threads: int | None, fn: Callable[..., float], *args: object) -> float:
    """``fn(*args)`` in a fresh spawned process with ``threads`` torch threads."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=_set_threads, initargs=(threads,)
    ) as pool:
        return pool.submit(fn, *args).result()


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


def run_llama_cpp(gguf: Path, work: Workload, batch_size: int) -> float:
    from xyserve.bench.peers.llama_cpp import run_llama_cpp as run

    return run(gguf, work.prompts, work.output_lens, batch_size, torch.get_num_threads())


def first_mismatch(got: list[list[int]], ref: list[list[int]]) -> str | None:
    """Where ``got`` first differs from ``ref`` (prompt, token), or None."""
    for i, (a, b) in enumerate(zip(got, ref)):
        for j, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"prompt {i}, output token {j}: {x} against HF's {y}"
        if len(a) != len(b):
            return f"prompt {i}: {len(a)} tokens against HF's {len(b)}"
    return None


def run_hf(
    model: Path,
    work: Workload,
    batch_size: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
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


def _tune_if_needed(model: Path, budget: int) -> None:
    """SmoothGEMM is tuned offline per model (paper §6.3); do it once, as a deployment would."""
    from xyserve.plan.gemm_table import OPS, find_table
    from xyserve.tools import tune

    if find_table(model, "cpu") is None:
        tune.main(
            ["--model", str(model), "--budget", str(budget), "--device", "cpu", "--ops", *OPS]
        )


PEERS = ("hf", "llama.cpp")
CHECK_PROMPTS = 2  # prompts and output tokens compared with HF's before timing
CHECK_TOKENS = 16


def check_greedy(
    model: Path, work: Workload, engine_args: dict, gguf: Path | None, threads: int | None
) -> None:
    """xyserve's (and llama.cpp's) greedy tokens equal HF's on the first prompts, or the bench
    stops: timing systems that compute something else would compare nothing. Each in a fresh
    process, like the timed runs."""
    prompts = work.prompts[:CHECK_PROMPTS]
    n = min(CHECK_TOKENS, min(work.output_lens))
    ref = _isolated(threads, greedy_hf, model, prompts, n)
    others = {"xyserve": _isolated(threads, greedy_xyserve, model, prompts, n, engine_args)}
    if gguf is not None:
        others["llama.cpp"] = _isolated(threads, greedy_llama_cpp, gguf, prompts, n)
    for name, got in others.items():
        if where := first_mismatch(got, ref):
            raise SystemExit(
                f"bench offline: {name}'s greedy tokens differ from HF's ({where}); not timing "
                f"(--no-check skips this check)"
            )
    print(f"greedy check: {', '.join(others)} equal HF on {len(prompts)} prompts x {n} tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xyserve bench offline", description=__doc__)
    ap.add_argument(
        "--model", help="HF model directory (default: random weights from --model-config)"
    )
    ap.add_argument("--model-config", default="llama-100m.json", help="config for random weights")
    ap.add_argument("--workload", default="offline_decode_heavy.json")
    ap.add_argument("--num-requests", type=int, default=None, help="use the first N requests")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument(
        "--peers",
        default="hf",
        help="comma-separated peers beside xyserve: hf, llama.cpp (default: hf)",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="requests at a time for every system (xyserve's max_num_seqs, HF's static batch, "
        "llama.cpp's sequences); 1 is single-stream decoding",
    )
    ap.add_argument("--no-prefix-caching", action="store_true", help="xyserve: prefix caching off")
    ap.add_argument(
        "--no-check", action="store_true", help="skip the greedy-token check against HF"
    )
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--attention-backend", default=None)
    ap.add_argument("--gemm-backend", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-tune", action="store_true", help="skip the offline SmoothGEMM tuning of the model"
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs per system; the best counts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for all systems")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run every system in this process, not each run in a fresh one (faster start)",
    )
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if unknown := sorted(set(peers) - set(PEERS)):
        ap.error(f"--peers: unknown {unknown}; choose from {list(PEERS)}")
    if args.skip_hf and "hf" in peers:
        peers.remove("hf")
    if args.batch_size is not None and args.batch_size < 1:
        ap.error("--batch-size must be at least 1")
    if "llama.cpp" in peers:
        from xyserve.bench.peers.llama_cpp import available

        if not available():
            ap.error("--peers llama.cpp needs llama-cpp-python: pip install -e '.[llama-cpp]'")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            cfg_file = Path(args.model_config)
            if not cfg_file.is_file():
                cfg_file = packaged("models", args.model_config)
            model = build_random_model(cfg_file, Path(tmp) / "model", args.seed)
        cfg = json.loads((model / "config.json").read_text())
        work = load_workload(args.workload, cfg["vocab_size"], args.seed, args.num_requests)
        engine_args: dict = dict(
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_num_seqs=args.batch_size or args.max_num_seqs,
        )
        if args.no_prefix_caching:
            engine_args["enable_prefix_caching"] = False
        if args.attention_backend:
            engine_args["attention_backend"] = args.attention_backend
        if args.gemm_backend:
            engine_args["gemm_backend"] = args.gemm_backend
        if not args.no_tune and args.gemm_backend in (None, "smooth"):
            _tune_if_needed(model, args.max_num_batched_tokens)
        flops = model_flops(cfg, work)
        gguf = None
        if "llama.cpp" in peers:
            from xyserve.bench.peers.gguf_export import export_gguf

            gguf = export_gguf(model, Path(tmp) / "model.gguf")
        if not args.no_check:
            check_greedy(model, work, engine_args, gguf, args.threads)
        runs: dict[str, tuple] = {
            "xyserve-hybrid": (run_xyserve, model, work, "hybrid", engine_args)
        }
        if not args.skip_baseline:
            runs["xyserve-baseline"] = (run_xyserve, model, work, "baseline", engine_args)
        hf_batch = args.batch_size or args.hf_batch_size
        if "hf" in peers:
            runs[f"hf-static-b{hf_batch}"] = (run_hf, model, work, hf_batch)
        if gguf is not None:
            llama_batch = args.batch_size or len(work.prompts)
            runs[f"llama.cpp-b{llama_batch}"] = (run_llama_cpp, gguf, work, llama_batch)
        # Rounds interleave the systems and keep each one's best: the first run of any shape
        # pays one-off kernel set-up, and a shared machine only ever adds time. Each round
        # starts one system later, so that no system always runs in the same slot.
        times: dict[str, float] = {}
        round_seconds: dict[str, list[float]] = {name: [] for name in runs}
        peak = 0.0
        for r in range(args.rounds):
            peak = max(peak, matmul_peak_gflops())  # measured each round too, the best kept
            for name in round_order(list(runs), r):
                fn, *fn_args = runs[name]
                t = fn(*fn_args) if args.in_process else _isolated(args.threads, fn, *fn_args)
                times[name] = min(times.get(name, float("inf")), t)
                round_seconds[name].append(t)
        times = {name: times[name] for name in runs}  # report in the usual order

    n_req, n_out = len(work.prompts), work.num_output_tokens
    ref = next((k for k in times if k.startswith("hf")), None)
    roof = n_out * peak * 1e9 / linear_flops(cfg, work)
    machine = cpu_signature()
    rows = {}
    print(
        f"\nmachine: {machine.describe()}; {torch.get_num_threads()} torch threads; "
        f"matmul peak {peak:.1f} GFLOP/s (measured now)\n"
        f"workload {work.name}: {n_req} requests, {sum(map(len, work.prompts))} prompt tokens, "
        f"{n_out} output tokens; fp32 roof {roof:.1f} output tok/s (linear-layer FLOPs at the "
        f"peak)"
    )
    print(
        f"{'system':<20}{'req/s':>8}{'out tok/s':>11}{'GFLOP/s':>9}{'% peak':>8}{'% roof':>8}"
        f"{'vs HF':>8}"
    )
    for name, t in times.items():
        gf = flops / t / 1e9
        row = {
            "seconds": t,
            "requests_per_s": n_req / t,
            "output_tokens_per_s": n_out / t,
            "model_gflops": gf,
            "fraction_of_peak": gf / peak,
            "fraction_of_roof": n_out / t / roof,
        }
        if ref:
            row["speedup_vs_hf"] = times[ref] / t
        rows[name] = row
        vs = f"{row['speedup_vs_hf']:.2f}x" if ref else "-"
        print(
            f"{name:<20}{row['requests_per_s']:>8.2f}{row['output_tokens_per_s']:>11.1f}"
            f"{gf:>9.1f}{100 * gf / peak:>7.1f}%{100 * row['fraction_of_roof']:>7.1f}%{vs:>8}"
        )
    if llama := next((k for k in times if k.startswith("llama.cpp")), None):
        print(f"xyserve-hybrid vs llama.cpp: {times[llama] / times['xyserve-hybrid']:.2f}x")
    if "xyserve-baseline" in times:
        print(f"hybrid vs baseline: {times['xyserve-baseline'] / times['xyserve-hybrid']:.2f}x")
    if args.json:
        result = {
            "workload": work.name,
            "model_config": cfg,
            "matmul_peak_gflops": peak,
            "roof_output_tokens_per_s": roof,
            "machine": machine.to_json(),
            "systems": rows,
            "round_seconds": round_seconds,  # every run, in round order; the best is reported
            "torch_threads": torch.get_num_threads(),
        }
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``xyserve bench offline``: hybrid vs baseline scheduling vs peers (HF transformers,
llama.cpp), side by side.

All three run the same prompts (token ids) with greedy decoding and fixed output lengths
(``ignore_eos``), one after the other, each run in a fresh (spawned) process unless
``--in-process``: in one process, state that one system leaves behind can slow the next.
HF transformers uses static batches: each batch runs until its longest request is done, which
is the cost continuous batching removes.
"Model GFLOP/s" divides the workload's model FLOPs (every prompt and output token once, linear
layers plus attention) by wall time, so the figures share a numerator; the matmul peak is
measured in the same run, and the roof is the output tok/s that the workload's linear-layer
FLOPs alone allow at that peak. llama.cpp (``--peers hf,llama.cpp``) runs the same weights
converted to an F32 GGUF (``peers.gguf_export``); before any timing, its greedy tokens and
xyserve's are compared with HF's on the first prompts, and a mismatch stops the bench.
``--dtype bfloat16`` runs every system in bfloat16 (HF and xyserve on torch's bfloat16 GEMMs,
oneDNN on AMX or AVX-512 BF16 where the CPU has them; llama.cpp on a BF16 GGUF with BF16 K/V);
the peak and the roof are then bfloat16's, and the check allows near-ties to go either way.
xyserve's SmoothGEMM table is tuned in full first where this machine has none, or only a quick
(first-start) or partial one (``--no-tune`` uses it as found); the report names the table the
runs used: its file, full, quick or partial, and what it lacks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from xyserve.bench.offline_report import matmul_peak_gflops, report
from xyserve.bench.offline_systems import (
    PEERS,
    check_greedy,
    gemm_table,
    isolated,
    round_order,
    run_hf,
    run_llama_cpp,
    run_xyserve,
)
from xyserve.bench.offline_workload import (
    build_random_model,
    find,
    load_workload,
    read_workload,
)
from xyserve.output_files import output_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="xyserve bench offline", description=__doc__)
    ap.add_argument(
        "--model", help="HF model directory (default: random weights from --model-config)"
    )
    ap.add_argument(
        "--model-config", default=None, help="config for random weights (default llama-100m.json)"
    )
    ap.add_argument("--workload", default="offline_decode_heavy.json")
    ap.add_argument("--num-requests", type=int, default=None, help="use the first N requests")
    ap.add_argument(
        "--hf-batch-size", type=int, default=None, help="HF's static batch (default 16)"
    )
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
    ap.add_argument("--max-num-seqs", type=int, default=None, help="xyserve's (default 64)")
    ap.add_argument("--attention-backend", default=None)
    ap.add_argument("--gemm-backend", default=None)
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="every system's weights, activations and K/V (default float32)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-tune",
        action="store_true",
        help="use the model's SmoothGEMM table as found (quick, partial or none: the report "
        "says which), not tuning what it lacks first",
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs per system; the best counts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for all systems")
    ap.add_argument("--json", type=output_file, help="write the results here")
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
    for flag in (
        "batch_size",
        "hf_batch_size",
        "threads",
        "max_num_batched_tokens",
        "max_num_seqs",
        "num_requests",
    ):
        if (value := getattr(args, flag)) is not None and value < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    # a flag that another overrides, or that no system of the run reads, is refused, not dropped
    if args.batch_size is not None:
        for flag in ("hf_batch_size", "max_num_seqs"):
            if getattr(args, flag) is not None:
                ap.error(f"--batch-size sets every system's batch: --{flag.replace('_', '-')} too")
    if args.hf_batch_size is not None and "hf" not in peers:
        ap.error("--hf-batch-size: HF does not run (no hf in --peers, or --skip-hf)")
    if args.model and args.model_config is not None:
        ap.error("--model-config builds random weights: not with --model")
    args.hf_batch_size = args.hf_batch_size or 16
    args.max_num_seqs = args.max_num_seqs or 64
    args.model_config = args.model_config or "llama-100m.json"
    if "llama.cpp" in peers:
        from xyserve.bench.peers.llama_cpp import available

        if not available():
            ap.error("--peers llama.cpp needs llama-cpp-python: pip install -e '.[llama-cpp]'")
    try:  # the files named: a usage error now, not a traceback after a model is built
        find("workloads", args.workload)
        if args.model and not (Path(args.model) / "config.json").is_file():
            raise FileNotFoundError(f"--model {args.model}: no config.json there")
        cfg_file = None if args.model else find("models", args.model_config)
        # the workload too, against the model's context: before any model is built
        _, _, reqs = read_workload(args.workload, args.num_requests)
        cfg = json.loads((cfg_file or Path(args.model) / "config.json").read_text())
        context = int(cfg.get("max_position_embeddings", 2048))
        for i, (n, o, _) in enumerate(reqs):
            if n + o > context:
                raise ValueError(
                    f"{args.workload}: request {i}: prompt_len {n} + output_len {o} exceeds "
                    f"the model's context ({context} tokens, max_position_embeddings)"
                )
    except (OSError, ValueError) as e:
        ap.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            model = build_random_model(cfg_file, Path(tmp) / "model", args.seed)
        cfg = json.loads((model / "config.json").read_text())
        work = load_workload(args.workload, cfg["vocab_size"], args.seed, args.num_requests)
        engine_args: dict = dict(
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_num_seqs=args.batch_size or args.max_num_seqs,
            dtype=args.dtype,
        )
        if args.no_prefix_caching:
            engine_args["enable_prefix_caching"] = False
        if args.attention_backend:
            engine_args["attention_backend"] = args.attention_backend
        if args.gemm_backend:
            engine_args["gemm_backend"] = args.gemm_backend
        if args.gemm_backend in (None, "smooth"):
            table = gemm_table(model, args.max_num_batched_tokens, args.dtype, not args.no_tune)
            print(f"GEMM table: {table['text']}")
        else:
            table = {"kind": "none", "text": f"none (--gemm-backend {args.gemm_backend})"}
        gguf = None
        if "llama.cpp" in peers:
            from xyserve.bench.peers.gguf_export import export_gguf

            gguf = export_gguf(model, Path(tmp) / "model.gguf", args.dtype)
        if not args.no_check:
            check_greedy(model, work, engine_args, gguf, args.threads, args.dtype)
        dtype = getattr(torch, args.dtype)
        runs: dict[str, tuple] = {
            "xyserve-hybrid": (run_xyserve, model, work, "hybrid", engine_args)
        }
        if not args.skip_baseline:
            runs["xyserve-baseline"] = (run_xyserve, model, work, "baseline", engine_args)
        hf_batch = args.batch_size or args.hf_batch_size
        if "hf" in peers:
            runs[f"hf-static-b{hf_batch}"] = (run_hf, model, work, hf_batch, "cpu", dtype)
        if gguf is not None:
            llama_batch = args.batch_size or len(work.prompts)
            runs[f"llama.cpp-b{llama_batch}"] = (
                run_llama_cpp,
                gguf,
                work,
                llama_batch,
                args.dtype,  # K/V as the weights
            )
        # Rounds interleave the systems and keep each one's best: the first run of any shape
        # pays one-off kernel set-up, and a shared machine only ever adds time. Each round
        # starts one system later, so that no system always runs in the same slot.
        times: dict[str, float] = {}
        round_seconds: dict[str, list[float]] = {name: [] for name in runs}
        peaks: list[float] = []
        for r in range(args.rounds):
            peaks.append(matmul_peak_gflops(dtype=dtype))  # one a round; the report takes the best
            for name in round_order(list(runs), r):
                fn, *fn_args = runs[name]
                t = fn(*fn_args) if args.in_process else isolated(args.threads, fn, *fn_args)
                times[name] = min(times.get(name, float("inf")), t)
                round_seconds[name].append(t)
        times = {name: times[name] for name in runs}  # report in the usual order

    report(cfg, work, peaks, times, round_seconds, args.json, args.dtype, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

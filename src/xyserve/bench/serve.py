"""``xyserve bench serve``: latency and goodput of OpenAI-compatible servers under load.

By default it starts one ``xyserve serve`` per system (``--system NAME=ENGINE_ARGS``, default
hybrid and baseline) on free loopback ports, all before the first run, and sends each load to
each system in turn (the order rotates per load), so that the systems share the machine's
noise. ``--base-url`` measures a running server instead (loopback only).

``--sweep R1,R2,...`` runs every rate and reports, per system, the highest rate up to which
every rate's SLO attainment reaches ``--slo-attainment`` with no failed request, and its ratio
to the ``--reference`` system: the paper's achieved-QPS measure. A rate given more than once is run
that many times (each with its own seeded requests) and judged on all its runs' requests
together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xyserve.bench import arrivals as arr
from xyserve.bench import serve_workload as wl
from xyserve.bench.serve_load import disconnect_plan, run_load, served_model
from xyserve.bench.serve_peers import PEERS
from xyserve.bench.serve_plan import load_inputs, loads
from xyserve.bench.serve_report import (
    RunReport,
    Slo,
    aggregate,
    highest_met,
    json_safe,
    markdown,
    rate_verdicts,
    ratios,
    settled,
    table,
    verdict_lines,
)
from xyserve.bench.serve_server import EndpointError, leak_check
from xyserve.bench.serve_systems import DEFAULT_SYSTEMS, model_config, start_systems, stop_systems
from xyserve.output_files import output_file, write_text

DEFAULT_MODEL = "llama-100m.json"  # bench/models/: a ~100M Llama built with random weights


def _rate(text: str) -> float:
    r = float(text)
    if not r > 0:
        raise argparse.ArgumentTypeError(f"a request rate must be positive or inf, got {text}")
    return r


def _rates(text: str) -> list[float]:
    rates = sorted(_rate(x) for x in text.split(",") if x.strip())
    if not rates:  # "--sweep ," ran the single --request-rate load, as if no sweep were given
        raise argparse.ArgumentTypeError(f"no rate in {text!r}")
    return rates


def _positive(text: str) -> float:
    """A finite number > 0 (a duration, a scale, a timeout, a gamma shape): NaN, inf, zero
    and negatives are usage errors, not a hang (a NaN trace scale drew no arrival and looped
    for ever) nor a silent fallback (a negative --duration meant --min-prompts)."""
    x = float(text)
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return x


def _share(text: str) -> float:
    """A fraction in [0, 1] (NaN refused)."""
    x = float(text)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return x


def _attainment(text: str) -> float:
    """A fraction in (0, 1]: above 1 no rate could ever meet it, at 0 every rate would."""
    x = float(text)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return x


def _count(least: int) -> Callable[[str], int]:
    """An integer at least ``least``."""

    def parse(text: str) -> int:
        n = int(text)
        if n < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {text}")
        return n

    parse.__name__ = f"integer >= {least}"  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xyserve bench serve", description=__doc__.split("\n")[0])
    w = p.add_argument_group("workload and load")
    w.add_argument(
        "--workload",
        default="sharegpt",
        help="a file or packaged name (sharegpt, "
        "sonnet_prefill_heavy, sonnet_decode_heavy, shared_prefix, agentic)",
    )
    w.add_argument(
        "--num-prompts",
        type=_count(1),
        default=None,
        help="requests per run (default 50); with --duration, only an infinite rate's",
    )
    w.add_argument(
        "--duration",
        type=_positive,
        default=None,
        help="per run: rate x duration requests (at least --min-prompts)",
    )
    w.add_argument(
        "--min-prompts", type=_count(1), default=None, help="with --duration (default 8)"
    )
    w.add_argument(
        "--request-rate", type=_rate, default=None, help="req/s; inf: all at once (default 1)"
    )
    w.add_argument(
        "--burstiness",
        type=_positive,
        default=None,
        help="gamma shape (1 = Poisson); default: the workload's",
    )
    w.add_argument("--qps-trace", default=None, help="a dynamic-QPS trace file or packaged name")
    w.add_argument(
        "--trace-scale",
        type=_positive,
        default=None,
        help="multiplies the trace's rates (default 1)",
    )
    w.add_argument("--concurrency", type=_count(1), default=None, help="closed loop: in flight")
    w.add_argument("--sweep", type=_rates, default=None, help="comma-separated rates")
    w.add_argument(
        "--warmup", type=_count(0), default=None, help="requests sent before measuring (default 2)"
    )
    w.add_argument("--seed", type=int, default=0)
    w.add_argument(
        "--disconnect-fraction",
        type=_share,
        default=0.0,
        help="this share of clients leaves after 1-4 tokens (reliability check)",
    )
    s = p.add_argument_group("systems")
    s.add_argument("--base-url", default=None, help="a running server (loopback only)")
    s.add_argument(
        "--simulate",
        default=None,
        metavar="A_MS,B_MS",
        help="no server: replay through the scheduler in simulated time, each step taking "
        "A + B x tokens milliseconds (see bench/serve_sim.py)",
    )
    s.add_argument("--label", default=None, help="the name of --base-url's system (default server)")
    s.add_argument(
        "--model",
        default=None,
        help="model to serve: a directory, a bundled name, or an HF config JSON "
        "(a file, or one of bench/models/) built with random weights (default "
        f"{DEFAULT_MODEL}); with --base-url, the model name to request, as vLLM's --model "
        "(default: the server's first in /v1/models)",
    )
    s.add_argument(
        "--system",
        action="append",
        default=None,
        metavar="NAME=ENGINE_ARGS",
        help=f"repeatable; default: {' and '.join(repr(x) for x in DEFAULT_SYSTEMS)}",
    )
    s.add_argument(
        "--peer",
        action="append",
        default=None,
        choices=PEERS,
        help="repeatable: also start this peer server on the same model (hf: HF transformers "
        "serve, text prompts, one token per chunk; see bench/serve_peers.py)",
    )
    s.add_argument(
        "--peer-args",
        default="",
        help="the peer's own flags (default for hf: --continuous-batching)",
    )
    s.add_argument("--engine-args", default="", help="engine flags shared by every system")
    s.add_argument(
        "--threads", type=_count(1), default=None, help="CPU threads of each server (default 2)"
    )
    s.add_argument(
        "--vocab-size",
        type=_count(wl.FIRST_TOKEN_ID + 2),  # prompts draw ids from FIRST_TOKEN_ID up
        default=None,
        help="token-id range of prompts (default: the model's config)",
    )
    s.add_argument(
        "--no-logprobs",
        action="store_true",
        help="do not ask for logprobs (count one token per chunk of text; needs a tokenizer)",
    )
    s.add_argument(
        "--request-timeout",
        type=_positive,
        default=None,
        help="seconds one request may take in all, send to the stream's end (default 600)",
    )
    s.add_argument("--startup-timeout", type=_positive, default=None, help="seconds (default 300)")
    o = p.add_argument_group("SLO and output")
    # Defaults: TTFT within 3 s and the p90 of a request's gaps within 500 ms. The server's
    # default step-time target (300 ms) lies under this TBT bound, as a target must (README).
    o.add_argument(
        "--slo-ttft-ms", type=float, default=3000.0, help="a request's TTFT bound (default 3000)"
    )
    o.add_argument(
        "--slo-tbt-ms",
        type=float,
        default=500.0,
        help="bound on a request's --slo-tbt-stat of its gaps between tokens (default 500)",
    )
    o.add_argument("--slo-tbt-stat", choices=("mean", "p90", "max"), default="p90")
    o.add_argument(
        "--slo-attainment",
        type=_attainment,
        default=0.9,
        help="share of a rate's requests that must meet the SLO (default 0.9)",
    )
    o.add_argument(
        "--reference",
        default=None,
        help="the system ratios divide by (default: baseline if present, else the first)",
    )
    o.add_argument("--json", type=output_file, help="write every run and the sweep summary here")
    o.add_argument("--markdown", type=output_file, help="write the runs as a Markdown table here")
    o.add_argument("--plot", type=output_file, help="a PNG of latency vs load (with --sweep)")
    o.add_argument("--no-progress", action="store_true")
    return p


def _system_labels(args: argparse.Namespace) -> list[str]:
    """The names of the systems a run will measure, known before any server starts."""
    if args.base_url is not None:
        return [args.label]
    specs = args.system or list(DEFAULT_SYSTEMS)
    return [spec.partition("=")[0] for spec in specs] + list(getattr(args, "peer", None) or [])


# Flags whose default is filled in by refuse_conflicts, after it has told "given" from "not
# given" (the parser leaves them None).
DEFAULTS: dict[str, Any] = {
    "request_rate": 1.0,
    "trace_scale": 1.0,
    "label": "server",
    "num_prompts": 50,
    "min_prompts": 8,
    "warmup": 2,
    "threads": 2,
    "request_timeout": 600.0,
    "startup_timeout": 300.0,
}


def refuse_conflicts(args: argparse.Namespace) -> None:
    """Raise ValueError for a flag the chosen mode would not use, then fill in the defaults
    left unset to tell "given" from "not given" (``DEFAULTS``, and --model). A parameter is
    honoured or refused, never silently dropped: a closed loop used to ignore --sweep and
    --request-rate, a trace --sweep, --simulate a --base-url, --warmup and the server's flags,
    --duration a --num-prompts, --base-url --threads."""

    def given(*flags: str) -> list[str]:
        return [f for f in flags if getattr(args, f[2:].replace("-", "_")) is not None]

    if args.concurrency is not None:
        extra = given("--sweep", "--request-rate", "--qps-trace", "--burstiness", "--duration")
        if extra:
            raise ValueError(
                f"--concurrency is a closed loop (the next request when one ends): "
                f"{', '.join(extra)} set open-loop arrivals and do not go with it"
            )
        if args.plot:
            raise ValueError("--plot draws latency against offered rate: none with --concurrency")
    if args.qps_trace is not None:
        extra = given("--sweep", "--request-rate")
        if extra:
            raise ValueError(f"--qps-trace sets the rates: {', '.join(extra)} do not go with it")
    elif args.trace_scale is not None:
        raise ValueError("--trace-scale: no --qps-trace to scale")
    if args.sweep and args.request_rate is not None:
        raise ValueError("--sweep gives the rates: --request-rate does not go with it")
    if args.simulate is not None:
        if args.base_url is not None:
            raise ValueError("--simulate starts no server and reaches none: no --base-url")
        if args.disconnect_fraction:
            raise ValueError("--disconnect-fraction: --simulate has no client to disconnect")
        extra = given("--warmup", "--request-timeout", "--threads", "--startup-timeout")
        if extra:
            raise ValueError(
                f"--simulate sends no request and starts no server: {', '.join(extra)} "
                "would not apply"
            )
    if args.base_url is not None:
        extra = [
            f for f, v in (("--system", args.system), ("--engine-args", args.engine_args)) if v
        ]
        extra += given("--threads", "--startup-timeout")
        if extra:
            raise ValueError(f"--base-url starts no server: {', '.join(extra)} would not apply")
    elif args.label is not None:
        raise ValueError("--label names --base-url's system: no --base-url given")
    if args.duration is not None:
        infinite = args.qps_trace is None and any(
            math.isinf(r) for r in (args.sweep or [args.request_rate or DEFAULTS["request_rate"]])
        )
        if args.num_prompts is not None and not infinite:
            raise ValueError(
                "--num-prompts: --duration sets each run's requests (rate x duration); "
                "--num-prompts counts only a run at an infinite rate, and there is none"
            )
    elif args.min_prompts is not None:
        raise ValueError("--min-prompts bounds --duration's count: no --duration given")
    # the defaults before --reference is checked: --base-url's system is --label's default
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.reference is not None and args.reference not in _system_labels(args):
        raise ValueError(
            f"--reference {args.reference!r} is not a system of this run "
            f"({', '.join(_system_labels(args))})"
        )
    if args.model is None and args.base_url is None:
        args.model = DEFAULT_MODEL


def run(args: argparse.Namespace) -> dict[str, Any]:
    refuse_conflicts(args)
    work = wl.load(args.workload)
    slo = Slo(args.slo_ttft_ms / 1e3, args.slo_tbt_ms / 1e3, args.slo_tbt_stat)
    plan = loads(args, work)
    peers = getattr(args, "peer", None)
    if getattr(args, "peer_args", "") and not peers:
        raise ValueError("--peer-args: no --peer to pass them to")
    if args.simulate is not None and peers:
        raise ValueError("--peer starts a real server: it does not go with --simulate")
    if args.simulate is None and args.base_url is None and args.no_logprobs:
        # the random-weight model is served with --skip-tokenizer-init: its chunks carry no
        # text, so counted one token per non-empty text every request failed as tokenless
        if model_config(args.model)[0] is not None:
            raise ValueError(
                f"--no-logprobs counts tokens by their text, and {args.model} is built with "
                "random weights and served without a tokenizer: its chunks carry no text"
            )
    if args.simulate is not None:
        out = _simulate(args, work, slo, plan)
    else:
        with tempfile.TemporaryDirectory(prefix="xyserve-bench-serve-") as scratch:
            out = _run(args, work, slo, plan, Path(scratch))
    out.update(
        workload=work.name,
        model=out.pop("model", args.model),
        slo={
            "ttft_ms": args.slo_ttft_ms,
            "tbt_ms": args.slo_tbt_ms,
            "tbt_stat": args.slo_tbt_stat,
            "attainment": args.slo_attainment,
        },
        simulated=args.simulate,
    )
    reports: list[RunReport] = out["_reports"]
    out["runs"] = [r.to_json() for r in reports]
    if args.sweep:
        verdicts = rate_verdicts(reports, args.slo_attainment)
        best = highest_met(verdicts, [r.label for r in reports])
        out["rate_verdicts"] = [{"system": v.label} | v.to_json() for v in verdicts]
        out["_verdicts"] = verdicts  # for the printed lines; not in the JSON
        labels = out["systems"]
        ref = args.reference or ("baseline" if "baseline" in labels else labels[0])
        out["max_rate_under_slo"] = best
        out["max_rate_settled"] = {k: settled(verdicts, k, v) for k, v in best.items()}
        out["ratio_to_" + ref] = ratios(best, ref)
        out["reference"] = ref
    return out


def _simulate(
    args: argparse.Namespace, work: wl.ServeWorkload, slo: Slo, plan: list[dict[str, Any]]
) -> dict[str, Any]:
    from xyserve.bench.serve_sim import StepCost, simulate
    from xyserve.server.cli import parse_args

    try:
        a_ms, b_ms = (float(x) for x in args.simulate.split(","))
    except ValueError:
        raise ValueError(f"--simulate {args.simulate!r}: expected A_MS,B_MS") from None
    # a negative cost moved the clock back (negative TTFTs, reported as measures); NaN or
    # inf failed deep inside with "cannot convert float NaN to integer"; 0,0 stops the clock
    if not all(x >= 0 and math.isfinite(x) for x in (a_ms, b_ms)) or a_ms + b_ms == 0:
        raise ValueError(
            f"--simulate {args.simulate!r}: A_MS and B_MS must be finite numbers >= 0, not both 0"
        )
    cost = StepCost(a_ms / 1e3, b_ms / 1e3)
    _, cfg = model_config(args.model)
    vocab = args.vocab_size or (cfg or {}).get("vocab_size") or 32000
    max_len = (cfg or {}).get("max_position_embeddings") or 2048
    configs = {}
    for spec in args.system or list(DEFAULT_SYSTEMS):
        label, _, flags = spec.partition("=")
        argv = ["model"] + shlex.split(args.engine_args) + shlex.split(flags)
        configs[label] = parse_args(argv)[1]
    reports: list[RunReport] = []
    for k, ld in enumerate(plan):
        if ld["concurrency"] is not None:
            raise ValueError("--simulate needs open-loop arrivals (a rate or a trace)")
        reqs, times = load_inputs(args, work, ld, k, vocab, max_len)
        assert times is not None  # open loop, checked above
        for label, config in configs.items():
            results = simulate(config, reqs, times, cost, max_len)
            reports.append(aggregate(label, ld["load"], ld["rate"], results, slo))
    return {"systems": list(configs), "_reports": reports}


def _run(
    args: argparse.Namespace,
    work: wl.ServeWorkload,
    slo: Slo,
    plan: list[dict[str, Any]],
    scratch: Path,
) -> dict[str, Any]:
    systems, model, cfg = start_systems(args, scratch)
    try:
        vocab = args.vocab_size or (cfg or {}).get("vocab_size")
        if not vocab:
            where = "the server's model folder" if args.base_url else "the model"
            raise SystemExit(f"--vocab-size is needed: no config.json readable in {where}")
        max_len = (cfg or {}).get("max_position_embeddings")
        names = {s.label: served_model(s.base_url) for s in systems}
        if args.base_url is not None and args.model is not None:
            names = dict.fromkeys(names, args.model)  # vLLM's --model with --base-url
        text = next((s.text for s in systems if s.text is not None), None)

        def as_text(batch: list[wl.BenchRequest]) -> list[str] | None:
            if text is None:
                return None
            out, drift = text.texts([r.prompt_ids for r in batch])
            if drift > 0.01:
                print(
                    f"warning: the text prompts' lengths differ from the ids' by "
                    f"{100 * drift:.1f}% on average once tokenized again",
                    file=sys.stderr,
                )
            return out

        reports: list[RunReport] = []
        for k, ld in enumerate(plan):
            reqs, times = load_inputs(args, work, ld, k, vocab, max_len)
            texts = as_text(reqs)
            leave = disconnect_plan(ld["n"], args.disconnect_fraction, args.seed + k)
            order = systems[k % len(systems) :] + systems[: k % len(systems)]
            for sys_ in order:
                logprobs = sys_.logprobs and not args.no_logprobs
                if args.warmup:
                    warm = wl.sample(
                        work, args.warmup, vocab, seed=10**6 + k, max_model_len=max_len
                    )
                    asyncio.run(
                        run_load(
                            sys_.base_url,
                            names[sys_.label],
                            warm,
                            concurrency=args.warmup,
                            progress=False,
                            use_logprobs=logprobs,
                            timeout_s=args.request_timeout,
                            prompts=as_text(warm) if sys_.text else None,
                            ignore_eos=sys_.ignore_eos,
                        )
                    )
                results = asyncio.run(
                    run_load(
                        sys_.base_url,
                        names[sys_.label],
                        reqs,
                        arrivals=times,
                        concurrency=ld["concurrency"],
                        desc=f"{sys_.label} {ld['load']}",
                        progress=not args.no_progress,
                        timeout_s=args.request_timeout,
                        use_logprobs=logprobs,
                        disconnects=leave,
                        prompts=texts if sys_.text else None,
                        ignore_eos=sys_.ignore_eos,
                    )
                )
                rep = aggregate(sys_.label, ld["load"], ld["rate"], results, slo)
                rep.server = leak_check(sys_.base_url)
                reports.append(rep)
                print(
                    table([rep]).splitlines()[-1] if rep.num_failed == 0 else table([rep]),
                    file=sys.stderr,
                )
    finally:
        stop_systems(systems)
    out: dict[str, Any] = {"systems": [s.label for s in systems]}
    if args.base_url is not None:  # the model measured, not --model's default
        out["model"] = next(iter(names.values()))
    out["_reports"] = reports
    return out


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run()'s finally: servers are stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main else None
    try:
        out = run(args)
    except (wl.WorkloadError, arr.TraceError, EndpointError, ValueError) as e:
        print(f"xyserve bench serve: error: {e}", file=sys.stderr)
        return 2
    finally:  # a caller's own handler (main is also called in-process) is the caller's again
        if before is not None:  # None: no handler of Python's to put back (or not the main thread)
            signal.signal(signal.SIGTERM, before)
    reports: list[RunReport] = out.pop("_reports")
    verdicts = out.pop("_verdicts", [])
    print(table(reports))
    for r in reports:
        if r.server.get("checked") and not r.server.get("clean"):
            print(f"LEAK? {r.label} {r.load}: {r.server}")
    if "max_rate_under_slo" in out:
        ref = out["reference"]
        print(
            f"max rate under SLO (attainment >= {args.slo_attainment:g}, no failure; ?: a "
            "verdict it rests on is within the 95% interval of the bar):"
        )
        for label, rate in out["max_rate_under_slo"].items():
            ratio = out["ratio_to_" + ref][label]
            mark = "" if out["max_rate_settled"][label] else "?"
            print(
                f"  {label:<12} {rate:g} req/s{mark}  "
                f"({'n/a' if ratio is None else f'{ratio:.2f}x'} {ref})"
            )
        print(
            "SLO attainment per rate, runs pooled [95% interval] (?: the interval crosses the bar):"
        )
        print("\n".join(verdict_lines(verdicts)))
    if args.json:
        write_text(args.json, json.dumps(json_safe(out), indent=1, allow_nan=False, default=float))
    if args.markdown:
        write_text(args.markdown, markdown(reports) + "\n")
    if args.plot:
        from xyserve.bench.serve_plot import plot_sweep

        title = f"{out['workload']} on {out['model']}"
        if args.base_url is None:  # a server of its own, run on --threads
            title += f" ({args.threads} threads)"
        if args.simulate:
            title = f"{out['workload']}, simulated steps of {args.simulate} ms (a, b per token)"
        print(f"plot: {plot_sweep(reports, args.plot, title, args.slo_attainment)}")
    failed = sum(r.num_failed for r in reports)
    leaked = any(r.server.get("checked") and not r.server.get("clean") for r in reports)
    return 1 if failed or leaked else 0

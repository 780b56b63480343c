"""`octopus` command line: run, compare, sweep, bench, list."""

from __future__ import annotations

import argparse
import json
import sys

from octopus.checks import check_seed, positive_finite, refuse_repeats
from octopus.report.metrics import json_safe
from octopus.sched import all_names

SCHEDULER_HELP = (
    "a built-in or registered name (see `octopus list`), or a plugin: "
    "package.module:Class or path/to/file.py:Class"
)


def seed_arg(text: str) -> int:
    """argparse type of every --seed: an integer >= 0 (`checks.check_seed`), refused at
    parse time, before anything runs: `--seed -1` ran, and gave the run of `--seed 1`."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    try:
        return check_seed(seed, "")  # argparse names the option itself
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run(a) -> int:
    from octopus.report.metrics import format_summary, summarize
    from octopus.runner import best_reactive, prepare, run_one

    if a.threshold is not None and a.scheduler != "reactive":
        raise ValueError("run: --threshold is reactive's; this scheduler takes none")
    cw, arch = prepare(a.workflow, a.arch, a.level)
    if a.scheduler == "reactive" and a.threshold is None:
        sim, th = best_reactive(cw, arch, a.seed, a.instances, record=bool(a.trace))
        print(f"reactive: best threshold from sweep = {th}")
    else:
        kw = {"threshold": a.threshold} if a.scheduler == "reactive" else {}
        sim = run_one(cw, arch, a.scheduler, a.seed, a.instances, record=bool(a.trace), **kw)
    s = summarize(sim)
    print(format_summary(s))
    if a.trace:
        from octopus.report.trace import write_trace

        write_trace(sim, a.trace)
        print(f"trace written to {a.trace} (open in https://ui.perfetto.dev)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(json_safe(s), f, indent=2)
    if a.plots:
        import os

        from octopus.report.plots import utilization_heatmap, utilization_over_time

        os.makedirs(a.plots, exist_ok=True)
        print("written", utilization_heatmap(sim, os.path.join(a.plots, "heatmap.png")))
        print("written", utilization_over_time(sim, os.path.join(a.plots, "utilization.png")))
    return 0


def _compare(a) -> int:
    from octopus.experiments import compare_suite, format_compare

    res = compare_suite(
        a.suite,
        a.arch,
        a.level,
        a.seed,
        a.instances,
        progress=not a.quiet,
        seeds=a.seeds,
        extra=tuple(a.scheduler),
        capacity=a.capacity,
    )
    print(format_compare(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(json_safe(res), f, indent=2)
        print(f"written {a.json}")
    if a.plots:
        from octopus.report.plots import ablation_bars, capacity_bars

        print(f"written {ablation_bars(res, a.plots)}")
        if "capacity_vs_bound" in res:
            print(f"written {capacity_bars(res, a.plots)}")
    return 0


def _sweep(a) -> int:
    ex = dict(executor=a.executor, workers=a.workers, address=a.address)
    if a.grid:
        from octopus.grid import load_grid, run_grid

        paper_only = {"--workflows": a.workflows, "--seed": a.seed, "--instances": a.instances}
        paper_only.update({"--seeds": a.seeds, "--parts": a.parts})
        given = [k for k, v in paper_only.items() if v is not None]
        if given:
            raise ValueError(
                f"sweep: {', '.join(given)} belong to the paper sweep; with --grid "
                "the grid file names every parameter"
            )
        res = run_grid(load_grid(a.grid), a.out, **ex)
        print(json.dumps(json_safe(res), indent=2))
        return 0
    from octopus.experiments import sweep

    res = sweep(
        a.out,
        a.workflows,
        0 if a.seed is None else a.seed,
        a.instances,
        3 if a.seeds is None else a.seeds,
        tuple(a.parts or ("dyn", "scale")),
        **ex,
    )
    print(json.dumps(json_safe(res["summary"]), indent=2))
    return 0


# `load` options only a sweep reads, with their defaults: the parser leaves them None, so
# that one --rate can refuse them (they were ignored, silently) and a sweep fills them in.
LOAD_SWEEP_DEFAULTS = {
    "fractions": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "slo_mult": 3.0,
    "slo_basis": "mean",
    "refine": 3,
}


def _load(a) -> int:
    from octopus.openloop import load_sweep, run_at_rate
    from octopus.runner import check_names, prepare

    sweep_only = (*LOAD_SWEEP_DEFAULTS, "slo_us", "sweep", "plot")
    given = [f"--{k.replace('_', '-')}" for k in sweep_only if getattr(a, k) is not None]
    if a.rate is not None and given:
        raise ValueError(f"load: --rate runs one rate; {', '.join(given)} belong to a sweep")
    for k, v in LOAD_SWEEP_DEFAULTS.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.rate is not None and not positive_finite(a.rate):
        raise ValueError(f"load: --rate must be positive and finite, got {a.rate}")
    if a.instances < 2 or not 0.0 <= a.warmup < 1.0:
        raise ValueError("load: --instances must be >= 2 and --warmup in [0, 1)")
    if not (a.slo_us if a.slo_us is not None else a.slo_mult) > 0:  # NaN too
        raise ValueError("load: the SLO must be positive")
    scheds = a.scheduler or ["octopus", "reactive"]
    refuse_repeats(scheds, "load: --scheduler")  # one result per name: the last run won
    check_names("load", {"schedulers": ("--scheduler", scheds)})  # before the first sweep
    cw, arch = prepare(a.workflow, a.arch, a.level)
    prof = cw.profile()
    kw = dict(
        instances=a.instances,
        seed=a.seed,
        process=a.process,
        burst=a.burst,
        warmup=a.warmup,
        profile=prof,
    )
    if a.rate is not None:
        from dataclasses import asdict

        res = {"schedulers": {s: asdict(run_at_rate(cw, arch, s, a.rate, **kw)) for s in scheds}}
        for s, p in res["schedulers"].items():
            print(
                f"{s:24s} rate {p['rate_per_ms']:.3f}/ms ({p['offered_vs_bound']:.2f} of bound)"
                f"  latency mean {p['latency_mean_us']:.1f} us  p50 {p['latency_p50_us']:.1f}"
                f"  p99 {p['latency_p99_us']:.1f}  throughput {p['throughput_per_ms']:.3f}/ms"
                f"  utilization {p['utilization']:.1%}"
            )
    else:
        sweeps = [
            load_sweep(
                cw,
                arch,
                s,
                tuple(a.fractions),
                slo_mult=a.slo_mult,
                slo_us=a.slo_us,
                slo_basis=a.slo_basis,
                refine=a.refine,
                **kw,
            )
            for s in scheds
        ]
        res = {"schedulers": {sw["scheduler"]: sw for sw in sweeps}}
        for sw in sweeps:
            if sw["slo_infeasible"]:
                print(
                    f"{sw['scheduler']:24s} no load meets p99 <= {sw['slo_us']:.1f} us: the "
                    f"critical paths alone reach {sw['slo_floor_us']:.1f} us at p99"
                )
                continue
            print(
                f"{sw['scheduler']:24s} capacity at p99 <= {sw['slo_us']:.1f} us: "
                f"{sw['capacity_at_slo_per_ms']:.3f}/ms = {sw['capacity_vs_bound']:.2f} of the "
                f"bound {sw['capacity_bound_per_ms']:.3f}/ms"
            )
        if a.plot:
            from octopus.report.plots import latency_vs_load

            print("written", latency_vs_load(sweeps, a.plot))
    res.update(workflow=cw.wf.name, arch=arch.name, level=a.level, process=a.process)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(json_safe(res), f, indent=2)
        print(f"written {a.json}")
    return 0


def _bench(a) -> int:
    from octopus.bench import bench

    if a.profile is not None and a.profile < 1:
        raise ValueError(f"bench: --profile must be >= 1 (functions to list), got {a.profile}")
    if a.simpy_instances < 1:  # two empty runs, whose makespans of 0 "disagree"
        raise ValueError(f"bench: --simpy-instances must be >= 1, got {a.simpy_instances}")
    bench(a.arch, a.workflow, a.instances, a.seed, a.simpy_instances, a.profile or 0)
    return 0


def _list(a) -> int:
    from octopus.arch.config import list_arches
    from octopus.workloads import list_workloads

    print("workflows:     " + " ".join(list_workloads()))
    print("architectures: " + " ".join(list_arches()))
    print("schedulers:    " + " ".join(all_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="octopus", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="simulate one workflow on one architecture")
    r.add_argument("--workflow", "-w", required=True, help="suite name or path to a YAML/JSON")
    r.add_argument("--arch", "-a", default="chip", help="chip | chiplet | wafer | path")
    r.add_argument("--scheduler", "-s", default="octopus", help=SCHEDULER_HELP)
    r.add_argument("--level", default="high", help="dynamicity: low | medium | high")
    r.add_argument("--seed", type=seed_arg, default=0)
    r.add_argument("--instances", type=int, default=None, help="override instance count")
    r.add_argument("--threshold", type=float, default=None, help="reactive: fixed threshold")
    r.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace JSON")
    r.add_argument("--json", default=None, help="write the summary as JSON")
    r.add_argument("--plots", default=None, help="directory for heat map and utilization plots")
    r.set_defaults(fn=_run)
    c = sub.add_parser("compare", help="ablation over the suite vs reactive and the bound")
    c.add_argument("--suite", default="paper")
    c.add_argument("--arch", default="chip")
    c.add_argument("--level", default="high")
    c.add_argument("--seed", type=seed_arg, default=0)
    c.add_argument("--instances", type=int, default=None)
    c.add_argument("--json", default=None)
    c.add_argument("--plots", default=None, help="directory for the ablation bar plot")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--seeds", type=int, default=1, help="also report mean and spread over seeds")
    c.add_argument(
        "--scheduler",
        "-s",
        action="append",
        default=[],
        help="also run this scheduler beside the built-ins (repeatable); " + SCHEDULER_HELP,
    )
    c.add_argument(
        "--capacity",
        type=int,
        default=0,
        metavar="N",
        help="also measure open-loop capacity at the SLO (N instances per rate; slow)",
    )
    c.set_defaults(fn=_compare)
    s = sub.add_parser(
        "sweep",
        help="the paper sweep (speedup vs dynamicity and vs scale, plots), or a --grid of runs",
    )
    s.add_argument("--out", default="octopus_sweep")
    s.add_argument(
        "--grid", default=None, help="YAML grid (schema octopus-sweep/1): tidy rows, resumable"
    )
    s.add_argument("--executor", choices=("process", "ray"), default="process")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="process pool size (default: CPUs); with --executor ray, tasks in flight "
        "(default: all, Ray schedules them over its CPUs)",
    )
    s.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    s.add_argument(
        "--workflows",
        nargs="+",  # "*" let a bare --workflows ([]) run the whole suite
        default=None,
        help="suite names or paths (default: the whole suite)",
    )
    s.add_argument("--seed", type=seed_arg, default=None, help="first seed (default 0)")
    s.add_argument("--instances", type=int, default=None)
    s.add_argument("--seeds", type=int, default=None, help="seeds per point (default 3)")
    s.add_argument(
        "--parts",
        nargs="+",
        choices=("dyn", "scale"),
        default=None,
        help="which sweeps to run (both by default)",
    )
    s.set_defaults(fn=_sweep)
    ld = sub.add_parser("load", help="open-loop arrivals: latency vs load, capacity at an SLO")
    ld.add_argument("--workflow", "-w", required=True)
    ld.add_argument("--arch", "-a", default="chip")
    ld.add_argument(
        "--scheduler",
        "-s",
        action="append",
        default=[],
        help="repeatable (default: octopus and reactive at threshold 1); " + SCHEDULER_HELP,
    )
    ld.add_argument("--level", default="high")
    ld.add_argument("--seed", type=seed_arg, default=0)
    ld.add_argument("--instances", type=int, default=300, help="instances per rate")
    ld.add_argument("--rate", type=float, default=None, help="one rate (instances/ms)")
    ld.add_argument(
        "--sweep",
        action="store_true",
        default=None,
        help="sweep from low load to the capacity bound (the default when --rate is not given)",
    )
    ld.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=None,
        help="sweep: offered rates as fractions of the capacity bound (default 0.1 0.2 ... 1)",
    )
    ld.add_argument(
        "--slo-mult", type=float, default=None, help="p99 SLO x mean critical path (default 3)"
    )
    ld.add_argument("--slo-us", type=float, default=None, help="p99 SLO in us (overrides)")
    ld.add_argument(
        "--slo-basis",
        choices=("mean", "p99"),
        default=None,
        help="--slo-mult multiplies the mean (default) or the p99 of the critical paths",
    )
    ld.add_argument(
        "--refine", type=int, default=None, help="bisection steps for the capacity (default 3)"
    )
    ld.add_argument("--process", choices=("poisson", "bursty"), default="poisson")
    ld.add_argument("--burst", type=float, default=8.0, help="bursty: mean burst size")
    ld.add_argument("--warmup", type=float, default=0.1, help="fraction of instances skipped")
    ld.add_argument("--json", default=None)
    ld.add_argument("--plot", default=None, help="latency-vs-load PNG (sweep)")
    ld.set_defaults(fn=_load)
    b = sub.add_parser("bench", help="simulator speed, and the SimPy model side by side")
    b.add_argument("--arch", default="wafer")
    b.add_argument("--workflow", default="video_recognition")
    b.add_argument("--instances", type=int, default=None)
    b.add_argument("--simpy-instances", type=int, default=400)
    b.add_argument("--seed", type=seed_arg, default=0)
    b.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="N",
        help="instead of timing, profile the full-Octopus run (cProfile) and print the top N "
        "functions (use --instances 400 for a short run)",
    )
    b.set_defaults(fn=_bench)
    ls = sub.add_parser("list", help="shipped workflows, architectures and schedulers")
    ls.set_defaults(fn=_list)
    return p


# Output options, by the attribute argparse gives them: files, then folders (made if absent).
OUTPUT_FILES = ("json", "trace", "plot")
OUTPUT_DIRS = ("plots", "out")


def check_outputs(a: argparse.Namespace) -> None:
    """Refuse, before anything runs, an output that cannot be written: a file whose folder
    does not exist (or is not writable) or that names a folder, a folder that names a file.
    These failed only when the result was written, after the whole run (minutes for
    `compare`, and the result was lost)."""
    import os

    for key in OUTPUT_FILES + OUTPUT_DIRS:
        path = getattr(a, key, None)
        if not path:
            continue
        opt = "--" + key
        if key in OUTPUT_DIRS:
            if os.path.exists(path) and not os.path.isdir(path):
                raise ValueError(f"{opt} {path!r}: not a folder")
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise ValueError(f"{opt} {path!r}: is a folder, not a file")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ValueError(f"{opt} {path!r}: folder {folder!r} does not exist or is not writable")


def main(argv: list[str] | None = None) -> int:
    from octopus.sim.engine import SimulationStalled

    a = build_parser().parse_args(argv)
    try:
        check_outputs(a)
        return a.fn(a)
    except (ValueError, OSError) as e:  # OSError: an input or output path (not found, ...)
        print(f"octopus: error: {e}", file=sys.stderr)
        return 2
    except SimulationStalled as e:  # the inputs and the scheduler cannot finish the run
        print(f"octopus: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

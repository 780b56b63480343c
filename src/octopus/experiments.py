"""The paper's evaluation: the ablation over the suite (`compare`) and the sweeps."""

from __future__ import annotations

import json
import os

from tqdm import tqdm

from octopus.checks import check_seed, refuse_repeats
from octopus.owg.arrival import make_arrivals
from octopus.owg.schema import MAX_INSTANCES
from octopus.report.metrics import json_safe, summarize
from octopus.runner import best_reactive, check_names, prepare, run_one
from octopus.workloads import SUITE

ABLATION = ("octopus-dds", "octopus-dds-adaptive", "octopus")
LABELS = {
    "reactive": "reactive (best threshold)",
    "octopus-dds": "+ discriminate dual-scheduling",
    "octopus-dds-adaptive": "+ adaptive TBU",
    "octopus": "+ proactive cluster (full Octopus)",
}


def free_pool_reference(cw, arch, seed=0, instances=None, n_peas: int | None = None) -> float:
    """Makespan on one flat pool of `n_peas` PEAs (default: as many as work can use) with
    free reconfiguration and data movement, control-plane decisions, FCFS, and the same
    instances and admission. Unlimited, every instance takes its critical path, so this
    equals the closed-loop replay of `window_bound_us`. With the architecture's own PEA
    count it is what a perfect-resource machine reaches under the same closed loop: what
    is left between it and the bound is queueing, not scheduling overheads."""
    from octopus.arch.config import free_arch
    from octopus.sched import make_scheduler
    from octopus.sim import Simulator

    arr = make_arrivals(cw.wf.arrival, arch.n_clusters, seed, instances)
    name = "unlimited" if n_peas is None else f"pool-{n_peas}"
    peas = (128, 64) if n_peas is None else (n_peas, 1)
    big = free_arch(name, peas, arch.control_plane_us, arch.throughput_tops)
    return Simulator(cw, big, make_scheduler("greedy"), arr, seed=seed).run().makespan


def compare_workflow(
    name, arch="chip", level="high", seed=0, instances=None, extra: tuple[str, ...] = ()
) -> dict:
    """One workflow: the best-tuned reactive baseline, static, greedy, the Octopus ablation
    and any `extra` schedulers (names or plugin specs), each against the bounds."""
    cw, a = prepare(name, arch, level)
    prof = cw.profile()
    base, th = best_reactive(cw, a, seed, instances, profile=prof)
    rows = {"reactive": summarize(base)}
    rows["reactive"]["threshold"] = th
    rows["reactive"]["mapping"] = base.sched.mapping
    for s in ("static", "greedy", *ABLATION, *extra):
        if s == "static" and base.best_static is not None:  # threshold inf, best mapping
            rows[s] = summarize(base.best_static)
            rows[s]["scheduler"] = "static"
            rows[s]["mapping"] = base.best_static.sched.mapping
            continue
        rows[s] = summarize(run_one(cw, a, s, seed, instances, profile=prof))
    ref = rows["reactive"]["makespan_us"]
    bound = rows["octopus"]["bound_us"]
    if not bound > 0:  # every figure below is a ratio to it (a ZeroDivisionError)
        raise ValueError(
            f"compare: workflow {name!r}: the lower bound is 0 (no work and no decisions), so "
            "no speedup ceiling or ratio to the bound is defined"
        )
    unl = free_pool_reference(cw, a, seed, instances)
    pool = free_pool_reference(cw, a, seed, instances, a.n_peas)
    return {
        "workflow": name,
        "level": level,
        "arch": a.name,
        "reactive_threshold": th,
        "reactive_mapping": base.sched.mapping,
        "bound_us": bound,
        "makespan_us": {k: v["makespan_us"] for k, v in rows.items()},
        "speedup": {k: ref / v["makespan_us"] for k, v in rows.items()},
        "octopus_vs_bound": rows["octopus"]["makespan_us"] / bound,
        "window_bound_us": rows["octopus"]["window_bound_us"],
        "octopus_vs_window_bound": rows["octopus"]["vs_window_bound"],
        "reactive_vs_bound": ref / bound,
        # the speedup over reactive that a perfect scheduler could reach at most
        "ceiling_speedup": ref / bound,
        "unlimited_pea_makespan_us": unl,
        "ceiling_unlimited_speedup": ref / unl,
        # one flat pool of the same PEAs, free reconfiguration and data movement, FCFS
        "free_pool_makespan_us": pool,
        "free_pool_vs_bound": pool / bound,
        "octopus_vs_free_pool": rows["octopus"]["makespan_us"] / pool,
        # every reactive setting, for the suite-wide fixed baseline ("mapping/threshold")
        "reactive_grid_makespan_us": {f"{m}/{t}": v for (m, t), v in base.reactive_grid.items()},
        "rows": rows,
    }


def compare_suite(
    suite="paper",
    arch="chip",
    level="high",
    seed=0,
    instances=None,
    progress=True,
    seeds=1,
    extra: tuple[str, ...] = (),
    capacity: int = 0,
):
    """The ablation over the suite at `seed`; with seeds > 1, also `over_seeds`: the same
    figures at seed, seed + 1, ..., with their mean and spread (the top-level figures stay
    those of `seed`)."""
    check_seed(seed, "compare: --seed")
    if seeds < 1:
        raise ValueError(f"compare: --seeds must be >= 1, got {seeds}")
    if capacity < 0:  # 0: no capacity; a negative count was truthy and crashed at the end
        raise ValueError(f"compare: --capacity must be >= 0 (instances per rate), got {capacity}")
    names = suite_names(suite)
    refuse_repeats(extra, "compare: --scheduler")
    again = [x for x in extra if x in ("reactive", "static", "greedy", *ABLATION)]
    if again:  # it ran twice, and its column showed twice
        raise ValueError(
            f"compare: --scheduler {again[0]!r}: a built-in, compared without -s (reactive, "
            f"static, greedy, {', '.join(ABLATION)})"
        )
    check_names(
        "compare",
        {
            "workflows": ("--suite", names),
            "architectures": ("--arch", [arch]),
            "schedulers": ("--scheduler", list(extra)),
            "levels": ("--level", [level]),
        },
    )
    res = _compare_one(suite, arch, level, seed, instances, progress, extra, capacity)
    if seeds > 1:
        runs = [res] + [
            _compare_one(suite, arch, level, sd, instances, progress, extra)
            for sd in range(seed + 1, seed + seeds)
        ]
        keys = ("mean_speedup", "max_speedup", "octopus_vs_bound", "octopus_vs_window_bound")
        res["over_seeds"] = {
            "seeds": list(range(seed, seed + seeds)),
            **{k: _stats([r[k] for r in runs]) for k in keys},
            "speedups": {n: _stats([r["speedups"][n] for r in runs]) for n in res["speedups"]},
            "ablation": {
                n: {c: _stats([r["ablation"][n][c] for r in runs]) for c in row}
                for n, row in res["ablation"].items()
            },
            "octopus_vs_free_pool": {
                n: _stats([r["octopus_vs_free_pool"][n] for r in runs]) for n in res["speedups"]
            },
        }
    return res


def fixed_reactive(per: dict) -> tuple[str, dict[str, float]]:
    """The one reactive setting (mapping/threshold) for the whole suite, as a deployed
    system would pick it: the best suite mean of makespan relative to each workflow's
    best-tuned reactive. Returns the setting and its makespan per workflow."""
    names = list(per)
    grids = [per[n]["reactive_grid_makespan_us"] for n in names]
    best = {n: per[n]["makespan_us"]["reactive"] for n in names}
    common = set(grids[0]).intersection(*grids[1:])

    def score(key: str) -> float:
        return sum(g[key] / best[n] for n, g in zip(names, grids)) / len(names)

    key = min(sorted(common), key=score)
    return key, {n: g[key] for n, g in zip(names, grids)}


def capacity_ratios(
    per: dict,
    fixed_key: str,
    arch: str,
    level: str,
    seed: int,
    extra: tuple[str, ...] = (),
    instances: int = 200,
    slo_mult: float = 2.0,
    progress: bool = True,
) -> dict:
    """Open-loop capacity at a p99 SLO of Octopus (and `extra` schedulers) against three
    baselines: reactive at each workflow's best closed-loop setting, reactive at the one
    suite-wide setting, and static at its best mapping. The SLO is `slo_mult` x the p99 of
    the instances' critical paths (what an unloaded, unlimited machine gets at p99): with
    the mean as the basis, the heavy-tailed workflows meet no SLO of a few times it at any
    load. A ratio is taken over the workflows where the baseline's capacity is not 0."""
    from octopus.openloop import load_sweep

    fixed_mp, fixed_th = fixed_key.split("/")
    cap: dict[str, dict[str, float]] = {}
    for n in tqdm(list(per), desc="capacity", disable=not progress):
        w = per[n]
        cw, a = prepare(n, arch, level)
        prof = cw.profile()
        runs = {
            "reactive": (
                "reactive",
                dict(threshold=w["reactive_threshold"], mapping=w["reactive_mapping"]),
            ),
            "fixed_reactive": ("reactive", dict(threshold=float(fixed_th), mapping=fixed_mp)),
            "static": ("static", dict(mapping=w["rows"]["static"]["mapping"])),
            "octopus": ("octopus", {}),
            **{x: (x, {}) for x in extra},
        }
        cap[n] = {
            key: load_sweep(
                cw,
                a,
                sched,
                slo_mult=slo_mult,
                slo_basis="p99",
                instances=instances,
                seed=seed,
                profile=prof,
                **kw,
            )["capacity_vs_bound"]
            for key, (sched, kw) in runs.items()
        }
    out: dict = {"capacity_vs_bound": cap, "capacity_slo_mult": slo_mult}
    for who in ("octopus", *extra):
        for base in ("reactive", "fixed_reactive", "static"):
            r = [cap[n][who] / cap[n][base] for n in cap if cap[n][base] > 0]
            key = f"capacity_ratio_vs_{base}"
            st = {"mean": sum(r) / len(r), "max": max(r), "n": len(r)} if r else None
            if who == "octopus":
                out[key] = st
            else:
                out.setdefault("extra_capacity_ratios", {}).setdefault(who, {})[key] = st
    return out


def suite_names(suite: str) -> list[str]:
    """The workflows of `--suite`: `paper` (the shipped suite) or a comma-separated list,
    each name once (a repeat ran, and counted in every mean, twice) and none empty."""
    if suite == "paper":
        return list(SUITE)
    names = [n.strip() for n in suite.split(",")]
    if "" in names:
        raise ValueError(f"compare: --suite {suite!r}: an empty workflow name")
    refuse_repeats(names, "compare: --suite")
    return names


def _compare_one(
    suite, arch, level, seed, instances, progress, extra=(), capacity: int = 0
) -> dict:
    names = suite_names(suite)
    per = {}
    for n in tqdm(names, desc="compare", disable=not progress):
        per[n] = compare_workflow(n, arch, level, seed, instances, extra)
    sp = [per[n]["speedup"]["octopus"] for n in names]
    oct_ms = {n: per[n]["makespan_us"]["octopus"] for n in names}
    fixed_key, fixed_ms = fixed_reactive(per)
    vs_fixed = [fixed_ms[n] / oct_ms[n] for n in names]
    vs_static = [per[n]["makespan_us"]["static"] / oct_ms[n] for n in names]
    vb = [per[n]["octopus_vs_bound"] for n in names]
    wb = [per[n]["octopus_vs_window_bound"] for n in names]
    return {
        "suite": suite,
        "arch": arch,
        "level": level,
        "seed": seed,
        "mean_speedup": sum(sp) / len(sp),
        "max_speedup": max(sp),
        # one reactive setting for the whole suite (chosen once: the best suite mean)
        "fixed_reactive_setting": fixed_key,
        "mean_speedup_vs_fixed_reactive": sum(vs_fixed) / len(vs_fixed),
        "max_speedup_vs_fixed_reactive": max(vs_fixed),
        # the compile-time partition, never changed (best of the architecture's mappings)
        "mean_speedup_vs_static": sum(vs_static) / len(vs_static),
        "max_speedup_vs_static": max(vs_static),
        "octopus_vs_bound": sum(vb) / len(vb),
        "octopus_vs_bound_max": max(vb),
        # against max(work / capacity, the closed loop replayed with critical paths): a
        # tighter valid bound, reported beside the bound (see docs)
        "octopus_vs_window_bound": sum(wb) / len(wb),
        "octopus_vs_window_bound_max": max(wb),
        "speedups": {n: per[n]["speedup"]["octopus"] for n in names},
        "ceiling_speedups": {n: per[n]["ceiling_speedup"] for n in names},
        "mean_ceiling_speedup": sum(per[n]["ceiling_speedup"] for n in names) / len(names),
        "ceiling_unlimited_speedups": {n: per[n]["ceiling_unlimited_speedup"] for n in names},
        "free_pool_vs_bound": {n: per[n]["free_pool_vs_bound"] for n in names},
        "octopus_vs_free_pool": {n: per[n]["octopus_vs_free_pool"] for n in names},
        "ablation": {
            n: {k: per[n]["speedup"][k] for k in ("reactive", "static", "greedy", *ABLATION)}
            for n in names
        },
        "extra_speedups": {x: {n: per[n]["speedup"][x] for n in names} for x in extra},
        **(
            capacity_ratios(per, fixed_key, arch, level, seed, extra, capacity, progress=progress)
            if capacity
            else {}
        ),
        "workflows": per,
    }


def format_compare(res: dict) -> str:
    cols = ("reactive", "static", "greedy", *ABLATION, *res.get("extra_speedups", {}))
    head = (
        f"{'workflow':20s}"
        + "".join(f"{c.rsplit(':', 1)[-1][:20]:>21s}" for c in cols)
        + f"{'ceiling':>9s}{'unlimited':>10s}{'pool/bound':>11s}{'oct/pool':>9s}"
    )
    out = [
        f"suite {res['suite']} on {res['arch']}, dynamicity {res['level']}: speedup over reactive"
        " at its best threshold",
        head,
    ]
    for n, w in res["workflows"].items():
        out.append(
            f"{n:20s}"
            + "".join(f"{w['speedup'][c]:>21.2f}" for c in cols)
            + f"{w['ceiling_speedup']:>9.2f}"
            + f"{w['ceiling_unlimited_speedup']:>10.2f}"
            + f"{w['free_pool_vs_bound']:>11.2f}"
            + f"{w['octopus_vs_free_pool']:>9.2f}"
        )
    out.append(
        f"mean_speedup {res['mean_speedup']:.2f}x  max_speedup {res['max_speedup']:.2f}x  "
        f"octopus_vs_bound {res['octopus_vs_bound']:.2f}x (worst {res['octopus_vs_bound_max']:.2f}x)"
        f"  octopus_vs_window_bound {res['octopus_vs_window_bound']:.2f}x"
        f" (worst {res['octopus_vs_window_bound_max']:.2f}x)"
    )
    if "capacity_vs_bound" in res:
        parts = []
        for b in ("reactive", "fixed_reactive", "static"):
            st = res[f"capacity_ratio_vs_{b}"]
            parts.append(
                f"{b} mean {st['mean']:.2f}x max {st['max']:.2f}x (n={st['n']})"
                if st
                else f"{b}: no workflow with a capacity"
            )
        out.append(
            f"open-loop capacity at p99 <= {res['capacity_slo_mult']:g} x p99 critical path, "
            "Octopus over: " + ", ".join(parts)
        )
    out.append(
        f"vs fixed reactive ({res['fixed_reactive_setting']}, one setting for the suite): mean "
        f"{res['mean_speedup_vs_fixed_reactive']:.2f}x max "
        f"{res['max_speedup_vs_fixed_reactive']:.2f}x;  vs static: mean "
        f"{res['mean_speedup_vs_static']:.2f}x max {res['max_speedup_vs_static']:.2f}x"
        "  (paper: 2.50x mean, 4.26x max)"
    )
    ov = res.get("over_seeds")
    if ov:
        f = lambda k: f"{ov[k]['mean']:.2f} +- {ov[k]['std']:.2f}"  # noqa: E731
        out.append(
            f"over seeds {ov['seeds']}: mean_speedup {f('mean_speedup')}, max_speedup "
            f"{f('max_speedup')}, octopus_vs_bound {f('octopus_vs_bound')}, "
            f"octopus_vs_window_bound {f('octopus_vs_window_bound')}"
        )
    out.append(
        f"ceiling (reactive / lower bound: the most any scheduler could gain) mean "
        f"{res['mean_ceiling_speedup']:.2f}x; 'unlimited' = reactive / makespan with unlimited "
        "free PEAs (dependency- and window-limited reference); 'pool/bound' = makespan of one "
        "flat pool of the same PEAs with free reconfiguration and data movement (FCFS) / lower "
        "bound; 'oct/pool' = full Octopus / that pool"
    )
    return "\n".join(out)


def _stats(xs: list[float]) -> dict:
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs)}


def _paper_sweep_job(job: tuple) -> tuple:
    """One point of the paper sweep: the best-tuned reactive makespan over Octopus's (and
    over central Octopus's for the scale part). Module level: it runs in worker processes."""
    kind, n, lv, a, sd, instances = job
    cw, arch = prepare(n, a, lv)
    prof = cw.profile()
    inst = instances
    if kind == "scale" and inst is None:
        # one closed-loop window per cluster: keeps the wafer points (14 baseline runs
        # each) affordable on 2 cores
        inst = max(8, int(cw.wf.arrival.get("concurrency_per_cluster", 2) * arch.n_clusters))
    base, _ = best_reactive(cw, arch, sd, inst, profile=prof)
    ref = base.makespan
    if kind == "dyn":
        return job, (ref / run_one(cw, arch, "octopus", sd, inst, profile=prof).makespan,)
    return job, tuple(
        ref / run_one(cw, arch, sch, sd, inst, profile=prof).makespan
        for sch in ("octopus", "octopus-central")
    )


def sweep(
    out_dir: str,
    workflows=None,
    seed=0,
    instances=None,
    seeds: int = 3,
    parts=("dyn", "scale"),
    executor: str = "process",
    workers: int | None = None,
    address: str | None = None,
) -> dict:
    """Speedup vs dynamicity level (chip), and vs scale with diffusion vs central balancing,
    each point over `seeds` seeds (seed, seed + 1, ...): single-seed figures of this model
    move by several percent with any perturbation, so a trend needs the spread beside it.
    The points run on `executor` (a local process pool, or Ray); results do not depend on
    it (each point is a pure function of its parameters)."""
    from octopus.grid import executor_stream
    from octopus.report.plots import line_plot

    check_seed(seed, "sweep: --seed")  # the points run in workers: refuse it here, first
    if seeds < 1:  # no point to run: the summary's means would divide by zero
        raise ValueError(f"sweep: --seeds must be >= 1, got {seeds}")
    if instances is not None and not 1 <= instances <= MAX_INSTANCES:  # else in each point
        raise ValueError(
            f"sweep: --instances must be in [1, {MAX_INSTANCES}] (MAX_INSTANCES), got {instances}"
        )
    if workflows is not None and not workflows:  # ran the whole suite, for minutes
        raise ValueError("sweep: --workflows is empty; leave it out to sweep the whole suite")
    names = list(SUITE) if workflows is None else list(workflows)
    refuse_repeats(names, "sweep: --workflows")  # its values were appended twice per seed
    arches = ("chip", "chiplet", "wafer")
    check_names(
        "sweep", {"workflows": ("--workflows", names), "architectures": ("arch", list(arches))}
    )
    levels = ("low", "medium", "high")
    sds = list(range(seed, seed + seeds))
    jobs = [("dyn", n, lv, "chip", sd, instances) for sd in sds for n in names for lv in levels]
    jobs += [("scale", n, "high", a, sd, instances) for sd in sds for n in names for a in arches]
    jobs = [j for j in jobs if j[0] in parts]
    if "dyn" not in parts:
        levels = ()
    if "scale" not in parts:
        arches = ()
    stream = executor_stream(_paper_sweep_job, jobs, executor, workers, address)
    os.makedirs(out_dir, exist_ok=True)
    got = dict(tqdm(stream, total=len(jobs), desc="sweep"))
    dyn = {n: {lv: [] for lv in levels} for n in names}
    scale = {n: {a: {"diffusion": [], "central": []} for a in arches} for n in names}
    for job in jobs:  # in job order, whatever order they finished in
        kind, n, lv, a = job[:4]
        if kind == "dyn":
            dyn[n][lv].append(got[job][0])
        else:
            scale[n][a]["diffusion"].append(got[job][0])
            scale[n][a]["central"].append(got[job][1])

    def suite(get, xs) -> dict:
        """Per x: the suite mean per seed, then its mean and spread over seeds."""
        return {
            x: _stats([sum(get(n, x)[i] for n in names) / len(names) for i in range(seeds)])
            for x in xs
        }

    dyn_s = suite(lambda n, lv: dyn[n][lv], levels)
    diff_s = suite(lambda n, a: scale[n][a]["diffusion"], arches)
    cent_s = suite(lambda n, a: scale[n][a]["central"], arches)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    sd_ = lambda xs: _stats(xs)["std"]  # noqa: E731
    series = {n: [mean(dyn[n][lv]) for lv in levels] for n in names}
    errs = {n: [sd_(dyn[n][lv]) for lv in levels] for n in names}
    series["suite mean"] = [dyn_s[lv]["mean"] for lv in levels]
    errs["suite mean"] = [dyn_s[lv]["std"] for lv in levels]

    def plot(series: dict, errs: dict, xs: list[str], xlabel: str, name: str) -> str | None:
        if not xs:
            return None
        ylabel = f"speedup over reactive (mean, std over {seeds} seeds)"
        return line_plot(series, xs, xlabel, ylabel, os.path.join(out_dir, name), errs)

    p1 = plot(series, errs, list(levels), "dynamicity level", "speedup_vs_dynamicity.png")
    series, errs = {}, {}
    for n in [*names, "suite mean"]:
        for b in ("diffusion", "central"):
            if n == "suite mean":
                st = diff_s if b == "diffusion" else cent_s
                series[f"{n} {b}"] = [st[a]["mean"] for a in arches]
                errs[f"{n} {b}"] = [st[a]["std"] for a in arches]
            else:
                series[f"{n} {b}"] = [mean(scale[n][a][b]) for a in arches]
                errs[f"{n} {b}"] = [sd_(scale[n][a][b]) for a in arches]
    p2 = plot(series, errs, list(arches), "scale", "speedup_vs_scale.png")
    summary = {
        "seeds": sds,
        "speedup_vs_dynamicity": {lv: dyn_s[lv]["mean"] for lv in levels},
        "speedup_vs_scale_diffusion": {a: diff_s[a]["mean"] for a in arches},
        "speedup_vs_scale_central": {a: cent_s[a]["mean"] for a in arches},
        "spread_vs_dynamicity": dyn_s,
        "spread_vs_scale_diffusion": diff_s,
        "spread_vs_scale_central": cent_s,
        "plots": [p for p in (p1, p2) if p],
    }
    res = {"dynamicity": dyn, "scale": scale, "summary": summary}
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump(json_safe(res), f, indent=2)
    return res

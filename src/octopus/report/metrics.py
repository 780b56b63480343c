"""Per-run metrics and the lower bound every result is shown against."""

from __future__ import annotations

import heapq
import math


def json_safe(x):
    """`x` with every NaN or infinite float replaced by None, so that the JSON written is
    standard JSON (null), which jq and JSON.parse accept; `json.dump` would write the bare
    tokens NaN and Infinity. Undefined figures are NaN here, e.g. the batch-means standard
    error of fewer than 40 latencies, or a ratio to a lower bound of 0."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    i = min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))
    return s[i]


def instance_critical_paths(sim) -> tuple[list[float], float]:
    """Per instance, its critical path (pure compute plus the faster decision latency: no
    transfer, reconfiguration or queueing); and the total PEA-us of work of the run.

    A decision costs the control-plane latency (Octopus) or the data-plane one (the
    baselines); the bound must hold for every scheduler, so it takes the smaller. With the
    control-plane latency alone, an architecture whose data plane is the faster one gave a
    bound above what the baselines reached (makespan / bound < 1)."""
    T, node, dur, preds, inst = sim.n_tasks, sim.inv.node, sim.inv.dur, sim.inv.preds, sim.inv.inst
    ctrl = min(sim.arch.control_plane_us, sim.arch.data_plane_us)
    fp = sim.cw.footprint
    cp = [0.0] * len(node)
    icp = [0.0] * len(sim.instances.left)
    work = 0.0
    for k in range(len(node)):
        b = 0.0
        for j in preds[k]:
            if cp[j] > b:
                b = cp[j]
        nd = node[k]
        if nd < T:
            cp[k] = b + dur[k]
            work += dur[k] * fp[nd]
        else:
            cp[k] = b + ctrl
        if cp[k] > icp[inst[k]]:
            icp[inst[k]] = cp[k]
    return icp, work


def lower_bound(sim) -> dict:
    """max(total work / capacity, critical path); plus, for a closed loop of K slots,
    sum(critical paths) / K (each instance holds a slot for at least its critical path).
    Also `window_bound_us`: max(work / capacity, the closed loop replayed with critical
    paths), a tighter valid bound, reported separately.

    Critical paths use pure compute plus the control-plane latency: no transfer, no
    reconfiguration, no queueing.
    """
    icp, work = instance_critical_paths(sim)
    cap = work / sim.arch.n_peas
    crit = max(icp) if icp else 0.0
    if sim.arr.times is not None:
        crit = max((a + c for a, c in zip(sim.arr.times, icp)), default=0.0)
        slots = 0.0
    else:
        slots = sum(icp) / sim.arr.concurrency
    window = crit if sim.arr.times is not None else window_bound(icp, sim.arr.concurrency)
    return {
        "bound_us": max(cap, crit, slots),
        "work_over_capacity_us": cap,
        "critical_path_us": crit,
        "slots_us": slots,
        # reported beside the bound, not folded into it (the issue defines the bound)
        "window_bound_us": max(cap, window),
    }


def window_bound(cps: list[float], k: int) -> float:
    """Makespan of the closed loop if every instance took exactly its critical path: K
    slots, instance i admitted when the (i - K + 1)-th instance finishes. A valid lower
    bound for any scheduler: by induction over admissions, the sorted finish times are
    monotone in the instance spans (an order statistic of monotone terms), and a real span
    is at least the critical path. It is the unlimited-PEA reference, in closed form."""
    if not cps:
        return 0.0
    k = max(1, k)
    heap = list(cps[:k])
    heapq.heapify(heap)
    for c in cps[k:]:
        heapq.heappush(heap, heapq.heappop(heap) + c)
    return max(heap)


def summarize(sim) -> dict:
    """Everything a run reports, as plain numbers (JSON-ready)."""
    T_ = sim.makespan or 1e-12
    lat = [f - a for f, a in zip(sim.instances.finish, sim.instances.arrive)]
    n = sim.arch.n_peas
    tot = T_ * n
    bound = lower_bound(sim)
    util = [b / T_ for b in sim.time.busy]
    n_tasks = sum(1 for x in sim.inv.node if x < sim.n_tasks)
    return {
        "scheduler": sim.sched.name,
        "workflow": sim.cw.wf.name,
        "level": sim.cw.level,
        "arch": sim.arch.name,
        "instances": len(lat),
        "invocations": len(sim.inv.node),
        "task_invocations": n_tasks,
        "makespan_us": sim.makespan,
        "latency_mean_us": sum(lat) / len(lat) if lat else 0.0,
        "latency_p50_us": percentile(lat, 50),
        "latency_p99_us": percentile(lat, 99),
        "throughput_per_ms": len(lat) / T_ * 1000.0,
        "utilization": sum(sim.time.busy) / tot,
        "utilization_max_pea": max(util) if util else 0.0,
        "idle_breakdown": {
            "busy": sum(sim.time.busy) / tot,
            "starved": sum(sim.time.starved) / tot,
            "waiting_input": sum(sim.time.waiting) / tot,
            "reconfiguring": sum(sim.time.reconf) / tot,
            "transferring": sum(sim.time.xfer) / tot,
            "blocked": sum(sim.time.blocked) / tot,
        },
        # share of PEA time (inside busy) spent evaluating data-plane control decisions
        "data_plane_decisions": sim.dp_pea_us / tot,
        "backpressure_stalls": sim.buffers.blocked_events,
        "buffer_spills": sim.buffers.spills,
        "reconfigurations": sim.physics.n_reconfig,
        "noc_bytes": sim.physics.noc_bytes,
        "noc_byte_hops": sim.physics.noc_byte_hops,
        "events": sim.n_events,
        **bound,
        "vs_bound": sim.makespan / bound["bound_us"] if bound["bound_us"] else float("nan"),
        "vs_window_bound": (
            sim.makespan / bound["window_bound_us"] if bound["window_bound_us"] else float("nan")
        ),
    }


def ratio_text(x: float | None) -> str:
    """A ratio as `1.23x`, or `-` when it is undefined (NaN, or None from JSON): a ratio to
    a lower bound of 0 (a workflow with no work and no decisions) printed as `nanx`."""
    return f"{x:.2f}x" if x is not None and math.isfinite(x) else "-"


def format_summary(s: dict) -> str:
    ib = s["idle_breakdown"]
    undefined = ratio_text(s["vs_bound"]) == "-" or ratio_text(s["vs_window_bound"]) == "-"
    note = ["  (ratio -: undefined, the bound is 0: no work to do; null in the JSON)"]
    return "\n".join(
        [
            f"workflow {s['workflow']} ({s['level']}) on {s['arch']} with {s['scheduler']}",
            f"  instances {s['instances']}, task invocations {s['task_invocations']}",
            f"  makespan {s['makespan_us'] / 1000:.3f} ms   lower bound {s['bound_us'] / 1000:.3f} ms"
            f"   ratio {ratio_text(s['vs_bound'])}   (window bound "
            f"{s['window_bound_us'] / 1000:.3f} ms, ratio {ratio_text(s['vs_window_bound'])})",
            *(note if undefined else []),
            f"  latency mean {s['latency_mean_us'] / 1000:.3f} ms  p50 "
            f"{s['latency_p50_us'] / 1000:.3f} ms  p99 {s['latency_p99_us'] / 1000:.3f} ms",
            f"  throughput {s['throughput_per_ms']:.3f} instances/ms",
            f"  PEA time: busy {ib['busy']:.1%}  starved {ib['starved']:.1%}  waiting-input "
            f"{ib['waiting_input']:.1%}  reconfiguring {ib['reconfiguring']:.1%}  transferring "
            f"{ib['transferring']:.1%}  blocked {ib['blocked']:.1%}",
            f"  reconfigurations {s['reconfigurations']}   NoC {s['noc_bytes'] / 1e6:.1f} MB "
            f"({s['noc_byte_hops'] / 1e6:.1f} MB-hops)",
        ]
    )

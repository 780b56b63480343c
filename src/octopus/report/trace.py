"""Chrome / Perfetto trace JSON: one process per cluster, one thread per PEA."""

from __future__ import annotations

import json


def trace_events(sim) -> list[dict]:
    names, cl, T = sim.cw.names, sim.arch.pea_cluster, sim.n_tasks
    ev: list[dict] = []
    for c in range(sim.arch.n_clusters):
        ev.append({"ph": "M", "name": "process_name", "pid": c, "args": {"name": f"cluster {c}"}})
    for k, nd in enumerate(sim.inv.node):
        if nd >= T:
            ev.append(
                {
                    "ph": "i",
                    "name": names[nd],
                    "ts": sim.inv.t_end[k],
                    "pid": sim.instances.home[sim.inv.inst[k]],
                    "tid": -1,
                    "s": "p",
                    "args": {"instance": sim.inv.inst[k], "successors": len(sim.inv.succ[k])},
                }
            )
            continue
        for p in sim.inv.peas[k]:
            ev.append(
                {
                    "ph": "X",
                    "name": names[nd],
                    "cat": "busy",
                    "ts": sim.inv.t_start[k],
                    "dur": sim.inv.t_end[k] - sim.inv.t_start[k],
                    "pid": cl[p],
                    "tid": p,
                    "args": {"instance": sim.inv.inst[k], "invocation": k},
                }
            )
    end = sim.makespan
    for p, a, b, tb in sim.physics.reconf_spans:
        # A configuration loaded ahead for work that never came can still be running when the
        # last instance finishes; the run, and its time accounting, end at the makespan.
        if a >= end:
            continue
        ev.append(
            {
                "ph": "X",
                "name": f"reconfigure->{names[tb]}",
                "cat": "reconfig",
                "ts": a,
                "dur": min(b, end) - a,
                "pid": cl[p],
                "tid": p,
            }
        )
    return ev


def write_trace(sim, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"traceEvents": trace_events(sim), "displayTimeUnit": "ms"}, f)

"""Chrome / Perfetto trace JSON: one process per cluster, one thread per PEA."""

from __future__ import annotations

import json


def trace_events(sim) -> list[dict]:
    names, cl, T = sim.cw.names, sim.pea_cluster, sim.T
    ev: list[dict] = []
    for c in range(sim.arch.n_clusters):
        ev.append({"ph": "M", "name": "process_name", "pid": c, "args": {"name": f"cluster {c}"}})
    for k, nd in enumerate(sim.node):
        if nd >= T:
            ev.append(
                {
                    "ph": "i",
                    "name": names[nd],
                    "ts": sim.t_end[k],
                    "pid": sim.inst_home[sim.inst[k]],
                    "tid": -1,
                    "s": "p",
                    "args": {"instance": sim.inst[k], "successors": len(sim.succ[k])},
                }
            )
            continue
        for p in sim.peas_of[k]:
            ev.append(
                {
                    "ph": "X",
                    "name": names[nd],
                    "cat": "busy",
                    "ts": sim.t_start[k],
                    "dur": sim.t_end[k] - sim.t_start[k],
                    "pid": cl[p],
                    "tid": p,
                    "args": {"instance": sim.inst[k], "invocation": k},
                }
            )
    for p, a, b, tb in sim.reconf_spans:
        ev.append(
            {
                "ph": "X",
                "name": f"reconfigure->{names[tb]}",
                "cat": "reconfig",
                "ts": a,
                "dur": b - a,
                "pid": cl[p],
                "tid": p,
            }
        )
    return ev


def write_trace(sim, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"traceEvents": trace_events(sim), "displayTimeUnit": "ms"}, f)

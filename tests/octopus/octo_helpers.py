"""Small builders shared by the octopus tests."""

from __future__ import annotations

from pathlib import Path

from octopus.arch.config import arch_from_dict
from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.sched import make_scheduler
from octopus.sim import Simulator


def arch(
    clusters=(1, 1),
    peas=(1, 1),
    per_die=None,
    hop=0.0,
    bw=64.0,
    rc_base=0.0,
    ctrl=0.5,
    slots=0,
    contention=False,
    mappings=("replicated",),
    memory=0,
    data_plane=None,
    dp_pea=0.0,
):
    return arch_from_dict(
        {
            "schema": "octopus-arch/1",
            "name": "test",
            "clusters": list(clusters),
            "peas_per_cluster": list(peas),
            "clusters_per_die": list(per_die or clusters),
            "pea": {"throughput_tops": 1.0, "memory_bytes": memory},
            "buffer": {"slots_per_pea": slots},
            "baseline": {"mappings": list(mappings)},
            "mesh": {
                "hop_latency_us": hop,
                "link_bandwidth_gbps": bw,
                "inter_die_hop_latency_us": 0.3,
                "inter_die_bandwidth_gbps": 16,
                "link_contention": contention,
            },
            "reconfig": {"base_us": rc_base, "bandwidth_gbps": 8},
            "control": {
                "control_plane_latency_us": ctrl,
                "data_plane_latency_us": ctrl if data_plane is None else data_plane,
                "data_plane_pea_us": dp_pea,
            },
        }
    )


def task(id, work, next=(), **kw):
    d = {"id": id, "type": "task", "work": work, "next": list(next)}
    d.update(kw)
    return d


def fan_branch_loop(fan_high, w, x, y, z, w_kw=None):
    """The nodes after the entry chain that the random-workflow tests share: a fanout of 0 to
    ``fan_high`` bodies ``w`` (with ``w_kw``) into a join, a branch to ``x`` or to a loop of
    ``y`` (continuing with probability 0.6, at most 4 trips) that exits to ``z``."""
    return [
        {
            "id": "fan",
            "type": "fanout",
            "count": {"dist": "uniform", "low": 0, "high": fan_high},
            "body": "w",
            "join": "j",
        },
        task("w", w, ["j"], **(w_kw or {})),
        {"id": "j", "type": "join", "next": ["br"]},
        {"id": "br", "type": "branch", "next": ["x", "lp"], "probs": [0.5, 0.5]},
        task("x", x),
        {
            "id": "lp",
            "type": "loop",
            "body": "y",
            "exit": "z",
            "continue_prob": 0.6,
            "max_trips": 4,
        },
        task("y", y, ["lp"]),
        task("z", z),
    ]


def workflow(nodes, entry=None):
    return {
        "schema": "octopus-owg/1",
        "name": "t",
        "entry": entry or nodes[0]["id"],
        "nodes": nodes,
    }


TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "octopus_tutorial" / "shortest_wait.py"
TUTORIAL_SPEC = f"{TUTORIAL}:ShortestWait"


def simulate(
    doc, a, scheduler="greedy", n=1, concurrency=None, seed=0, record=True, strict=False, **kw
):
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    arr = Arrivals(n, None, concurrency or n)
    sched = make_scheduler(scheduler, **kw)
    return Simulator(cw, a, sched, arr, seed=seed, record=record, strict=strict).run()


def slow_or_fail(item: tuple[str, str]) -> str:
    """A grid point for the executor tests: ("slow", folder) writes its process id into
    folder and sleeps 20 s; ("fail", folder) waits until a slow point has started (so a
    worker is busy), then raises."""
    import os
    import time

    kind, folder = item
    if kind == "slow":  # written whole, then renamed: the reader never sees an empty file
        tmp = Path(folder, f"{os.getpid()}.tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(tmp.with_suffix(".pid"))
        time.sleep(20)
        return "slept"
    deadline = time.monotonic() + 15
    while not list(Path(folder).glob("*.pid")) and time.monotonic() < deadline:
        time.sleep(0.05)
    raise RuntimeError("this point failed")

"""`octopus bench`: simulator speed, and the SimPy model of the same configuration side by side."""

from __future__ import annotations

import gc
import time

from octopus.arch.config import Arch, free_arch
from octopus.checks import check_seed
from octopus.owg.arrival import Arrivals
from octopus.runner import prepare, run_one
from octopus.sched import make_scheduler
from octopus.sim import Simulator
from octopus.sim.simpy_model import simpy_makespan


def simple_arch(n_peas: int, ctrl_us: float) -> Arch:
    """One cluster, free data movement, free reconfiguration (exactly zero: see
    `free_arch`): the cross-check configuration."""
    return free_arch(f"simple-{n_peas}", (n_peas, 1), ctrl_us)


def simple_workflow_ok(cw) -> bool:
    return all(fp == 1 for fp in cw.footprint)


def cross_check(cw, n_peas=64, n_inst=200, conc=32, seed=0, ctrl_us=0.5, repeat=1):
    """Run both models on the same instances; return timings and makespans."""
    a = simple_arch(n_peas, ctrl_us)
    arr = Arrivals(n_inst, None, min(conc, n_inst))
    # both models execute the same pre-sampled instances: the timing compares the engines
    pre = [cw.sample(cw.instance_rng(seed, i), i, seed) for i in range(n_inst)]
    prof = cw.profile(n=50)
    t_core = t_simpy = float("inf")
    for _ in range(repeat):  # best of `repeat`, interleaved: the machine is shared
        # each engine starts with no garbage of the other's to collect (the core pauses the
        # cyclic collector during its event loop: its run leaves more for the next one)
        gc.collect()
        t0 = time.perf_counter()
        sim = Simulator(cw, a, make_scheduler("greedy"), arr, seed, profile=prof, presampled=pre)
        sim.run()
        t_core = min(t_core, time.perf_counter() - t0)
        gc.collect()
        t0 = time.perf_counter()
        ms, n_tasks = simpy_makespan(cw, n_peas, ctrl_us, a.throughput_tops, arr, seed, pre)
        t_simpy = min(t_simpy, time.perf_counter() - t0)
    return {
        "core_s": t_core,
        "simpy_s": t_simpy,
        "core_makespan_us": sim.makespan,
        "simpy_makespan_us": ms,
        "tasks": n_tasks,
        "events": sim.n_events,
    }


def profile_run(cw, a, seed: int, instances: int, prof: dict, top: int) -> None:
    """Full Octopus under cProfile: the `top` functions by own time, then by cumulative
    time (the profiler inflates the cost of calls: read it for where, not how fast)."""
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    sim = run_one(cw, a, "octopus", seed, instances, profile=prof)
    pr.disable()
    print(f"cProfile of full Octopus on {a.name}, {instances} instances, {sim.n_events} events")
    st = pstats.Stats(pr)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)


def bench(
    arch="wafer",
    workflow="video_recognition",
    instances=None,
    seed=0,
    simpy_instances=400,
    profile_top: int = 0,
):
    check_seed(seed, "bench: --seed")
    cw, a = prepare(workflow, arch, "high")
    prof = cw.profile()
    if instances is None:  # size the run to >= 200,000 task-block invocations
        per = sum(prof["calls"])
        instances = int(200_000 / per * 1.05) + 1
    # the compiled pieces (numba) load once per process, from numba's cache after the first
    # run: that start-up cost is printed apart, not counted in the run's events/s (nor
    # profiled)
    c0 = time.process_time()
    import octopus.sched.shares  # noqa: F401
    import octopus.sim.links  # noqa: F401

    load_s = time.process_time() - c0
    if profile_top:
        profile_run(cw, a, seed, instances, prof, profile_top)
        return None
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    sim = run_one(cw, a, "octopus", seed, instances, profile=prof)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    ntask = sum(1 for x in sim.inv.node if x < sim.n_tasks)
    events = sim.n_events
    del sim  # free the large run before timing the small one
    gc.collect()
    print(f"full Octopus on {a.name} ({a.n_peas} PEAs), {workflow}, {instances} instances")
    print(f"  task-block invocations {ntask}, events {events}")
    print(f"  wall {dt:.2f} s   {events / dt:,.0f} events/s   {instances / dt:,.1f} instances/s")
    # on a shared machine the process's CPU time is the steadier figure (wall counts the
    # time the other jobs held the cores)
    print(f"  cpu  {cpu:.2f} s   {events / cpu:,.0f} events/s")
    if load_s:
        print(f"  (before it: {load_s:.2f} s CPU to load the compiled pieces, once per process)")
    # side by side with SimPy, on the simple configuration both can model
    cs = cw
    if not simple_workflow_ok(cw):
        from octopus.owg import load_workflow
        from octopus.owg.sample import CompiledWorkflow

        wf = load_workflow("recommendation")
        for b in wf.nodes.values():
            if b.type == "task":
                b.footprint = 1
        cs = CompiledWorkflow(wf, "high")
    # each run is short, so the best of many, interleaved, is what the two engines can do
    r = cross_check(cs, n_inst=simpy_instances, seed=seed, repeat=15)
    ratio = r["simpy_s"] / r["core_s"]
    print(
        f"simple configuration ({cs.wf.name}, 64 PEAs, FCFS, {simpy_instances} instances, "
        "best of 15, interleaved):"
    )
    print(
        f"  core  {r['core_s']:.3f} s  makespan {r['core_makespan_us']:.3f} us  "
        f"({r['events'] / r['core_s']:,.0f} events/s)"
    )
    print(f"  simpy {r['simpy_s']:.3f} s  makespan {r['simpy_makespan_us']:.3f} us")
    print(
        f"  core is {ratio:.2f}x faster than SimPy; makespans agree: "
        f"{abs(r['core_makespan_us'] - r['simpy_makespan_us']) < 1e-6 * r['simpy_makespan_us']}"
    )
    return {
        "wall_s": dt,
        "cpu_s": cpu,
        "load_s": load_s,
        "events": events,
        "tasks": ntask,
        "simpy_ratio": ratio,
        **r,
    }

"""The physical model shared by every scheduler: bounded buffers with back-pressure, mesh
link contention, the fabric-region baseline mapping and layer-group splitting."""

import pytest
from octo_helpers import arch, simulate, task, workflow

from octopus.owg.arrival import Arrivals
from octopus.owg.sample import CompiledWorkflow, split_stages
from octopus.owg.schema import parse_workflow
from octopus.sched import make_scheduler
from octopus.sim import Simulator


def _pipeline(a_us, b_us):
    return workflow([task("a", a_us, ["b"], out_bytes=0), task("b", b_us, out_bytes=0)])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_buffer_of_one_stalls_the_producer_behind_a_slow_consumer(n):
    # stage a (10 us) feeds stage b (30 us), one PEA each, one output slot per PEA: a's
    # result waits in a's only slot until b reads it, so a is blocked 30 - 10 us per item
    # after the first; b is the bottleneck and the makespan is 10 + 30 n.
    a = arch(peas=(2, 1), slots=1)
    sim = simulate(_pipeline(10.0, 30.0), a, "static", n=n)
    pa = next(p for p in range(2) if sim.sched.own[p] == 0)
    assert sim.makespan == pytest.approx(10.0 + 30.0 * n)
    assert sim.time.blocked[pa] == pytest.approx((n - 1) * 20.0)
    assert sim.time.blocked[1 - pa] == 0.0
    # unbounded buffers: the same makespan, and a never blocks (it idles instead)
    free = simulate(_pipeline(10.0, 30.0), arch(peas=(2, 1), slots=0), "static", n=n)
    assert free.makespan == pytest.approx(10.0 + 30.0 * n)
    assert sum(free.time.blocked) == 0.0


def test_blocked_time_is_its_own_idle_category_and_accounting_is_exact():
    sim = simulate(_pipeline(10.0, 30.0), arch(peas=(2, 1), slots=1), "static", n=4)
    T = sim.makespan
    for p in range(2):
        parts = sim.time.split(p)
        assert sum(parts) == pytest.approx(T)
    from octopus.report.metrics import summarize

    assert summarize(sim)["idle_breakdown"]["blocked"] > 0


def _bare_sim(a):
    cw = CompiledWorkflow(parse_workflow(workflow([task("a", 1.0)])), "high")
    return Simulator(cw, a, make_scheduler("greedy"), Arrivals(1, None, 1))


def test_two_transfers_sharing_a_link_take_the_summed_time():
    a = arch(peas=(4, 1), hop=0.1, bw=10.0, contention=True)
    sim = _bare_sim(a)
    b1, b2 = 20000.0, 30000.0  # 2 us and 3 us at 10 GB/s
    lat = 3 * 0.1  # PEA 0 -> PEA 3: three hops
    assert sim.physics.transfer(0, 3, b1, 0.0) == pytest.approx(lat + 2.0)
    # the second waits for the shared links: the serialisation times add up
    assert sim.physics.transfer(0, 3, b2, 0.0) == pytest.approx(lat + 2.0 + 3.0)
    # a transfer on disjoint links (the opposite direction) is not delayed
    assert sim.physics.transfer(3, 0, b1, 0.0) == pytest.approx(lat + 2.0)
    # partly shared route (PEA 1 -> 2 uses the middle link): waits for it
    assert sim.physics.transfer(1, 2, 0.0, 0.0) == pytest.approx(0.1 + 5.0)


def test_without_contention_parallel_transfers_do_not_interfere():
    a = arch(clusters=(2, 1), peas=(2, 1), hop=0.0, bw=1.0, contention=False)
    wf = workflow(
        [
            task("src", 1.0, ["fan"], out_bytes=1000),
            {"id": "fan", "type": "fanout", "count": 2, "body": "w", "join": "j"},
            task("w", 5.0, ["j"]),
            {"id": "j", "type": "join"},
        ]
    )
    on = simulate(wf, arch(clusters=(2, 1), peas=(2, 1), bw=1.0, contention=True), "greedy")
    off = simulate(wf, a, "greedy")
    assert off.makespan <= on.makespan


@pytest.mark.parametrize("clusters,peas", [((2, 2), (4, 4)), ((4, 2), (2, 4))])
def test_region_mapping_puts_each_tb_in_one_compact_region(clusters, peas):
    nodes = [
        task("a", 100.0, ["b"]),
        task("b", 300.0, ["c"]),
        task("c", 200.0, ["d"]),
        task("d", 50.0),
    ]
    a = arch(clusters=clusters, peas=peas, mappings=("regions",))
    sim = simulate(workflow(nodes), a, "static")
    own = sim.sched.own
    assert sim.sched.mapping == "regions"
    by_tb: dict[int, set] = {}
    for p, tb in enumerate(own):
        by_tb.setdefault(tb, set()).add((a.pea_x[p], a.pea_y[p]))
    assert sorted(by_tb) == [0, 1, 2, 3]
    for cells in by_tb.values():  # one connected region of the fabric
        seen, todo = set(), [next(iter(cells))]
        while todo:
            x, y = todo.pop()
            if (x, y) in seen:
                continue
            seen.add((x, y))
            todo += [c for c in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)) if c in cells]
        assert seen == cells
    # and in proportion to the load over the whole fabric (not per cluster)
    sizes = [len(by_tb[tb]) for tb in range(4)]
    assert sizes[1] > sizes[2] > sizes[0] > sizes[3]
    # the replicated mapping instead gives every cluster every TB
    rep = simulate(workflow(nodes), arch(clusters=clusters, peas=peas), "static")
    for ids in a.cluster_peas:
        assert {rep.sched.own[p] for p in ids} == {0, 1, 2, 3}


def test_reactive_best_run_takes_the_better_mapping():
    from octopus.runner import best_reactive

    nodes = [task("a", 100.0, ["b"], out_bytes=10000), task("b", 300.0, out_bytes=10000)]
    cw = CompiledWorkflow(parse_workflow(workflow(nodes)), "high")
    cw.wf.arrival = {"process": "batch", "instances_per_cluster": 4}
    a = arch(clusters=(2, 1), peas=(2, 2), mappings=("regions", "replicated"))
    best, th = best_reactive(cw, a, thresholds=(1.0, float("inf")))
    runs = [
        best_reactive(cw, a, thresholds=(1.0, float("inf")), mappings=(m,))[0].makespan
        for m in ("regions", "replicated")
    ]
    assert best.makespan == pytest.approx(min(runs))
    assert best.best_static.makespan >= best.makespan - 1e-9


def test_a_model_too_big_for_its_pea_memory_is_split_into_layer_groups():
    mem = 1000
    wf = parse_workflow(
        workflow(
            [
                task("a", 90.0, ["b"], config_bytes=2500, out_bytes=7, in_bytes=40),
                task("b", 10.0, config_bytes=900, footprint=1),
            ]
        )
    )
    sw = split_stages(wf, mem)
    assert sw.tasks == ["a", "a/2", "a/3", "b"]  # ceil(2500 / 1000) = 3 groups; b fits
    assert [sw.nodes[n].config_bytes for n in ("a", "a/2", "a/3")] == [834, 834, 834]
    assert sw.nodes["a"].next == ["a/2"] and sw.nodes["a/3"].next == ["b"]
    assert sw.nodes["a/2"].out_bytes == 40 and sw.nodes["a/3"].out_bytes == 7
    cw = CompiledWorkflow(sw, "high")
    inst = cw.sample(cw.instance_rng(0, 0))
    assert inst.work == pytest.approx([30.0, 30.0, 30.0, 10.0])
    # a chain on one PEA takes the sum of the block times and of each group's loading
    sim = Simulator(cw, arch(peas=(1, 1)), make_scheduler("greedy"), Arrivals(1, None, 1)).run()
    assert sim.makespan == pytest.approx(100.0 + (3 * 834 + 900) / 8000.0)
    assert split_stages(wf, 0) is wf


def test_a_buffer_deadlock_is_recovered_by_spilling():
    # one PEA, one slot: the loop body can only run on the PEA that holds its input
    nodes = [
        task("t0", 5.0, ["lp"], out_bytes=10),
        {"id": "lp", "type": "loop", "body": "y", "exit": "z", "trips": 3, "max_trips": 3},
        task("y", 7.0, ["lp"], out_bytes=10),
        task("z", 1.0),
    ]
    sim = simulate(workflow(nodes), arch(peas=(1, 1), slots=1, ctrl=0.5), "greedy")
    assert sim.finished == 1 and sim.buffers.spills > 0
    assert sim.makespan == pytest.approx(5.0 + 3 * 7.0 + 1.0 + 4 * 0.5)

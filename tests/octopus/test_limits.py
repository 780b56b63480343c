"""Huge sizes fail at once with a message naming the node (or file) and the field, and a
size in bytes costs no time in proportion to its value: before, a fanout count of 1e9, a
config_bytes of 1e10 on 0.5 MiB PEAs or a max_trips of 1e9 hung `octopus run`."""

import pytest
from octo_helpers import arch, simulate, task, workflow

from octopus.owg.schema import (
    MAX_INSTANCE_INVOCATIONS,
    MAX_INSTANCES,
    MAX_LAYER_GROUPS,
    WorkflowError,
    parse_workflow,
)

pytestmark = pytest.mark.timeout(30)


def _fanout(count, body=("b",), **kw):
    nodes = [
        task("a", 1, ["f"]),
        {"id": "f", "type": "fanout", "count": count, "body": body[0], "join": "j", **kw},
        *[task(b, 1, [nxt]) for b, nxt in zip(body, [*body[1:], "j"])],
        {"id": "j", "type": "join"},
    ]
    return workflow(nodes)


def _loop(**kw):
    lp = {"id": "lp", "type": "loop", "body": "b", "exit": "c", **kw}
    return workflow([task("a", 1, ["lp"]), lp, task("b", 1, ["lp"]), task("c", 1)])


def _err(doc) -> str:
    with pytest.raises(WorkflowError) as e:
        parse_workflow(doc)
    return str(e.value)


@pytest.mark.parametrize("count", [1e9, {"dist": "lognormal", "mean": 1e8, "cv": 0.5}])
def test_a_fanout_count_past_the_limit_is_refused_at_load(count):
    msg = _err(_fanout(count))
    assert "node 'f'" in msg and "'count'" in msg and str(MAX_INSTANCE_INVOCATIONS) in msg
    assert "MAX_INSTANCE_INVOCATIONS" in msg
    # a max_count within the limit caps it: valid, and it runs
    sim = simulate(_fanout(count, max_count=3), arch(peas=(2, 2)), n=2)
    assert sim.makespan > 0


def test_nested_fanouts_past_the_limit_fail_when_sampled_naming_the_fanout():
    """Each count alone is within the limit; their product per instance is not."""
    doc = _fanout(200, body=("g",))
    doc["nodes"][2:3] = [
        {"id": "g", "type": "fanout", "count": 200, "body": "b", "join": "k"},
        task("b", 1, ["k"]),
        {"id": "k", "type": "join", "next": ["j"]},
    ]
    with pytest.raises(ValueError) as e:
        simulate(doc, arch(peas=(2, 2)), n=1)
    msg = str(e.value)
    assert ("node 'f'" in msg or "node 'g'" in msg) and "'count'" in msg
    assert str(MAX_INSTANCE_INVOCATIONS) in msg


def test_a_large_loop_bound_costs_no_time():
    """max_trips is a bound: 1e9 as "unbounded" is fine (its mean is in closed form; it
    was a sum of 1e9 terms)."""
    sim = simulate(_loop(continue_prob=0.5, max_trips=10**9), arch(peas=(2, 2)), n=4)
    assert sim.makespan > 0


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"continue_prob": 1.0, "max_trips": 10**9}, "continue_prob"),
        ({"trips": 1e9, "max_trips": 10**9}, "trips"),
    ],
)
def test_loop_trips_past_the_limit_are_refused_at_load(kw, field):
    msg = _err(_loop(**kw))
    assert "node 'lp'" in msg and f"'{field}'" in msg and "MAX_INSTANCE_INVOCATIONS" in msg


def test_a_do_while_tail_past_the_limit_fails_when_sampled():
    """Mean 5,000 trips (within the limit); most instances draw past 10,000."""
    p = 1 - 1 / 5000
    with pytest.raises(ValueError) as e:
        simulate(_loop(continue_prob=p, max_trips=10**6), arch(peas=(2, 2)), n=40)
    assert "node 'lp'" in str(e.value) and "'continue_prob'" in str(e.value)


def test_config_bytes_past_the_layer_group_limit_is_refused_naming_the_node():
    from octopus.runner import prepare

    wf = parse_workflow(workflow([task("a", 1, config_bytes=1e10)]))
    with pytest.raises(ValueError) as e:
        prepare(wf, arch(peas=(2, 2), memory=524288))
    msg = str(e.value)
    assert "node 'a'" in msg and "'config_bytes'" in msg and "MAX_LAYER_GROUPS" in msg
    assert str(MAX_LAYER_GROUPS) in msg
    # without a memory limit (no layer groups), a size in bytes costs nothing
    sim = simulate(workflow([task("a", 1, ["b"], config_bytes=1e10), task("b", 1)]), arch())
    assert sim.makespan > 1e6  # 1e10 bytes at 8 GB/s: 1.25e6 us of reconfiguration


def test_an_architecture_past_the_pea_limit_is_refused_before_building():
    from octopus.arch.config import MAX_PEAS

    with pytest.raises(ValueError) as e:
        arch(clusters=(1025, 1), peas=(32, 32))  # 1,049,600 PEAs
    msg = str(e.value)
    assert "'clusters'" in msg and "'peas_per_cluster'" in msg and str(MAX_PEAS) in msg


def test_instance_counts_past_the_limit_are_refused():
    from octopus.grid import parse_grid
    from octopus.owg.arrival import make_arrivals

    with pytest.raises(ValueError, match="instances.*MAX_INSTANCES"):
        make_arrivals({"process": "batch"}, 1, 0, 10**9)
    with pytest.raises(ValueError, match="'instances_per_cluster'.*MAX_INSTANCES"):
        make_arrivals({"process": "batch", "instances_per_cluster": 10**5}, 64, 0)
    doc = workflow([task("a", 1)])
    doc["arrival"] = {"process": "poisson", "instances_per_cluster": 1e9}
    assert "'instances_per_cluster'" in _err(doc)
    grid = {"workflows": ["x"], "architectures": ["chip"], "schedulers": ["greedy"]}
    with pytest.raises(ValueError, match="'instances'.*MAX_INSTANCES"):
        parse_grid({**grid, "instances": MAX_INSTANCES + 1})


def test_a_task_too_long_for_the_tick_grid_names_the_node():
    """A task of 1e200 us ends where ticks of 100 us no longer advance the clock (t + tick
    rounds back to t). It overflowed in the work classification (OverflowError); a task of
    1e9 us, refused before as longer than the simulator models, now simulates
    (test_long_tasks)."""
    doc = workflow([task("a", 1, ["b"]), task("b", 1e200)])
    with pytest.raises(ValueError) as e:
        simulate(doc, arch(peas=(2, 2)), "octopus", n=2)
    msg = str(e.value)
    assert "node 'b'" in msg and "'work'" in msg and "'tick_us'" in msg
    assert "no longer advance the clock" in msg


def test_a_transfer_too_long_for_the_tick_grid_names_the_node():
    doc = workflow([task("a", 1, ["b"], out_bytes=1e30), task("b", 1)])
    with pytest.raises(ValueError) as e:
        simulate(doc, arch(peas=(2, 2), hop=0.01), "octopus", n=2)
    assert "node 'b'" in str(e.value) and "'out_bytes'" in str(e.value)
    # 1e15 bytes at 64 GB/s, 4.3 hours of transfer: simulated
    doc = workflow([task("a", 1, ["b"], out_bytes=1e15), task("b", 1)])
    sim = simulate(doc, arch(peas=(2, 2), hop=0.01), "octopus", n=2)
    assert sim.makespan == pytest.approx(2.0 + 0.01 + 1e15 / 64000.0)


def test_a_control_latency_too_long_for_the_tick_grid_names_the_fields():
    doc = workflow(
        [
            task("a", 1, ["br"]),
            {"id": "br", "type": "branch", "next": ["b", "c"], "probs": [0.5, 0.5]},
            task("b", 1),
            task("c", 1),
        ]
    )
    with pytest.raises(ValueError) as e:
        simulate(doc, arch(peas=(2, 2), ctrl=1e30), "octopus", n=2)
    assert "node 'br'" in str(e.value) and "'control.*'" in str(e.value)
    sim = simulate(doc, arch(peas=(2, 2), ctrl=1e7), "octopus", n=2)  # 10 s: simulated
    assert sim.makespan == 2.0 + 1e7


def test_a_huge_burst_is_one_burst_at_once():
    from octopus.openloop import arrival_times

    times = arrival_times(1.0, 50, 0, "bursty", burst=1e18)
    assert times == [0.0] * 50
    # the cap changes no arrival of an ordinary burst size
    assert len(set(arrival_times(1.0, 400, 3, "bursty", burst=8.0))) > 20


def test_load_refine_and_instances_past_their_limits_exit_2(capsys):
    from octopus.cli import main

    base = ["load", "-w", "recommendation", "-s", "greedy", "--fractions", "0.5"]
    assert main([*base, "--refine", "1000000000"]) == 2
    assert "MAX_REFINE" in capsys.readouterr().err
    one_rate = ["load", "-w", "recommendation", "-s", "greedy", "--rate", "1"]
    assert main([*one_rate, "--instances", str(10**9)]) == 2
    assert "MAX_INSTANCES" in capsys.readouterr().err


def test_an_exponent_yaml_reads_as_text_gets_a_hint():
    """PyYAML reads `count: 1e9` as the text '1e9'; the message says how to write it."""
    import yaml

    doc = workflow([task("a", 1)])
    doc["nodes"][0]["work"] = yaml.safe_load("w: 2e3")["w"]
    assert doc["nodes"][0]["work"] == "2e3"  # what PyYAML does, the reason for the hint
    msg = _err(doc)
    assert "'a'" in msg and "work" in msg and "write 1.0e9" in msg and "2e3" in msg
    doc = workflow([task("a", 1)])
    doc["nodes"][0]["work"] = {"dist": "lognormal", "mean": "1e3", "cv": 0.5}
    assert "write 1.0e9" in _err(doc)


def test_text_that_is_no_number_gets_no_hint():
    doc = workflow([task("a", "lots")])
    msg = _err(doc)
    assert "'lots'" in msg and "1.0e9" not in msg

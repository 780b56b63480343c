"""Every invalid workflow is rejected with a message naming the node and the field."""

import pytest
from octo_helpers import task, workflow

from octopus.owg.schema import WorkflowError, parse_workflow


def _err(doc) -> str:
    with pytest.raises(WorkflowError) as e:
        parse_workflow(doc)
    return str(e.value)


def test_unknown_successor():
    msg = _err(workflow([task("a", 1, ["ghost"])]))
    assert "node 'a'" in msg and "'next'" in msg and "ghost" in msg


def test_branch_probabilities_must_sum_to_one():
    doc = workflow(
        [
            task("a", 1, ["br"]),
            {"id": "br", "type": "branch", "next": ["x", "y"], "probs": [0.5, 0.4]},
            task("x", 1),
            task("y", 1),
        ]
    )
    msg = _err(doc)
    assert "node 'br'" in msg and "'probs'" in msg and "not 1" in msg


def test_cycle_without_loop():
    msg = _err(workflow([task("a", 1, ["b"]), task("b", 1, ["a"])]))
    assert "cycle" in msg and "'next'" in msg and ("node 'a'" in msg or "node 'b'" in msg)


def test_loop_without_bound():
    doc = workflow(
        [
            task("a", 1, ["lp"]),
            {"id": "lp", "type": "loop", "body": "b", "exit": "c", "continue_prob": 0.5},
            task("b", 1, ["lp"]),
            task("c", 1),
        ]
    )
    msg = _err(doc)
    assert "node 'lp'" in msg and "'max_trips'" in msg and "bound" in msg


@pytest.mark.parametrize("field", ["out_bytes", "in_bytes", "config_bytes"])
def test_negative_sizes(field):
    msg = _err(workflow([task("a", 1, **{field: -5})]))
    assert "node 'a'" in msg and f"'{field}'" in msg and "negative" in msg


def test_negative_work_and_bad_distribution():
    msg = _err(workflow([task("a", {"dist": "normal", "mean": -3, "std": 1})]))
    assert "node 'a'" in msg and "'work'" in msg
    msg = _err(workflow([task("a", {"dist": "zipf"})]))
    assert "node 'a'" in msg and "unknown distribution" in msg


def test_several_problems_are_all_reported():
    doc = workflow([task("a", 1, ["nope"], out_bytes=-1), task("b", 1, ["also_nope"])])
    with pytest.raises(WorkflowError) as e:
        parse_workflow(doc)
    assert len(e.value.problems) == 3


def test_loop_governs_its_cycle_and_is_valid():
    doc = workflow(
        [
            task("a", 1, ["lp"]),
            {"id": "lp", "type": "loop", "body": "b", "exit": "c", "trips": 3, "max_trips": 5},
            task("b", 1, ["lp"]),
            task("c", 1),
        ]
    )
    wf = parse_workflow(doc)
    assert wf.tasks == ["a", "b", "c"]


def test_all_shipped_workflows_validate():
    from octopus.owg import load_workflow
    from octopus.workloads import SUITE, list_workloads

    assert set(SUITE) <= set(list_workloads())
    for name in SUITE:
        wf = load_workflow(name)
        assert wf.meta.get("sources"), f"{name} must document where its parameters come from"
        assert set(wf.levels) >= {"low", "medium", "high"}


@pytest.mark.parametrize("exit_to", ["c", "lp"])
def test_cycle_through_a_loop_exit_is_not_governed(exit_to):
    """Only the loop's body path may return to it: an edge back from its exit path (or an
    exit to itself) loops forever when an instance is unrolled."""
    nodes = [
        task("a", 1, ["lp"]),
        {"id": "lp", "type": "loop", "body": "b", "exit": exit_to, "trips": 2, "max_trips": 3},
        task("b", 1, ["lp"]),
    ]
    if exit_to == "c":
        nodes.append(task("c", 1, ["lp"]))
    msg = _err(workflow(nodes))
    assert "cycle" in msg and "not governed by a loop block" in msg and "lp" in msg


def test_nested_loops_are_governed():
    doc = workflow(
        [
            task("a", 1, ["outer"]),
            {"id": "outer", "type": "loop", "body": "b", "exit": "z", "trips": 2, "max_trips": 3},
            task("b", 1, ["inner"]),
            {"id": "inner", "type": "loop", "body": "c", "exit": "d", "trips": 2, "max_trips": 3},
            task("c", 1, ["inner"]),
            task("d", 1, ["outer"]),
            task("z", 1),
        ]
    )
    assert parse_workflow(doc).tasks == ["a", "b", "c", "d", "z"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_are_rejected(bad):
    """NaN passed every `< 0` check and ran to a summary of nan% (exit 0); inf work too."""
    msg = _err(workflow([task("a", bad)]))
    assert "node 'a'" in msg and "'work'" in msg and "finite" in msg
    msg = _err(workflow([task("a", {"dist": "normal", "mean": 5, "std": bad})]))
    assert "node 'a'" in msg and "'work'.std" in msg and "finite" in msg
    msg = _err(workflow([task("a", 1, out_bytes=bad)]))
    assert "node 'a'" in msg and "'out_bytes'" in msg and "finite" in msg
    doc = workflow(
        [
            task("a", 1, ["br"]),
            {"id": "br", "type": "branch", "next": ["x", "y"], "probs": [bad, 1.0]},
            task("x", 1),
            task("y", 1),
        ]
    )
    msg = _err(doc)
    assert "node 'br'" in msg and "'probs'" in msg
    doc = workflow(
        [
            task("a", 1, ["lp"]),
            {"id": "lp", "type": "loop", "body": "b", "exit": "c", "continue_prob": bad},
            task("b", 1, ["lp"]),
            task("c", 1),
        ]
    )
    doc["nodes"][1]["max_trips"] = 3
    msg = _err(doc)
    assert "node 'lp'" in msg and "'continue_prob'" in msg and "finite" in msg


@pytest.mark.parametrize("weights", [["x"], [0], [-1, 2], [float("nan")], [True]], ids=str)
def test_bad_mixture_weights_name_the_component(weights):
    comps = [{"weight": w, "dist": "fixed", "value": 1} for w in weights]
    msg = _err(workflow([task("a", {"dist": "mixture", "components": comps})]))
    assert "node 'a'" in msg and "'work'" in msg and "weight" in msg


def test_reference_fields_of_the_wrong_type_name_node_and_field():
    """A non-list `next` or a list where one node id is expected raised TypeError."""
    msg = _err(workflow([task("a", 1), task("b", 1)]) | {"nodes": [task("a", 1) | {"next": 5}]})
    assert "node 'a'" in msg and "'next'" in msg
    doc = workflow(
        [
            task("a", 1, ["lp"]),
            {"id": "lp", "type": "loop", "body": ["b"], "exit": "c", "trips": 2, "max_trips": 3},
            task("b", 1, ["lp"]),
            task("c", 1),
        ]
    )
    msg = _err(doc)
    assert "node 'lp'" in msg and "'body'" in msg
    doc = workflow(
        [
            task("a", 1, ["x", "y"], join=["j"]),
            task("x", 1, ["j"]),
            task("y", 1, ["j"]),
            {"id": "j", "type": "join"},
        ]
    )
    msg = _err(doc)
    assert "node 'a'" in msg and "'join'" in msg
    msg = _err(workflow([task("a", 1)], entry=["a"]))
    assert "'entry'" in msg


@pytest.mark.parametrize("spread", ["x", -0.5, 2.0, float("nan")], ids=str)
def test_bad_dynamicity_level_names_the_level(spread):
    """A non-numeric spread crashed (TypeError) when the workflow was compiled."""
    doc = workflow([task("a", 1)]) | {"dynamicity": {"low": 0.2, "high": spread}}
    msg = _err(doc)
    assert "'dynamicity'" in msg and "high" in msg


def test_unknown_level_is_a_clear_error(capsys):
    """`--level foo` escaped as a KeyError traceback."""
    from octopus.cli import main

    assert main(["run", "-w", "video_recognition", "--instances", "2", "--level", "foo"]) == 2
    err = capsys.readouterr().err
    assert "'foo'" in err and "low" in err and "high" in err


@pytest.mark.parametrize(
    "arrival, field",
    [
        ({"process": "poisson", "rate_per_cluster_per_ms": 0}, "rate_per_cluster_per_ms"),
        ({"process": "poisson", "rate_per_cluster_per_ms": -2}, "rate_per_cluster_per_ms"),
        ({"process": "closed", "concurrency_per_cluster": "two"}, "concurrency_per_cluster"),
        ({"process": "batch", "instances_per_cluster": float("nan")}, "instances_per_cluster"),
        ({"process": "poison"}, "process"),
        ([1, 2], "arrival"),
    ],
    ids=str,
)
def test_bad_arrival_is_rejected_when_loaded(arrival, field):
    """A zero Poisson rate crashed (ZeroDivisionError) at run time and a negative one
    gave arrival times running backwards; nothing was checked when the file was loaded."""
    msg = _err(workflow([task("a", 1)]) | {"arrival": arrival})
    assert "'arrival'" in msg and field in msg


def _arch_err(**changes) -> str:
    """The chip file with `section.field` (or a top-level key; None drops it) changed."""
    import copy

    import yaml

    from octopus.arch.config import CONFIG_DIR, arch_from_dict

    doc = copy.deepcopy(yaml.safe_load((CONFIG_DIR / "chip.yaml").read_text()))
    for key, v in changes.items():
        sec, _, fld = key.partition("__")
        if fld:
            doc[sec][fld] = v
        elif v is None:
            del doc[sec]
        else:
            doc[sec] = v
    with pytest.raises(ValueError) as e:
        arch_from_dict(doc)
    return str(e.value)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"clusters": None}, "clusters"),
        ({"clusters": 2}, "clusters"),
        ({"clusters": [1.5, 2]}, "clusters"),
        ({"clusters_per_die": [0, 0]}, "clusters_per_die"),
        ({"pea__throughput_tops": 0}, "pea.throughput_tops"),
        ({"pea__throughput_tops": -1}, "pea.throughput_tops"),
        ({"pea__throughput_tops": float("nan")}, "pea.throughput_tops"),
        ({"mesh__link_bandwidth_gbps": 0}, "mesh.link_bandwidth_gbps"),
        ({"mesh__hop_latency_us": "fast"}, "mesh.hop_latency_us"),
        ({"reconfig__bandwidth_gbps": 0}, "reconfig.bandwidth_gbps"),
        ({"control__control_plane_latency_us": -5}, "control.control_plane_latency_us"),
        ({"mesh": 5}, "mesh"),
    ],
    ids=str,
)
def test_bad_architecture_names_the_field(changes, field):
    """These crashed (KeyError, TypeError, ZeroDivisionError) or ran to negative or NaN
    PEA-time percentages with exit 0."""
    msg = _arch_err(**changes)
    assert msg.startswith("arch:") and f"'{field}'" in msg


def test_architecture_document_must_be_a_mapping():
    from octopus.arch.config import arch_from_dict

    with pytest.raises(ValueError, match="expected a mapping"):
        arch_from_dict([1, 2])


def test_footprint_larger_than_a_cluster_is_refused_before_running(capsys):
    """An invocation occupies PEAs of one cluster (docs: the model), so a larger footprint
    never starts; the run used to end in a RuntimeError traceback ('stalled', exit 1)."""
    from octo_helpers import arch

    from octopus.owg.sample import CompiledWorkflow
    from octopus.runner import run_one

    cw = CompiledWorkflow(parse_workflow(workflow([task("a", 1, footprint=5)])))
    with pytest.raises(ValueError) as e:
        run_one(cw, arch(clusters=(2, 1), peas=(2, 2)), "greedy", instances=2)
    msg = str(e.value)
    assert "node 'a'" in msg and "'footprint'" in msg and "4" in msg


def test_a_workflow_without_task_blocks_is_refused():
    """Only control blocks: nothing to run, and every partitioned scheduler crashed on its
    empty partition (IndexError)."""
    doc = workflow(
        [
            {"id": "br", "type": "branch", "next": ["j"], "probs": [1]},
            {"id": "j", "type": "join"},
        ]
    )
    msg = _err(doc)
    assert "'nodes'" in msg and "task" in msg


def test_a_misspelled_or_foreign_field_is_named_not_ignored():
    """`out_byte` used to leave `out_bytes` at 0 silently; a field of another block type (a
    task's `probs`) and a loop with both trip rules were accepted too."""
    msg = _err(workflow([task("a", 1, out_byte=64)]))
    assert "node 'a'" in msg and "'out_byte'" in msg and "unknown for a task block" in msg
    msg = _err(workflow([task("a", 1, probs=[1.0])]))
    assert "node 'a'" in msg and "'probs'" in msg
    both = {
        "id": "lp", "type": "loop", "body": "b", "exit": "c", "max_trips": 4,
        "trips": {"dist": "const", "value": 2}, "continue_prob": 0.5,
    }  # fmt: skip
    msg = _err(workflow([task("a", 1, ["lp"]), both, task("b", 1, ["lp"]), task("c", 1)]))
    assert "node 'lp'" in msg and "not both" in msg
    ok = workflow([task("a", 1, description="free text on any block")])
    assert parse_workflow(ok).nodes["a"].work is not None


@pytest.mark.parametrize(
    "bad, why",
    [(-5, "got -5 (a negative size/value)"), (float("nan"), "got nan (not finite)"),
     (2.5, "got 2.5 (not whole)"), ("big", "got 'big'"), (True, "got True")],
    ids=str,
)  # fmt: skip
def test_workflow_and_architecture_number_fields_report_alike(bad, why):
    """Both formats check a number field with one helper (`octopus.checks.number`): each
    message says what was expected, what came and why it is wrong. Before, a workflow
    said 'negative size/value -5' or 'expected an integer' (without the value), and an
    architecture 'expected an integer >= 0, got nan' (without why)."""
    msg = _err(workflow([task("a", 1, out_bytes=bad)]))
    assert f"node 'a': field 'out_bytes': expected an integer >= 0, {why}" in msg
    msg = _arch_err(pea__memory_bytes=bad)
    assert f"arch: field 'pea.memory_bytes': expected an integer >= 0, {why}" in msg
    msg = _arch_err(pea__throughput_tops=0)
    assert "arch: field 'pea.throughput_tops': expected a number > 0, got 0" in msg


@pytest.mark.parametrize(
    "work, key, why",
    [
        ({"dist": "empirical", "values": [1, 100], "weight": [1, 0]}, "weight", "unknown"),
        ({"dist": "normal", "mean": 5, "std": 1, "sd": 2}, "sd", "unknown"),
        ({"dist": "normal", "mean": [1, 2], "std": 1}, "mean", "one number"),
        ({"dist": "empirical", "values": 5}, "values", "a list of numbers"),
        (
            {"dist": "mixture", "components": [{"weight": 1, "dist": "fixed", "value": 1, "x": 2}]},
            "x",
            "unknown",
        ),
    ],
    ids=str,
)
def test_a_distribution_with_a_foreign_or_misshapen_parameter_is_refused(work, key, why):
    """A misspelled parameter (`weight` for `weights`) was ignored, so the run drew from
    uniform weights; a list where one number belongs (or the reverse) passed validation
    and crashed with a TypeError when the workflow was compiled."""
    msg = _err(workflow([task("a", work)]))
    assert "node 'a'" in msg and "'work'" in msg and f".{key}:" in msg and why in msg


def test_a_long_chain_validates_without_recursion_error():
    """The cycle check recursed once per node: a chain of 3,000 tasks (a layer-by-layer
    model, say) raised RecursionError, a traceback from `octopus run`. A cycle at its end
    is still found and named."""
    n = 3000
    chain = [task(f"t{i}", 1, [f"t{i + 1}"] if i < n - 1 else []) for i in range(n)]
    wf = parse_workflow(workflow(chain, entry="t0"))
    assert len(wf.tasks) == n
    chain[-1] = task(f"t{n - 1}", 1, [f"t{n - 2}"])
    msg = _err(workflow(chain, entry="t0"))
    assert f"node 't{n - 1}'" in msg and "'next'" in msg and "cycle" in msg


@pytest.mark.parametrize("bad_id", [["x"], {"a": 1}, 1.5, True], ids=str)
def test_a_node_id_that_is_not_a_name_is_refused(bad_id):
    """`id: [x]` was taken as the node "['x']" (and `id: 1.5` as "1.5"), which no reference
    can name as written; a missing or null id is reported as missing."""
    msg = _err(workflow([task("a", 1), {"id": bad_id, "type": "task", "work": 1}], entry="a"))
    assert "nodes[1]: field 'id'" in msg and "expected a node id" in msg
    msg = _err(workflow([task("a", 1), {"id": None, "type": "task", "work": 1}], entry="a"))
    assert "nodes[1]: field 'id': missing" in msg


def test_a_node_named_like_a_layer_group_is_refused():
    """A TB too large for its PEAs is split into layer groups `id/2`, `id/3`, ...; a node of
    the file already named `a/2` silently replaced group 2, so `a` ran as 2 tasks, not 4."""
    from octopus.owg.sample import split_stages

    doc = workflow([task("a", 1, ["a/2"], config_bytes=4000), task("a/2", 5)])
    wf = parse_workflow(doc)
    with pytest.raises(WorkflowError) as e:
        split_stages(wf, 1000)
    msg = str(e.value)
    assert "node 'a/2': field 'id'" in msg and "layer group 2 of 'a'" in msg
    doc["nodes"][1]["id"] = doc["nodes"][0]["next"][0] = "b"
    assert split_stages(parse_workflow(doc), 1000).tasks == ["a", "a/2", "a/3", "a/4", "b"]


@pytest.mark.parametrize(
    "arrival, key",
    [
        ({"process": "closed", "concurency_per_cluster": 8}, "concurency_per_cluster"),
        ({"process": "batch", "rate_per_cluster_per_ms": 2}, "rate_per_cluster_per_ms"),
        ({"process": "poisson", "concurrency_per_cluster": 2}, "concurrency_per_cluster"),
    ],
    ids=str,
)
def test_an_arrival_field_its_process_does_not_read_is_refused(arrival, key):
    """A misspelled window (`concurency_per_cluster`) ran the default window of 2 without a
    word, and a rate given to a batch or a closed loop was ignored the same way."""
    msg = _err(workflow([task("a", 1)]) | {"arrival": arrival})
    assert f"field 'arrival': field '{key}': unknown for process" in msg


def test_an_architecture_field_it_does_not_read_is_refused():
    """A misspelled field of an architecture file (`mesh.link_bandwith_gbps`) left the
    default in place, silently: the run simulated another machine than the file's."""
    msg = _arch_err(mesh__link_bandwith_gbps=1, buffer__slot_per_pea=1, colour="blue")
    assert "'mesh.link_bandwith_gbps': unknown" in msg and "link_bandwidth_gbps" in msg
    assert "'buffer.slot_per_pea': unknown" in msg and "'colour': unknown" in msg


def test_a_workflow_or_architecture_files_problems_name_the_file(tmp_path):
    """A field's problem named the node and the field but not the file: with a workflow and
    an architecture (or several of each in a sweep), which one was wrong was left to guess."""
    from octopus.arch.config import load_arch
    from octopus.owg.schema import load_workflow

    wf = tmp_path / "wf.yaml"
    wf.write_text("schema: octopus-owg/1\nname: bad\nnodes:\n  - id: a\n    type: nope\n")
    with pytest.raises(WorkflowError) as e:
        load_workflow(wf)
    assert e.value.source == str(wf) and repr(str(wf)) in str(e.value)
    assert any("node 'a'" in p and "'type'" in p for p in e.value.problems)
    arch = tmp_path / "arch.yaml"
    arch.write_text("schema: octopus-arch/1\nname: x\nmesh:\n  link_bandwidth_gbps: 0\n")
    with pytest.raises(ValueError, match=r"arch '.*arch\.yaml'(.|\n)*link_bandwidth_gbps"):
        load_arch(arch)

"""What a user sees on their own files: reports name the variant that ran, and the
baseline runs on an architecture whose clusters are too small for one of its mappings."""

from __future__ import annotations

import pytest
from octo_helpers import arch, simulate, task, workflow

from octopus.owg.sample import CompiledWorkflow
from octopus.owg.schema import parse_workflow
from octopus.report.metrics import summarize
from octopus.runner import best_reactive
from octopus.sched import NAMES, make_scheduler


def _chain(n):
    ids = [f"t{i}" for i in range(n)]
    return workflow([task(t, 5.0, ids[i + 1 : i + 2]) for i, t in enumerate(ids)])


def test_every_builtin_is_reported_under_its_own_name():
    for name in NAMES:
        sim = simulate(_chain(2), arch(clusters=(2, 1), peas=(2, 2)), name, n=2)
        assert summarize(sim)["scheduler"] == name


def test_baseline_skips_a_mapping_whose_clusters_cannot_hold_the_partition():
    # five TBs of one PEA: a cluster of 4 PEAs cannot hold one group of each (replicated),
    # the 8 PEAs of the fabric can (regions)
    a = arch(clusters=(2, 1), peas=(2, 2), mappings=("replicated", "regions"))
    doc = _chain(5)
    static = simulate(doc, a, "static", n=3)
    assert static.sched.mapping == "regions" and static.finished == 3
    cw = CompiledWorkflow(parse_workflow(doc), "high")
    run, _ = best_reactive(cw, a, instances=3)
    assert run.sched.mapping == "regions" and run.finished == 3
    assert {m for m, _ in run.reactive_grid} == {"regions"}


def test_a_scheduler_subclass_without_on_free_is_refused_at_load(tmp_path):
    # subclassing Scheduler, as the tutorial does, inherits stubs that only raise: the
    # class lacks on_free all the same, and loading it must say so (it used to run and
    # stall)
    f = tmp_path / "half_sub.py"
    f.write_text(
        "from octopus.sched.api import Scheduler\n\n\n"
        "class Half(Scheduler):\n"
        "    def on_ready(self, k, t):\n"
        "        pass\n"
    )
    with pytest.raises(ValueError, match=r"class Half lacks on_free"):
        make_scheduler(f"{f}:Half")

"""What a user sees on their own files: reports name the variant that ran, and the
baseline runs on an architecture whose clusters are too small for one of its mappings."""

from __future__ import annotations

from octo_helpers import arch, simulate, task, workflow

from octopus.report.metrics import summarize
from octopus.sched import NAMES


def _chain(n):
    ids = [f"t{i}" for i in range(n)]
    return workflow([task(t, 5.0, ids[i + 1 : i + 2]) for i, t in enumerate(ids)])


def test_every_builtin_is_reported_under_its_own_name():
    for name in NAMES:
        sim = simulate(_chain(2), arch(clusters=(2, 1), peas=(2, 2)), name, n=2)
        assert summarize(sim)["scheduler"] == name

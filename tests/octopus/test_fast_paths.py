"""Fast paths of the simulator and schedulers against their slow, obvious twins."""

import random

import pytest

from octopus.owg.arrival import make_arrivals
from octopus.runner import prepare, run_one
from octopus.sched import VARIANTS
from octopus.sched.base import partition
from octopus.sched.octopus import OctopusScheduler
from octopus.sim import Simulator


def partition_reference(n: int, loads: list[float], mins: list[int]) -> list[int]:
    """The plain largest-remainder loop: arg-max by a full scan, ties to the first index."""
    tot = sum(loads) or 1.0
    ideal = [n * x / tot for x in loads]
    alloc = [max(m, int(i)) for m, i in zip(mins, ideal)]
    while sum(alloc) > n:
        j = max(
            (i for i in range(len(alloc)) if alloc[i] > mins[i]), key=lambda i: alloc[i] - ideal[i]
        )
        alloc[j] -= 1
    while sum(alloc) < n:
        j = max(range(len(alloc)), key=lambda i: ideal[i] - alloc[i])
        alloc[j] += 1
    return alloc


@pytest.mark.parametrize("seed", range(4))
def test_partition_matches_the_plain_loop_including_ties(seed):
    rng = random.Random(seed)
    for _ in range(500):
        T = rng.randint(1, 14)
        mins = [rng.choice((1, 1, 1, 2, 4)) for _ in range(T)]
        n = sum(mins) + rng.randint(0, 80)
        kind = rng.random()
        if kind < 0.3:  # equal or integer loads: many exact ties
            loads = [float(rng.randint(0, 3)) for _ in range(T)]
        elif kind < 0.4:
            loads = [0.0] * T
        else:
            loads = [rng.expovariate(1.0) * 10 ** rng.randint(-3, 3) for _ in range(T)]
        assert partition(n, loads, mins) == partition_reference(n, loads, mins), (n, loads, mins)


class _CheckedOctopus(OctopusScheduler):
    """Octopus that checks its free-PEA counts against its free lists after every hook."""

    def _check(self) -> None:
        for c, n in enumerate(self.nfree):
            assert n == sum(map(len, self.fown[c])) + sum(map(len, self.fsp[c])), c
        self.checks += 1

    def attach(self, api) -> None:
        super().attach(api)
        self.checks = 0
        self._check()

    def on_ready(self, k, t):
        super().on_ready(k, t)
        self._check()

    def on_free(self, peas, t):
        super().on_free(peas, t)
        self._check()

    def on_tick(self, t):
        super().on_tick(t)
        self._check()


@pytest.mark.parametrize(
    "wf,arch,variant",
    [
        ("video_recognition", "chiplet", "octopus"),
        ("recommendation", "chip", "octopus-dds-adaptive"),
        ("speech_assistant", "chiplet", "octopus-central"),
    ],
)
def test_octopus_free_counts_match_its_free_lists(wf, arch, variant):
    cw, a = prepare(wf, arch)
    s = _CheckedOctopus(**VARIANTS[variant])
    ref = run_one(cw, a, variant, 0, 16)
    sim = Simulator(cw, a, s, make_arrivals(cw.wf.arrival, a.n_clusters, 0, 16), seed=0).run()
    assert s.checks > 100
    assert (sim.makespan, sim.n_events) == (ref.makespan, ref.n_events)

"""Makespans pinned before the simulator core was split: the refactor must not move them.

The values are what the code produced on 2026-11-28 (commit 844844d) for 24 instances of two
suite workflows on the shipped chip and chiplet, every built-in scheduler, two seeds, plus a
few non-default knobs. They are compared exactly (same float, same event count): the split
keeps every arithmetic operation in the same order. If a deliberate change of the model moves
them, regenerate the table and say why in the commit.
"""

import pytest

from octopus.runner import prepare, run_one

PINNED = {
    ("recommendation", "chip", "static", 0): (18168.365164994742, 1570),
    ("recommendation", "chip", "static", 1): (17766.670870307993, 1623),
    ("recommendation", "chip", "reactive", 0): (16101.136193745137, 1721),
    ("recommendation", "chip", "reactive", 1): (17519.749587081475, 1791),
    ("recommendation", "chip", "greedy", 0): (11218.407087803882, 1545),
    ("recommendation", "chip", "greedy", 1): (11923.814832632252, 1600),
    ("recommendation", "chip", "octopus-dds", 0): (17385.01189500808, 1857),
    ("recommendation", "chip", "octopus-dds", 1): (23662.544609149096, 1943),
    ("recommendation", "chip", "octopus-dds-adaptive", 0): (13555.194421515913, 1682),
    ("recommendation", "chip", "octopus-dds-adaptive", 1): (28146.73858873023, 2282),
    ("recommendation", "chip", "octopus", 0): (11634.931244952066, 1662),
    ("recommendation", "chip", "octopus", 1): (12033.054135643317, 1721),
    ("recommendation", "chip", "octopus-central", 0): (11491.464978911523, 1711),
    ("recommendation", "chip", "octopus-central", 1): (12267.416477375371, 1767),
    ("recommendation", "chiplet", "static", 0): (12112.116165507308, 1549),
    ("recommendation", "chiplet", "static", 1): (13257.503112987273, 1601),
    ("recommendation", "chiplet", "reactive", 0): (12112.116165507308, 1671),
    ("recommendation", "chiplet", "reactive", 1): (13257.503112987273, 1734),
    ("recommendation", "chiplet", "greedy", 0): (11253.153917445126, 1545),
    ("recommendation", "chiplet", "greedy", 1): (12190.591832632252, 1600),
    ("recommendation", "chiplet", "octopus-dds", 0): (14462.163072486444, 1692),
    ("recommendation", "chiplet", "octopus-dds", 1): (14214.557612100836, 1749),
    ("recommendation", "chiplet", "octopus-dds-adaptive", 0): (11215.51669983696, 1659),
    ("recommendation", "chiplet", "octopus-dds-adaptive", 1): (11669.316832632252, 1717),
    ("recommendation", "chiplet", "octopus", 0): (11229.809386296241, 1658),
    ("recommendation", "chiplet", "octopus", 1): (11668.686832632253, 1717),
    ("recommendation", "chiplet", "octopus-central", 0): (11142.582749915566, 1666),
    ("recommendation", "chiplet", "octopus-central", 1): (11668.686832632253, 1735),
    ("video_recognition", "chip", "static", 0): (12962.92821150125, 2262),
    ("video_recognition", "chip", "static", 1): (15289.57890917427, 2517),
    ("video_recognition", "chip", "reactive", 0): (11585.615892972599, 2526),
    ("video_recognition", "chip", "reactive", 1): (12238.236598230274, 2820),
    ("video_recognition", "chip", "greedy", 0): (11006.038141079767, 2394),
    ("video_recognition", "chip", "greedy", 1): (12261.836547634346, 2550),
    ("video_recognition", "chip", "octopus-dds", 0): (14999.651346467808, 2598),
    ("video_recognition", "chip", "octopus-dds", 1): (14358.577377445054, 2890),
    ("video_recognition", "chip", "octopus-dds-adaptive", 0): (12061.731249920087, 2652),
    ("video_recognition", "chip", "octopus-dds-adaptive", 1): (12517.451407699618, 2851),
    ("video_recognition", "chip", "octopus", 0): (10879.319726550764, 2463),
    ("video_recognition", "chip", "octopus", 1): (12458.763909935335, 2717),
    ("video_recognition", "chip", "octopus-central", 0): (10620.869720591778, 2476),
    ("video_recognition", "chip", "octopus-central", 1): (12361.849047634347, 2750),
    ("video_recognition", "chiplet", "static", 0): (14232.54536651914, 2262),
    ("video_recognition", "chiplet", "static", 1): (17948.600583416955, 2514),
    ("video_recognition", "chiplet", "reactive", 0): (20114.983013181496, 2464),
    ("video_recognition", "chiplet", "reactive", 1): (19860.308807337806, 2713),
    ("video_recognition", "chiplet", "greedy", 0): (10633.715167722496, 2262),
    ("video_recognition", "chiplet", "greedy", 1): (12202.020297634346, 2514),
    ("video_recognition", "chiplet", "octopus-dds", 0): (10945.614894953762, 2690),
    ("video_recognition", "chiplet", "octopus-dds", 1): (12016.074719116252, 2796),
    ("video_recognition", "chiplet", "octopus-dds-adaptive", 0): (10385.541221385947, 2637),
    ("video_recognition", "chiplet", "octopus-dds-adaptive", 1): (17276.298320024813, 2917),
    ("video_recognition", "chiplet", "octopus", 0): (10048.366667722494, 2370),
    ("video_recognition", "chiplet", "octopus", 1): (12320.183047634346, 2661),
    ("video_recognition", "chiplet", "octopus-central", 0): (10048.429167722494, 2424),
    ("video_recognition", "chiplet", "octopus-central", 1): (12320.163047634347, 2699),
}

PINNED_KW = {
    ("recommendation", "chip", "static", 0, (("mapping", "replicated"),)): (
        19815.825572338803,
        1558,
    ),
    ("recommendation", "chip", "reactive", 0, (("mapping", "replicated"), ("threshold", 0.25))): (
        14020.129090566294,
        1696,
    ),
    ("recommendation", "chip", "reactive", 0, (("mapping", "regions"), ("threshold", 0.25))): (
        13874.563114294637,
        1696,
    ),
    ("recommendation", "chip", "octopus", 0, (("elastic", False), ("oldest_first", False))): (
        11634.931244952066,
        1662,
    ),
    ("video_recognition", "chip", "static", 0, (("mapping", "replicated"),)): (
        16286.849127202886,
        2450,
    ),
    (
        "video_recognition",
        "chip",
        "reactive",
        0,
        (("mapping", "replicated"), ("threshold", 0.25)),
    ): (11751.472370024236, 2663),
    ("video_recognition", "chip", "reactive", 0, (("mapping", "regions"), ("threshold", 0.25))): (
        11193.715620012143,
        2592,
    ),
    ("video_recognition", "chip", "octopus", 0, (("elastic", False), ("oldest_first", False))): (
        10788.668249741015,
        2437,
    ),
}

_PREPARED: dict = {}


def _run(wf, arch, sched, seed, **kw):
    if (wf, arch) not in _PREPARED:
        _PREPARED[wf, arch] = prepare(wf, arch)
    cw, a = _PREPARED[wf, arch]
    sim = run_one(cw, a, sched, seed, instances=24, **kw)
    return sim.makespan, sim.n_events


CASES = [(*k, ()) for k in PINNED] + list(PINNED_KW)
EXPECTED = {**{(*k, ()): v for k, v in PINNED.items()}, **PINNED_KW}


@pytest.mark.parametrize("key", sorted(CASES, key=repr), ids=lambda k: "-".join(map(str, k)))
def test_pinned_makespan(key):
    wf, arch, sched, seed, kw = key
    assert _run(wf, arch, sched, seed, **dict(kw)) == EXPECTED[key]


# The wafer (64 clusters, link contention, back-pressure), larger runs: what the speed work
# of issue 20 must not move (values of the code before it, commit dbf9e63).
PINNED_WAFER = {
    ("video_recognition", "octopus", 150): (12212.38207958781, 13677),
    ("recommendation", "octopus-central", 100): (11922.587172370708, 5645),
}


@pytest.mark.parametrize("key", sorted(PINNED_WAFER), ids=lambda k: "-".join(map(str, k)))
def test_pinned_makespan_on_the_wafer(key):
    wf, sched, n = key
    cw, a = prepare(wf, "wafer")
    sim = run_one(cw, a, sched, 0, instances=n)
    assert (sim.makespan, sim.n_events) == PINNED_WAFER[key]

"""The compiled per-tick re-sizing of base shares against its Python reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

from octopus.sched.base import partition
from octopus.sched.shares import resize_shares


def resize_reference(demand, seen, qlen, ewma, fp, frac, npc, resize, dds):
    """`OctopusScheduler._adapt`'s arithmetic as it was written in Python, per cluster."""
    targets, active = [], []
    for d, sn, ql in zip(demand, seen, qlen):
        d[:] = [x + 0.3 * (y - x) for x, y in zip(d, sn)]
        if not resize or not any(d):
            targets.append(None)
            active.append(False)
            continue
        want = [x + n * e * f + 1e-9 for x, n, e, f in zip(d, ql, ewma, fp)]
        share = partition(npc, want, fp)
        if dds:
            target = [a if (a := int(s * r)) > f else f for f, s, r in zip(fp, share, frac)]
        else:
            target = share
        targets.append(target)
        active.append(True)
    return targets, active


def _case(rng: random.Random, nc: int, T: int):
    fp = [rng.choice([1, 1, 1, 2, 4]) for _ in range(T)]
    # integer-valued demands and EWMAs make ties in the partition's choices
    pick = (lambda: float(rng.randint(0, 3))) if rng.random() < 0.5 else rng.random
    demand = [[pick() * rng.choice([0.0, 1.0, 1.0]) for _ in range(T)] for _ in range(nc)]
    seen = [[pick() if rng.random() < 0.5 else 0.0 for _ in range(T)] for _ in range(nc)]
    qlen = [[rng.choice([0, 0, 1, 2, 7]) for _ in range(T)] for _ in range(nc)]
    ewma = [pick() for _ in range(T)]
    frac = [rng.choice([1.0, 0.5, 0.3]) for _ in range(T)]
    return demand, seen, qlen, ewma, fp, frac


@pytest.mark.parametrize("dds", [True, False])
def test_resize_shares_is_bit_identical_to_the_python_reference(dds):
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        nc, T = rng.randint(1, 6), rng.randint(1, 12)
        npc = rng.choice([16, 64, 63])
        demand, seen, qlen, ewma, fp, frac = _case(rng, nc, T)
        resize = sum(fp) <= npc
        ref_d = [list(row) for row in demand]
        ref_t, ref_a = resize_reference(ref_d, seen, qlen, ewma, fp, frac, npc, resize, dds)
        d = np.array(demand)
        target = np.zeros((nc, T), dtype=np.int64)
        active = np.zeros(nc, dtype=np.bool_)
        resize_shares(
            d,
            np.array(seen),
            np.array(qlen, dtype=np.int64),
            np.array(ewma),
            np.array(fp, dtype=np.int64),
            np.array(frac),
            npc,
            resize,
            dds,
            target,
            active,
        )
        assert d.tolist() == ref_d
        assert active.tolist() == ref_a
        for c in range(nc):
            if ref_a[c]:
                assert target[c].tolist() == ref_t[c]
                checked += 1
    assert checked > 500  # most cases re-size

"""The tick grid: where the event loop's repeated additions of `tick_us` land, found without
stepping through them."""

import math
import random
import time

import pytest

from octopus.sim.events import tick_at_or_after

HOUR = 3.6e9  # us


def _naive_ticks(x: float, tick: float, target: float) -> tuple[float, int]:
    n = 0
    while x < target:
        x += tick
        n += 1
    return x, n


@pytest.mark.parametrize(
    "tick", [100.0, 20.0, 0.1, 1 / 3, 37.5, 0.3, 1e-3, 2.5, 0.75, 123.456, 0.5 + 2**-40]
)
def test_the_tick_grid_jump_lands_where_repeated_sums_do(tick):
    """The grid point at or after a target, and the ticks before it, are those of adding
    `tick` one at a time (rounded each time, ties to even included)."""
    rng = random.Random(tick)
    for _ in range(25):
        x = (
            tick * rng.choice([1, 2, 3, 17])
            if rng.random() < 0.7
            else rng.uniform(tick, 999 * tick)
        )
        target = x + tick * (rng.uniform(0, 2e5) if rng.random() < 0.8 else rng.randint(0, 40))
        assert tick_at_or_after(x, tick, target) == _naive_ticks(x, tick, target), (x, target)


def test_the_tick_grid_jump_costs_no_time_in_proportion_to_its_length():
    t0 = time.perf_counter()
    assert tick_at_or_after(100.0, 100.0, HOUR) == (HOUR, 35999999)
    x, n = tick_at_or_after(0.1, 0.1, 1e12)
    assert x >= 1e12 and n > 9e12
    assert time.perf_counter() - t0 < 0.1
    with pytest.raises(OverflowError):
        tick_at_or_after(100.0, 100.0, math.inf)  # 2**60 + 100 rounds back to 2**60

"""The CPU timing helpers shared by the tuner and ``bench kernels``."""

import pytest

from xyserve.kernels.cpu.timing import calls_for, paired_ratio


def test_paired_ratio_cancels_interference_common_to_a_round():
    base = [1.0, 1.0, 3.0, 1.0, 2.5]  # bursts of load in rounds 2 and 4 slow both variants
    slower = [1.1 * b for b in base]
    assert paired_ratio(slower, base) == pytest.approx(1.1)
    # a burst that hits one sample only is outvoted by the median
    slower[0] = 5.0
    assert paired_ratio(slower, base) == pytest.approx(1.1)
    # minimum-of-each would call it even: min(slower) / min(base) at different rounds
    assert paired_ratio([1.0, 2.0, 2.0], [1.0, 1.0, 1.0]) == 2.0
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_calls_for_sizes_blocks_and_caps_them():
    assert calls_for(lambda: None, target_s=1.0, cap=7) == 7  # a no-op: capped
    assert calls_for(lambda: sum(range(10**5)), target_s=1e-9) == 1  # never below one

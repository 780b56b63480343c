"""The greedy argmax kernels (column- and row-major) equal torch.argmax, ties and NaN included."""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels.cpu import argmax as cpu_argmax
from xyserve.kernels.cpu.argmax import greedy_ids


def _col_major(r: int, v: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn((v, r), generator=gen).t()


def test_matches_torch_on_column_and_row_major_logits():
    gen = torch.Generator().manual_seed(0)
    for r, v in [(2, 5), (3, 1), (64, 1000), (17, 4099)]:
        x = _col_major(r, v, gen)
        assert not x.is_contiguous() or v == 1
        assert greedy_ids(x) == x.argmax(dim=-1).tolist()
        assert greedy_ids(x.contiguous()) == x.argmax(dim=-1).tolist()
        padded = torch.randn((v, r + 5), generator=gen)[:, :r].t()  # swap8's layout
        assert greedy_ids(padded) == padded.argmax(dim=-1).tolist()
    one = torch.randn((1, 50), generator=gen)
    assert greedy_ids(one) == one.argmax(dim=-1).tolist()


def test_ties_go_to_the_first_index_and_nan_follows_torch():
    x = torch.zeros((300, 4)).t()  # every row all ties
    x[1, 7] = x[1, 200] = 1.0
    x[2, 299] = 5.0
    assert greedy_ids(x) == [0, 7, 299, 0] == x.argmax(dim=-1).tolist()
    x[3, 10] = float("nan")  # torch treats NaN as the maximum
    x[0, 0] = float("nan")
    assert greedy_ids(x) == x.argmax(dim=-1).tolist()
    assert greedy_ids(x)[3] == 10 and greedy_ids(x)[0] == 0


def test_row_major_rows_split_over_threads_match_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((64, 32000), generator=gen)
    x[5, 17] = x[5, 31999] = 100.0  # a tie: the first index wins
    x[9] = 0.0  # all ties
    assert x.is_contiguous()
    assert greedy_ids(x) == x.argmax(dim=-1).tolist()
    assert greedy_ids(x)[5] == 17 and greedy_ids(x)[9] == 0
    x[11, 300] = float("nan")
    x[12, 0] = float("inf")
    x[12, 1] = -float("inf")  # its sum is NaN too: the torch path decides the batch as well
    out = np.empty(64, np.int64)
    cpu_argmax._row_kernel(x.numpy(), out)  # the kernel itself flags both rows
    assert out[11] == out[12] == -1
    others = [r for r in range(64) if r not in (11, 12)]
    assert out[others].tolist() == x[others].argmax(dim=-1).tolist()
    assert greedy_ids(x) == x.argmax(dim=-1).tolist()
    assert greedy_ids(x)[11] == 300 and greedy_ids(x)[12] == 0

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
    x[12, 1] = -float("inf")  # infinities compare as numbers
    x[13, 5] = x[13, 9] = float("inf")  # tied infinities: the first
    out = np.empty(64, np.int64)
    cpu_argmax._row_kernel(x.numpy(), out)  # the kernel itself flags the NaN row only
    assert out[11] == -1 and out[12] == 0 and out[13] == 5
    others = [r for r in range(64) if r != 11]
    assert out[others].tolist() == x[others].argmax(dim=-1).tolist()
    assert greedy_ids(x) == x.argmax(dim=-1).tolist()
    assert greedy_ids(x)[11] == 300 and greedy_ids(x)[12] == 0


def test_first_argmax_takes_the_first_of_tied_maxima_at_every_chunk_edge():
    """The fused forward's and the row kernel's per-row argmax: a largest value first seen in
    any chunk, in the tail past the last whole chunk, or in a row too short for chunks, and
    ties inside a chunk, across chunks and between a chunk and the tail."""
    rng = np.random.default_rng(0)
    chunk = cpu_argmax.ARGMAX_CHUNK
    for n in (1, 2, 17, chunk - 1, chunk, 2 * chunk - 1, 2 * chunk, 2 * chunk + 1, 4096, 4099):
        for _ in range(60):
            x = rng.integers(0, 6, n).astype(np.float32)  # many ties
            assert cpu_argmax.first_argmax(x) == int(np.argmax(x)), n
        for at in {0, n // 2, n - 1, max(0, n - chunk), min(n - 1, chunk)}:
            x = np.zeros(n, np.float32)
            x[at] = 1.0
            x[n - 1] = 1.0  # a tie at the very end
            assert cpu_argmax.first_argmax(x) == at, (n, at)
    x = rng.standard_normal(32000).astype(np.float32) - 10.0  # all negative
    assert cpu_argmax.first_argmax(x) == int(np.argmax(x))

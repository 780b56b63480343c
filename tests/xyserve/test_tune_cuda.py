"""The CUDA tuning search: its candidate sets, and the per-bucket choice between Triton and
cuBLAS, run interpreted on CPU with a scripted timer (the real timing needs a GPU)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from xyserve.tools.tune_cuda import split_candidates, tile_candidates, tune_one_cuda

TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_candidates_fit_the_bucket_and_split_only_small_m():
    for pm in (16, 48, 512):
        cands = tile_candidates(pm, 4096)
        assert cands and all(c.block_m <= max(16, pm) for c in cands)
        assert len({c.key() for c in cands}) == len(cands)
    assert {c.block_k for c in tile_candidates(64, 40)} == {32}  # K = 40: no 64/128 K-tiles
    top = tile_candidates(16, 4096)[:3]
    splits = split_candidates(top, 16, 4096)
    assert {c.split_k for c in splits} == {2, 4, 8, 16}
    assert all(4096 // c.split_k >= 2 * c.block_k for c in splits)
    assert split_candidates(top, 256, 4096) == []  # enough M-tiles: no split-K
    assert split_candidates(top, 16, 64) == []  # K too short to cut


def _scripted(first: float, then: itertools.count):
    """A timer that runs the call once (so a broken config still raises) and returns a script:
    ``first`` for the first call (cuBLAS), then falling times (the last candidate is fastest)."""
    calls = itertools.count()

    def timer(fn) -> float:
        fn()
        return first if next(calls) == 0 else next(then)

    return timer


@pytest.mark.skipif(not TRITON, reason="needs CUDA or TRITON_INTERPRET=1")
def test_search_keeps_triton_only_where_it_beats_cublas():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn((64, 64), generator=gen).to(DEV)
    x = torch.randn((16, 64), generator=gen).to(DEV)
    n = len(tile_candidates(16, 64))
    # cuBLAS slowest: the last (fastest) Triton candidate wins.
    cfg, times = tune_one_cuda(w, x, _scripted(1e9, itertools.count(1000, -1)))
    assert cfg.gpu_impl == "triton" and cfg == tile_candidates(16, 64)[-1]
    assert times["triton_ms"] == 1000 - (n - 1) and times["cublas_ms"] == 1e9
    # cuBLAS faster than every Triton candidate: the bucket names cuBLAS.
    cfg, times = tune_one_cuda(w, x, _scripted(0.5, itertools.count(1000, -1)))
    assert cfg.gpu_impl == "cublas" and times["triton_ms"] > times["cublas_ms"]

"""The fused call's thread count chosen online (engine.thread_choice), on simulated call
times, and the fused call's results, which must not depend on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from xyserve.engine.thread_choice import ThreadChoice

QUIET = {1: 1.0, 2: 0.6}
LOADED = {1: 1.0, 2: 50.0}  # a busy core: the second thread's wake-ups wait for it


def _run(tc: ThreadChoice, times: dict[int, float], calls: int, key: int = 0) -> list[int]:
    used = []
    for _ in range(calls):
        n = tc.pick(key)
        tc.observe(key, n, times[n])
        used.append(n)
    return used


def test_load_moves_the_choice_and_costs_few_slow_calls():
    tc = ThreadChoice((1, 2), first=2, max_interval=512)
    quiet = _run(tc, QUIET, 2000)
    assert quiet.count(1) <= 3 * 6  # a few bursts of one thread, each lost
    loaded = _run(tc, LOADED, 4000)
    assert loaded[3:].count(2) <= 12  # switched within 3 calls; then one call a try
    assert loaded[-100:].count(1) >= 99
    back = _run(tc, QUIET, 1100)
    assert back[-100:].count(2) >= 97  # back on two threads within an interval or two
    assert tc.switches >= 2


def test_buckets_choose_apart():
    tc = ThreadChoice((1, 2), first=1)
    one_row, many = {1: 1.0, 2: 1.5}, {1: 4.0, 2: 2.0}
    for _ in range(400):
        for key, t in ((0, one_row), (1, many)):
            n = tc.pick(key)
            tc.observe(key, n, t[n])
    assert tc.pick(0) == 1 and tc.pick(1) == 2


def test_one_count_never_explores():
    tc = ThreadChoice((1,), first=1)
    assert set(_run(tc, {1: 1.0}, 300)) == {1}
    with pytest.raises(ValueError):
        ThreadChoice((1, 2), first=3)


def _fused_logits(model_dir: Path, counts: tuple[int, ...]) -> dict[tuple[int, int], bytes]:
    """The fused call's logits over ``model_dir`` (float32) for 1, 5 and 9 rows at each thread
    count in ``counts``: their bytes, keyed by (rows, count)."""
    import numpy as np
    import torch

    from xyserve.kernels.cpu import fused_forward as ff
    from xyserve.model.loader import load_model
    from xyserve.spec.draft_forward import pack_model

    w = pack_model(load_model(model_dir, torch.device("cpu"), torch.float32))
    ctx, bs = 40, 16
    nblk = (ctx + 16) // bs + 1
    k, v = ff.new_cache(w, nblk, bs, np.float32)
    rng = np.random.default_rng(0)
    k[:] = rng.standard_normal(k.shape).astype(np.float32) * 0.1
    v[:] = rng.standard_normal(v.shape).astype(np.float32) * 0.1
    out = {}
    for r in (1, 5, 9):
        pos = np.arange(ctx, ctx + r, dtype=np.int64)
        rows = ff.Rows(
            ids=np.arange(r, dtype=np.int64) + 5, pos=pos, slots=pos.copy(),
            table_of=np.zeros(r, np.int64), tables=np.arange(nblk, dtype=np.int64)[None],
            ctx_len=pos + 1, extra_off=np.zeros(r + 1, np.int64),
            extra_slots=np.zeros(0, np.int64), out_rows=np.arange(r, dtype=np.int64),
        )  # fmt: skip
        for n in counts:
            out[r, n] = ff.forward(w, k.copy(), v.copy(), rows, True, n)[0].tobytes()
    return out


def test_the_fused_call_gives_the_same_bits_on_any_thread_count(tiny_llama: Path, monkeypatch):
    """The engine switches the fused call's thread count call by call, so the count must not
    change a bit of the logits. Two compilations of the call need not agree to the bit:
    numba's LLVM optimizes each with the callees it links, and a callee loaded from numba's
    cache optimizes otherwise than one compiled in the process (CI, whose xdist workers share
    the cache, once saw one-thread calls on the serial compilation give logits ~1e-6 apart
    from two-thread calls on the parallel one). So every count must run the one parallel
    compilation, which a spy checks here: a parallel call that reaches a serial compilation
    fails. On that one compilation, one and two threads must then give the same bits (the
    linear layers split their columns across the threads, never a sum)."""
    from xyserve.kernels.cpu import fused_forward as ff

    counts: list[int] = []
    parallel = ff._parallel

    def spy(*args):
        counts.append(args[-1])
        return parallel(*args)

    def serial(*args):
        raise AssertionError("a parallel call ran the serial compilation")

    monkeypatch.setattr(ff, "_parallel", spy)
    for name in ("_serial", "_serial_amx", "_parallel_amx"):
        monkeypatch.setattr(ff, name, serial)
    logits = _fused_logits(tiny_llama, (1, 2))
    assert counts == [1, 2] * 3
    for r in (1, 5, 9):
        assert logits[r, 1] == logits[r, 2], f"{r} rows: one and two threads differ"

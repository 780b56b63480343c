"""Meta-Attention's CPU decode tiles: one parallel numba kernel reads the paged cache in place.

A decode tile (one query row, every key visible) is bandwidth-bound: its cost is reading its
K/V once. The torch path first gathers the blocks into a contiguous copy and then runs the fused
flash kernel over it, so each key is read three times; this kernel walks the block table and
reads each key once, with every query head of the row in registers. Tiles are dealt to the
threads by the same symmetric round-robin as the task table's units, in cost order
(``tileSize * kvLen``), and each thread runs its list: the CPU image of the persistent
Meta-Attention kernel. ``xyserve bench kernels --only attention`` times the whole CPU path
against per-stage baselines (figures: docs/perf.md).

A bfloat16 engine's caches are read as their bits, widened (``kernels.cpu.bf16``); its query
rows are widened to float32 first and the outputs rounded back, so the kernel's arithmetic is
float32 in either dtype.

numba is optional: without it (or for dtypes other than float32 and bfloat16) the torch path
runs.
"""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels.cpu import bf16, exp, use_cpu_threads
from xyserve.kernels.cpu.cache import depends_on
from xyserve.kernels.cpu.exp import softmax_
from xyserve.kernels.cpu.views import as_numpy
from xyserve.plan.meta_attention import DecodePlan, build_decode_plan

try:  # numba is a dependency, but a broken install must not break the engine
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None


DTYPES = (torch.float32, torch.bfloat16)


def available(dtype: torch.dtype) -> bool:
    return numba is not None and dtype in DTYPES


if numba is not None:

    @njit(inline="always", fastmath=True)
    def _score(qs, k_cache, blk, jj, group, sc, col):  # pragma: no cover - compiled
        """sc[:, col] = every query head's dot with the key in slot (blk, jj)."""
        for r in range(qs.shape[0]):
            key = k_cache[blk, jj, r // group]
            acc = np.float32(0.0)
            for e in range(qs.shape[1]):
                acc += qs[r, e] * bf16.at(key, e)
            sc[r, col] = acc

    @njit(inline="always", fastmath=True)
    def _accumulate(o, sc, v_cache, blk, jj, group, col):  # pragma: no cover - compiled
        """o += sc[:, col] x the value in slot (blk, jj), per query head."""
        for r in range(o.shape[0]):
            p = sc[r, col]
            value = v_cache[blk, jj, r // group]
            for e in range(o.shape[1]):
                o[r, e] += p * bf16.at(value, e)

    @depends_on(bf16, exp)
    @njit(parallel=True, fastmath=True, cache=True)
    def _decode_kernel(
        q, k_cache, v_cache, tables, kv_lens, q_rows, offsets, extra_off, extra_pos, scale, out
    ):
        """Tile ``s`` sees its table's first ``kv_lens[s]`` positions, then the positions
        ``extra_pos[extra_off[s]:extra_off[s + 1]]`` (a tree node's ancestors)."""
        bs = k_cache.shape[1]
        d = k_cache.shape[3]
        hq = q.shape[1]
        group = hq // k_cache.shape[2]
        for w in prange(offsets.shape[0] - 1):
            for s in range(offsets[w], offsets[w + 1]):
                row = q_rows[s]
                n_tab = kv_lens[s]
                e0 = extra_off[s]
                n_ext = extra_off[s + 1] - e0
                n_keys = n_tab + n_ext
                qs = q[row] * scale  # [hq, d]; query head r reads KV head r // group
                sc = np.empty((hq, n_keys), dtype=np.float32)
                nblk = (n_tab + bs - 1) // bs
                for b in range(nblk):
                    blk = tables[s, b]
                    for jj in range(min(bs, n_tab - b * bs)):
                        _score(qs, k_cache, blk, jj, group, sc, b * bs + jj)
                for x in range(n_ext):
                    p = extra_pos[e0 + x]
                    _score(qs, k_cache, tables[s, p // bs], p % bs, group, sc, n_tab + x)
                bits = np.empty(n_keys, dtype=np.int32)  # softmax_'s scratch
                for r in range(hq):  # softmax over the row's keys
                    softmax_(sc[r], bits)
                o = np.zeros((hq, d), dtype=np.float32)
                for b in range(nblk):
                    blk = tables[s, b]
                    for jj in range(min(bs, n_tab - b * bs)):
                        _accumulate(o, sc, v_cache, blk, jj, group, b * bs + jj)
                for x in range(n_ext):
                    p = extra_pos[e0 + x]
                    _accumulate(o, sc, v_cache, tables[s, p // bs], p % bs, group, n_tab + x)
                out[row] = o


def warmup(dtype: torch.dtype = torch.float32) -> None:
    """Compile (or load from numba's cache) the kernel for ``dtype`` now, not inside the
    first step."""
    if not available(dtype):
        return
    plan = build_decode_plan([0], [3], [[1]], 1)
    cache = torch.zeros((2, 4, 1, 8), dtype=dtype)
    q = torch.zeros((1, 2, 8), dtype=dtype)
    run_decode(plan, q, cache, cache, 1.0, torch.zeros_like(q))


def run_decode(
    plan: DecodePlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> None:
    """Write the decode rows of ``out`` ([T, Hq, D], contiguous, of the caches' dtype: float32
    or bfloat16). The caches' numpy views are made once per cache tensor (``as_numpy``), not
    per layer and step."""
    if plan.num_tiles == 0:
        return
    if q.dtype == torch.bfloat16:  # float32 rows in and out; the other rows of out unchanged
        wide = out.float()
        run_decode(plan, q.float(), k_cache, v_cache, scale, wide)
        out.copy_(wide)
        return
    k_np, v_np = as_numpy(k_cache), as_numpy(v_cache)
    if k_np is None or v_np is None:  # a strided cache view: read it as it is
        k_np, v_np = k_cache.detach().numpy(), v_cache.detach().numpy()
    workers = plan.worker_offsets.shape[0] - 1
    # keys x query heads x head size, a quarter each (the dot and the axpy over a key run as
    # vector FMAs, several times cheaper per element than an elementwise op's exp); summed only
    # when there are two tiles to share (the plan keeps the sum: it is the same in every layer)
    work = plan.total_keys * q.shape[1] * q.shape[2] // 4 if plan.num_tiles > 1 else None
    use_cpu_threads(workers, items=plan.num_tiles, work=work)
    _decode_kernel(
        q.detach().numpy() if q.is_contiguous() else q.contiguous().numpy(),
        k_np,
        v_np,
        plan.tables,
        plan.kv_lens,
        plan.q_rows,
        plan.worker_offsets,
        plan.extra_off,
        plan.extra_pos,
        np.float32(scale),
        out.numpy(),
    )

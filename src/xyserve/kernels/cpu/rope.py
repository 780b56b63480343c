"""RoPE on q and k plus the K/V cache write, in one numba pass over the qkv GEMM's output.

Why: the torch path is four elementwise ops for the rotation, two ``index_copy_`` into the
paged cache, and a copy of the (strided) q before attention, once per layer. Here each
token row is read once: q is rotated into a contiguous [T, Hq, D] tensor, k is rotated straight
into its cache slot and v copied into its slot. The arithmetic is ``rope.apply``'s (``x1 cos -
x2 sin``, ``x2 cos + x1 sin``, non-interleaved halves). It applies to contiguous float32 qkv
rows (the ``numba`` and ``linear`` GEMM entry points' output) without q/k norm; other layouts,
dtypes and Qwen3's q/k norm take the torch path (``kernels.ops.rope_and_cache`` chooses;
figures: docs/perf.md).
"""

from __future__ import annotations

import numpy as np
import torch

from xyserve.kernels.cpu import use_cpu_threads
from xyserve.kernels.cpu.views import as_numpy

_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None

if njit is not None:

    @njit(parallel=True, fastmath=True, cache=True)
    def _rope_rows(qkv, cos, sin, slots, q_out, k_cache, v_cache):  # pragma: no cover
        """qkv [T, (Hq + 2 Hkv) D]; cos/sin [T, D/2]; caches [blocks, block_size, Hkv, D]."""
        hq, d = q_out.shape[1], q_out.shape[2]
        bs, hkv = k_cache.shape[1], k_cache.shape[2]
        half = d // 2
        for t in prange(qkv.shape[0]):
            blk, off = slots[t] // bs, slots[t] % bs
            for h in range(hq + hkv):  # q heads, then k heads: the same rotation
                dst = q_out[t, h] if h < hq else k_cache[blk, off, h - hq]
                b = h * d
                for j in range(half):
                    x1 = qkv[t, b + j]
                    x2 = qkv[t, b + half + j]
                    dst[j] = x1 * cos[t, j] - x2 * sin[t, j]
                    dst[half + j] = x2 * cos[t, j] + x1 * sin[t, j]
            for h in range(hkv):
                b = (hq + hkv + h) * d
                for j in range(d):
                    v_cache[blk, off, h, j] = qkv[t, b + j]


def kernel_inputs(
    qkv: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The kernel's qkv, slots, k and v cache arrays, or None where it may not run. The kernel
    checks no index, so every shape is checked here; the caches' and slots' device, dtype and
    contiguity are checked by ``as_numpy`` once per tensor (their views are cached), the
    step's fresh qkv on every call."""
    if njit is None:
        return None
    slots, k, v = as_numpy(slot_mapping), as_numpy(k_cache), as_numpy(v_cache)
    if slots is None or k is None or v is None:
        return None
    shape = k.shape
    if (
        len(shape) != 4
        or v.shape != shape
        or shape[2] != num_kv_heads
        or shape[3] % 2
        or k.dtype != _F32
        or v.dtype != _F32
        or slots.dtype != _I64
        or qkv.dtype != torch.float32
        or not qkv.is_cpu
        or not qkv.is_contiguous()
    ):
        return None
    x = qkv.detach().numpy() if qkv.requires_grad else qkv.numpy()
    if x.ndim != 2 or x.shape[1] != (num_heads + 2 * num_kv_heads) * shape[3]:
        return None
    if slots.shape != (x.shape[0],):
        return None
    return x, slots, k, v


def rotary_rows(table: torch.Tensor | np.ndarray, t: int, half: int) -> np.ndarray:
    """A step's cos or sin rows as the contiguous float32 [T, D/2] array the kernel reads (a
    copy only when ``table``, e.g. ``RotaryEmbedding.tables``' [T, 1, D/2], is not already)."""
    if isinstance(table, np.ndarray):
        return table
    return np.ascontiguousarray(table.detach().reshape(t, half).numpy(), dtype=np.float32)


def run(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cos: torch.Tensor | np.ndarray,
    sin: torch.Tensor | np.ndarray,
    num_heads: int,
) -> torch.Tensor:
    """The kernel on ``kernel_inputs``' arrays: rotated q ([T, Hq, D], contiguous); k (rotated)
    and v land in their cache slots. ``cos``/``sin`` as ``rope_and_cache``'s."""
    qkv_np, slots, k, v = arrays
    t, d = qkv_np.shape[0], k.shape[3]
    q = torch.empty((t, num_heads, d), dtype=torch.float32)
    if t:
        use_cpu_threads(items=t, work=qkv_np.size)
        half = d // 2
        _rope_rows(
            qkv_np, rotary_rows(cos, t, half), rotary_rows(sin, t, half), slots, q.numpy(), k, v
        )
    return q


def rope_and_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor | np.ndarray,
    sin: torch.Tensor | np.ndarray,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """Rotated q ([T, Hq, D], contiguous); k (rotated) and v land in their cache slots; a
    ValueError, touching nothing, for tensors the kernel does not take (``kernel_inputs``).

    ``cos``/``sin`` are ``RotaryEmbedding.tables``' [T, 1, D/2] rows, or ``rotary_rows``' arrays
    of them (a step converts them once for every layer); ``slot_mapping`` [T] the flat cache
    slot of each token; the caches are [blocks, block_size, Hkv, D]. Slots are not
    bounds-checked (the block manager hands them out).
    """
    arrays = kernel_inputs(qkv, slot_mapping, num_heads, num_kv_heads, k_cache, v_cache)
    if arrays is None:
        raise ValueError("rope_and_cache: these tensors do not fit the numba kernel (applies)")
    return run(arrays, cos, sin, num_heads)


def warmup() -> None:
    """Compile (or load from numba's cache) the kernel now, not inside the first step."""
    if njit is None:
        return
    cache = torch.zeros((2, 2, 1, 4))
    rope_and_cache(
        torch.zeros((1, 12)),
        torch.ones((1, 1, 2)),
        torch.zeros((1, 1, 2)),
        torch.zeros(1, dtype=torch.long),
        1,
        1,
        cache,
        cache.clone(),
    )

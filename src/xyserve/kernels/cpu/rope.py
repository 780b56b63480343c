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

import torch

from xyserve.kernels.cpu import use_cpu_threads

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None

if njit is not None:

    @njit(parallel=True, fastmath=True, cache=True)
    def _rope_rows(qkv, cos, sin, slots, q_out, k_cache, v_cache):  # pragma: no cover
        """qkv [T, (Hq + 2 Hkv) D]; cos/sin [T, D/2]; caches [slots, Hkv, D]."""
        hq, d = q_out.shape[1], q_out.shape[2]
        hkv = k_cache.shape[1]
        half = d // 2
        for t in prange(qkv.shape[0]):
            slot = slots[t]
            for h in range(hq + hkv):  # q heads, then k heads: the same rotation
                dst = q_out[t, h] if h < hq else k_cache[slot, h - hq]
                b = h * d
                for j in range(half):
                    x1 = qkv[t, b + j]
                    x2 = qkv[t, b + half + j]
                    dst[j] = x1 * cos[t, j] - x2 * sin[t, j]
                    dst[half + j] = x2 * cos[t, j] + x1 * sin[t, j]
            for h in range(hkv):
                b = (hq + hkv + h) * d
                for j in range(d):
                    v_cache[slot, h, j] = qkv[t, b + j]


def applies(
    qkv: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> bool:
    """Whether the kernel may run: it checks no index, so every shape is checked here."""
    d = k_cache.shape[-1]
    return (
        njit is not None
        and qkv.dim() == 2
        and k_cache.dim() == 4
        and all(t.device.type == "cpu" and t.is_contiguous() for t in (qkv, k_cache, v_cache))
        and qkv.dtype == k_cache.dtype == v_cache.dtype == torch.float32
        and k_cache.shape == v_cache.shape
        and k_cache.shape[2] == num_kv_heads
        and d % 2 == 0
        and qkv.shape[1] == (num_heads + 2 * num_kv_heads) * d
        and slot_mapping.dtype == torch.int64
        and slot_mapping.device.type == "cpu"
        and tuple(slot_mapping.shape) == (qkv.shape[0],)
    )


def rope_and_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """Rotated q ([T, Hq, D], contiguous); k (rotated) and v land in their cache slots.

    ``cos``/``sin`` are ``RotaryEmbedding.tables``' [T, 1, D/2] rows; ``slot_mapping`` [T] the
    flat cache slot of each token; the caches are [blocks, block_size, Hkv, D]. The caller
    checks ``applies`` first (slots are not bounds-checked here).
    """
    t = qkv.shape[0]
    d = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    q = torch.empty((t, num_heads, d), dtype=qkv.dtype)
    if t:
        use_cpu_threads(items=t)
        _rope_rows(
            qkv.detach().numpy(),
            cos.reshape(t, d // 2).contiguous().numpy(),
            sin.reshape(t, d // 2).contiguous().numpy(),
            slot_mapping.numpy(),
            q.numpy(),
            k_cache.view(-1, num_kv_heads, d).numpy(),
            v_cache.view(-1, num_kv_heads, d).numpy(),
        )
    return q


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

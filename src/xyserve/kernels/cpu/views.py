"""numpy views of long-lived CPU tensors (KV caches, weights), made once per tensor.

A numba kernel takes numpy arrays, and ``tensor.numpy()`` costs about half a microsecond; the
model calls its small ops once per layer per step, with the same caches and weights every time,
so at batch 1 those conversions and the checks around them are a large share of an op's cost
(docs/perf.md, "Batch 1"). ``as_numpy`` keeps the view on the tensor object itself and
reuses it while the tensor still has the same storage pointer, shape, strides and dtype; a
tensor that was re-pointed (``set_``, ``resize_``, assigning ``.data``) gets a fresh view.

The cached array is built from the raw pointer, not with ``tensor.numpy()``: that one would hold
a reference to the tensor, and a tensor holding (through its attribute) an array that holds the
tensor is a cycle that only the cyclic garbage collector frees, which would keep a KV cache's
memory alive after its engine is gone. The raw view is valid while the tensor keeps its storage,
which is what the key checks before every use.
"""

from __future__ import annotations

import numpy as np
import torch

_ATTR = "_xyserve_numpy_view"
# bfloat16 as its uint16 bits (numpy has no bfloat16; ``kernels.cpu.bf16`` reads them)
_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bfloat16: np.uint16,
}


class _Interface:
    """Carries ``__array_interface__`` for ``np.asarray``: the array's base, holding nothing."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.__array_interface__ = {
            "data": (ptr, False),
            "shape": shape,
            "typestr": dtype.str,
            "version": 3,
        }


def as_numpy(t: torch.Tensor) -> np.ndarray | None:
    """A numpy view of ``t`` when it is a contiguous CPU tensor of a dtype the kernels read
    (float32, int64, int32; bfloat16 as uint16 bits), else None; cached on ``t`` while its storage and layout stay."""
    key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
    cached = getattr(t, _ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    np_dtype = _NUMPY_DTYPES.get(t.dtype)
    if np_dtype is None or t.device.type != "cpu" or not t.is_contiguous() or t.requires_grad:
        return None
    if t.numel() == 0:
        arr = np.empty(tuple(t.shape), np_dtype)
    else:
        arr = np.asarray(_Interface(t.data_ptr(), tuple(t.shape), np.dtype(np_dtype)))
    setattr(t, _ATTR, (key, arr))
    return arr

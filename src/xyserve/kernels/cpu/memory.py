"""Host memory for the arrays the CPU kernels stream: weights and K/V caches.

At batch 1 a decode step reads every weight once, so it runs at the speed the memory system
streams them. With 4 KiB pages a 300 MB model spans ~75,000 pages, and every page of the
stream costs a TLB miss and a page walk; the hardware prefetchers also stop at each 4 KiB page
boundary. Backed by 2 MiB transparent huge pages, the same stream needs ~150 entries
(docs/perf.md, "Huge pages").

:func:`empty` and :func:`copy` give C-contiguous numpy arrays that start on a 2 MiB boundary,
in an anonymous mapping advised ``MADV_HUGEPAGE``, where the array is at least one huge page
and the OS has ``madvise`` (Linux; with transparent huge pages set to ``never`` the advice is a
no-op and the pages stay small; a kernel built without them refuses it, and the array is a
plain allocation). Smaller arrays, and every array elsewhere, are plain numpy
allocations aligned to 64 bytes (a cache line; numpy's own large arrays start 16 bytes into
a page).

:func:`zeros` writes its zeros although the mapping reads as zeros: that faults every page in
now. Left to the first write, a K/V cache's pages would fault inside decode steps, each a
2 MiB clear and, with the kernel's huge-page ``defrag`` set to ``madvise`` (the usual
default), possibly a synchronous compaction (docs/perf.md, "Huge pages", has what that cost).
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

HUGE_PAGE = 1 << 21  # bytes: the x86-64 (and common arm64) transparent huge page
LINE = 64  # bytes: the alignment of every array here

# madvise and its huge-page advice exist on Linux only (``mmap.MADV_HUGEPAGE``)
_ADVISE = getattr(mmap, "MADV_HUGEPAGE", None)


def _aligned_bytes(nbytes: int, align: int, advise: bool) -> np.ndarray:
    """A uint8 array of ``nbytes`` whose start is a multiple of ``align`` (in an advised
    anonymous mapping with ``advise``). The array keeps its buffer alive (numpy holds the
    mapping as the array's base)."""
    if advise:
        # private: a shared anonymous mapping is shmem, which has huge pages of its own setting
        # (off by default)
        mm = mmap.mmap(-1, nbytes + align, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        raw = np.frombuffer(mm, np.uint8)
        off = -raw.ctypes.data % align  # a whole number of small pages: the mapping's start
        try:  # is page-aligned
            mm.madvise(_ADVISE, off, nbytes)
            return raw[off : off + nbytes]
        except OSError:  # a kernel built without transparent huge pages refuses the advice
            del raw  # (EINVAL): the plain allocation below, as on other systems
            mm.close()
    raw = np.empty(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    return raw[off : off + nbytes]


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int | np.integer) else tuple(shape)


def empty(shape: int | tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array (see the module docstring for where it lies)."""
    shape, dtype = _shape(shape), np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    huge = _ADVISE is not None and nbytes >= HUGE_PAGE
    raw = _aligned_bytes(max(nbytes, 1), HUGE_PAGE if huge else LINE, huge)
    return raw[:nbytes].view(dtype).reshape(shape)


def zeros(shape: int | tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A zeroed C-contiguous array, its pages faulted in (see the module docstring)."""
    out = empty(shape, dtype)
    out[...] = 0
    return out


def copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` (same dtype and shape; see the module docstring)."""
    out = empty(a.shape, a.dtype)
    out[...] = a
    return out


def on_huge_pages(a: np.ndarray) -> bool:
    """Whether ``a`` lies in memory advised for huge pages by this module (so a caller or a
    test can tell what it got; whether the OS granted them is in ``/proc/self/smaps``)."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, mmap.mmap) or (
        isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    )


def tensor_zeros(shape: tuple[int, ...], dtype) -> torch.Tensor:
    """A zeroed CPU torch tensor of any dtype (bfloat16 included) in this module's memory: the
    bytes come from :func:`zeros`, viewed as ``dtype``."""
    import torch

    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = zeros(int(np.prod(shape, dtype=np.int64)) * itemsize, np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)

"""The numba CPU kernels, and the thread count every one of them launches with.

The kernels are numba ``prange`` loops. numba fixes its threading layer at the first parallel
launch in a process, so the choice is made here, before any kernel module runs one: OpenMP
first (unless the user chose with ``NUMBA_THREADING_LAYER``), as the decode kernels ran slower
on numba's workqueue layer (docs/perf.md).
"""

from __future__ import annotations

import os

import torch

_torch_threads = torch.get_num_threads

try:  # numba is a dependency, but a broken install must not break the engine
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None


def _numba_thread_reader():
    """A reader of numba's count for the calling thread. Most of ``numba.get_num_threads``'s
    cost is its check that the pool has started; once it has, the raw C reader it calls after
    that check is enough (the costs: docs/perf.md, "Batch 1"). That reader is private to numba,
    so it is used only when present, and any value it gives that is not a count falls back to
    the public call."""
    public = numba.get_num_threads
    try:
        from numba.np.ufunc import parallel

        raw = parallel._get_num_threads
    except (ImportError, AttributeError):  # pragma: no cover - another numba's layout
        return public

    def read() -> int:
        n = raw()
        return n if n > 0 else public()

    return read


# numba fastmath flags without "nnan" and "ninf": a kernel compiled with them keeps a NaN or
# infinite input a NaN or infinity in its own row, as torch does, instead of its result being
# undefined.
FASTMATH_KEEP_NAN = frozenset({"contract", "afn", "reassoc", "arcp", "nsz"})

_read_threads = None


def start_pool() -> None:
    """Start numba's thread pool, keeping torch's intra-op thread count as it was. Starting
    the pool sets the OpenMP thread count of the calling thread to numba's pool size, and torch
    reads its own count from OpenMP: without the restore, a user's ``torch.set_num_threads(1)``
    or ``OMP_NUM_THREADS=1`` made before the engine started turned into two threads (or
    however many cores there are) for every GEMM afterwards."""
    before = torch.get_num_threads()
    numba.get_num_threads()  # starts the pool
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


# The least work (in elements a kernel reads or writes, e.g. activations for an elementwise op,
# keys x heads x head size for attention) worth a thread of its own. Below it a kernel runs on
# the calling thread: a parallel region wakes a thread of numba's OpenMP pool, which then spins
# beside torch's own pool threads on the same cores, and on a busy or small machine that costs
# far more than the few microseconds of work it takes (docs/perf.md, "Threads for small
# kernels").
MIN_WORK_PER_THREAD = 1 << 15


def use_cpu_threads(
    requested: int | None = None, items: int | None = None, work: int | None = None
) -> int:
    """Run numba's next parallel kernel on ``requested`` threads (torch's intra-op count when
    None), within numba's pool, and on no more threads than it has ``items`` of parallel work
    (rows, tiles) when given: a single decode row then runs on the calling thread, instead of
    waking a thread that gets nothing to do and waiting for it at the kernel's end (on a busy
    machine, that barrier can cost more than the row). Given ``work`` (see
    ``MIN_WORK_PER_THREAD``), each thread gets at least that much. numba keeps the count per
    calling thread and a kernel that does not set it inherits whatever the last one set, so
    every CPU kernel wrapper calls this."""
    global _read_threads
    want = _torch_threads() if requested is None else int(requested)
    if items is not None and items < want:
        want = int(items)
    if work is not None and work < want * MIN_WORK_PER_THREAD:
        want = int(work) // MIN_WORK_PER_THREAD
    n = max(1, min(want, numba.config.NUMBA_NUM_THREADS))
    if _read_threads is None:
        start_pool()
        _read_threads = _numba_thread_reader()
    if _read_threads() != n:  # set only on a change: setting is the costly call
        numba.set_num_threads(n)
    return n

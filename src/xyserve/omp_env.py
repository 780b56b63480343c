"""OpenMP's wait policy for this process, chosen before torch loads its OpenMP runtime.

After a parallel region an OpenMP runtime's threads spin, by default, waiting for the next one.
Where cores are shared -- other processes, a cloud VM's steal time, and in this process the
numba kernels' OpenMP pool beside torch's -- a spinning thread holds the core that the thread it
waits for needs, and an elementwise op of a few microseconds can wait out a scheduler time
slice (milliseconds). ``PASSIVE`` makes waiting threads sleep instead (docs/perf.md, batch 1).

The runtime reads the variable when it loads, so this runs when ``xyserve`` is imported, before
torch; a user's own ``OMP_WAIT_POLICY`` is kept, and a runtime that torch loaded before
``xyserve`` was imported keeps the policy it started with.
"""

from __future__ import annotations

import os

DEFAULT_WAIT_POLICY = "PASSIVE"


def set_default_wait_policy() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_WAIT_POLICY)

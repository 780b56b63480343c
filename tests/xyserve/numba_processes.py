"""Scripts run in fresh Python processes that share a private numba cache: the tests of what
one process's compilations leave in numba's on-disk cache for the next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import xyserve

SRC = str(Path(xyserve.__file__).parents[1])


def run_script(tmp_path: Path, script: str, *args: str, timeout: float = 600) -> str:
    """``script``'s stdout, run with ``args`` in a new process whose numba cache is
    ``tmp_path / "cache"`` (each call with the same ``tmp_path`` reads what the earlier ones
    cached); the test fails where the process does. The timeout covers a cold compile
    (about 70 s for the fused forward here)."""
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": SRC, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, str(path), *args], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout

"""Importing xyserve sets OpenMP's wait policy to PASSIVE unless the user chose one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
PROBE = "import xyserve, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"


def _probe(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base["PYTHONPATH"] = SRC + os.pathsep + base.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_passive_by_default_before_torch_loads_and_the_users_choice_kept():
    assert _probe() == "PASSIVE False"  # set before torch (and its OpenMP runtime) loads
    assert _probe(OMP_WAIT_POLICY="active") == "active False"

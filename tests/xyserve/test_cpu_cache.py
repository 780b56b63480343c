"""A numba kernel cached on disk is rebuilt when a helper it inlines from another module
changes (``kernels.cpu.cache.depends_on``), not only when its own file does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xyserve.kernels.cpu import act, bf16, decode, exp
from xyserve.kernels.cpu.cache import source_digest

numba = pytest.importorskip("numba")

KERNEL = """
from numba import njit

import helper
from xyserve.kernels.cpu.cache import depends_on


@depends_on(helper)
@njit(cache=True)
def kernel(x):
    return helper.bump(x)


print(kernel(1))
"""

HELPER = """
from numba import njit


@njit(inline="always")
def bump(x):
    return x + {step}
"""


def test_kernels_that_inline_exp_are_stamped_with_its_source():
    """...and the decode kernel with the bfloat16 readers' too (``kernels.cpu.bf16``)."""
    stamps = {decode._decode_kernel: (bf16, exp), act._silu_mul_rows: (exp,)}
    for kernel, helpers in stamps.items():
        assert kernel._cache._cache_file._source_stamp[1] == source_digest(*helpers)


def test_an_edited_helper_invalidates_the_cached_kernel(tmp_path: Path):
    src = Path(act.__file__).parents[3]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{src}"}
    (tmp_path / "kernel.py").write_text(KERNEL)
    out = []
    for step in (1, 1, 2):  # compile, load from the cache, then an edit of the helper only
        (tmp_path / "helper.py").write_text(HELPER.format(step=step))
        run = subprocess.run(
            [sys.executable, str(tmp_path / "kernel.py")], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        out.append(int(run.stdout.strip()))
    assert list((tmp_path / "__pycache__").glob("kernel.kernel-*.nbi"))  # the cache was used
    assert out == [2, 2, 3]

"""The vector width the CPU kernels use on this host, from the ISA flags LLVM reports.

The numba kernels that write their own vector IR (``kernels.cpu.gemm``'s register tile) pick their width
here: 16 floats where the CPU has AVX-512F (32 zmm registers), 8 with AVX/AVX2 (16 ymm), and the
portable 4 (SSE, NEON: 128-bit vectors every 64-bit CPU has) elsewhere. FMA or not is left to
LLVM: the tiles use ``llvm.fmuladd``, fused where the CPU has FMA and a multiply and an add where
not. The loops numba vectorizes by itself get the host's width from LLVM directly.

``XYSERVE_CPU_VECTOR_WIDTH`` forces a narrower width (to compare them, or to rule one out); a
width the host cannot run is refused with a clear error.
"""

from __future__ import annotations

import os

from xyserve.plan.machine import host_flags

WIDTHS: tuple[int, ...] = (4, 8, 16)  # floats per vector the kernels are built for
WIDTH_ENV = "XYSERVE_CPU_VECTOR_WIDTH"


def host_widths(flags: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """Every vector width this host (or one with ``flags``) can run, narrowest first."""
    f = host_flags() if flags is None else flags
    out = [4]
    if "avx" in f:
        out.append(8)
    if "avx512f" in f:
        out.append(16)
    return tuple(out)


def vector_width(flags: tuple[str, ...] | None = None) -> int:
    """The width the kernels use: the widest the host runs, or the env override."""
    can = host_widths(flags)
    forced = os.environ.get(WIDTH_ENV, "").strip()
    if not forced:
        return can[-1]
    if not forced.isdigit() or int(forced) not in can:
        raise ValueError(f"{WIDTH_ENV}={forced!r}: this CPU runs widths {can}")
    return int(forced)

"""bfloat16 values as uint16 bit patterns in numba kernels: read as float32, stored rounded.

numpy has no bfloat16, so a bfloat16 tensor reaches numba as its uint16 bits (the upper half of
a float32's). :func:`at` reads element ``i`` of a float32 or such a uint16 array as float32
(widening is exact); :func:`store` writes a float32 row into either, a uint16 one rounded to
nearest even as torch's ``.to(torch.bfloat16)`` rounds (NaN stays NaN). The array's dtype picks
the code when a kernel compiles, so a float32 kernel compiles to what it was before.

Used by ``fused_forward`` for the K/V caches of a bfloat16 engine.
"""

from __future__ import annotations

import numpy as np

try:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised only where numba is absent
    intrinsic = None


def at(a, i):
    """``a[i]`` as float32 (``a``: float32, or uint16 bfloat16 bits)."""
    if a.dtype == np.uint16:
        return np.array([int(a[i]) << 16], np.uint32).view(np.float32)[0]
    return np.float32(a[i])


def store(dst, src, n):
    """``dst[:n] = src[:n]`` (``src`` float32; ``dst`` float32, or uint16 bfloat16 bits)."""
    if dst.dtype == np.uint16:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(src[:n], np.float32)).to(torch.bfloat16)
        dst[:n] = t.view(torch.int16).numpy().view(np.uint16)
    else:
        dst[:n] = src[:n]


def round_bits(builder, bits, const):
    """IR: float32 bit patterns ``bits`` (i32, or a vector of i32) rounded to bfloat16 bits
    (nearest even; NaN -> a quiet NaN), still in an i32 each. ``const(v)``: ``v`` as a
    constant of ``bits``' type (a splat for a vector)."""
    odd = builder.and_(builder.lshr(bits, const(16)), const(1))
    rounded = builder.lshr(builder.add(builder.add(bits, const(0x7FFF)), odd), const(16))
    nan = builder.icmp_unsigned(">", builder.and_(bits, const(0x7FFFFFFF)), const(0x7F800000))
    quiet = builder.or_(builder.lshr(bits, const(16)), const(0x40))
    return builder.select(nan, quiet, rounded)


if intrinsic is not None:

    @intrinsic
    def widen(typingctx, u):
        """uint16 bfloat16 bits -> float32 (shift into the upper half)."""
        if u != types.uint16:
            return None

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            i32 = ir.IntType(32)
            wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
            return builder.bitcast(wide, ir.FloatType())

        return types.float32(u), codegen

    @intrinsic
    def narrow(typingctx, f):
        """float32 -> uint16 bfloat16 bits, rounded to nearest even; NaN -> a quiet NaN."""
        if f != types.float32:
            return None

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            i32, i16 = ir.IntType(32), ir.IntType(16)

            def c(v):
                return ir.Constant(i32, v)

            return builder.trunc(round_bits(builder, builder.bitcast(args[0], i32), c), i16)

        return types.uint16(f), codegen

    @overload(at, inline="always")
    def _at(a, i):
        if a.dtype == types.uint16:
            return lambda a, i: widen(a[i])
        return lambda a, i: a[i]

    @overload(store, inline="always")
    def _store(dst, src, n):
        if dst.dtype == types.uint16:

            def impl(dst, src, n):
                for e in range(n):
                    dst[e] = narrow(src[e])

            return impl

        def impl_f32(dst, src, n):
            for e in range(n):
                dst[e] = src[e]

        return impl_f32

"""Intel AMX tiles for the fused call's linear layers, in bfloat16 engines.

Why: in a batched decode step (and a long verify) the fused call's linear layers run the
panel tile's float32 FMAs near the cores' FMA peak, so their cost grows with the rows. AMX's
``tdpbf16ps`` multiplies a 16-row tile of bfloat16 pairs by a 16 x 16-pair tile into 16 x 16
float32 accumulators in one instruction (docs/perf.md, "AMX for the fused call's linear
layers", has the measurements).

AMX multiplies bfloat16 only, so the activations are rounded to bfloat16 (nearest even)
before each linear layer, as a bfloat16 model's eager forward (and HF's) rounds them; the
products are exact in float32 and accumulated in float32 (``tdpbf16ps`` treats subnormal
inputs as zero and flushes subnormal results). A bfloat16 engine's fused call therefore
rounds its linear layers' inputs on either path (``fused_forward``: this one from
``AMX_MIN_ROWS`` rows, the FMA tile over the same panels below), so both paths multiply the
same bfloat16 values; their float32 sums still differ in the order they are added (as the
FMA tile's k phases differ with the rows), so a request's logits can differ in their last
bits with its step's size, not by a bfloat16 rounding. A float32 engine keeps the FMA panels
(docs/perf.md says why AMX does not serve its numbers).

Layout of a panel (:func:`panels`): [count, K', 32] uint16 as the paired panels at vector
width 16, K' = K rounded up to 32 (zero weights past K), and within each block of 32 k the
two 16-column halves one after the other, each as 16 rows of (16 columns x 2 consecutive
k): AMX's B-tile layout. One B tile is 1 KB. The FMA tile reads the same layout
(``gemm.make_tile(kpair=True)``): one load gives a vector at k and at k + 1.

AMX state must be granted by Linux once per process (``arch_prctl(ARCH_REQ_XCOMP_PERM)``,
done by :func:`available`) and the tiles configured (``ldtilecfg``) in every thread that
uses them: :func:`linear` configures at the start of each thread's share and releases at
its end. ``XYSERVE_AMX=0`` turns the path off (for comparisons); elsewhere it is on where
the host has ``amx-tile`` and ``amx-bf16`` and Linux grants the state.
"""

from __future__ import annotations

import ctypes
import os
import platform
from contextlib import contextmanager

import numpy as np

try:
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from xyserve.kernels.cpu import bf16, gemm
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None

ENV = "XYSERVE_AMX"
ROWS = 16  # rows of an A tile
KBLOCK = 32  # k per A/B tile (16 pairs)
COLS = 32  # output columns of a panel: two 16-column B tiles
TILE_ELEMS = 16 * 32  # uint16 elements of one B tile (16 rows of 16 column pairs)
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64
_state: bool | None = None


def _host_has_amx() -> bool:
    try:
        from llvmlite import binding as llvm

        feats = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - llvmlite comes with numba
        return False
    return bool(feats.get("amx-tile") and feats.get("amx-bf16"))


def _numba_compiles_amx() -> bool:
    """Whether numba's JIT targets AMX: ``NUMBA_CPU_NAME=generic`` (numba's setting for caches
    shared between machines) implies no ISA features, and ``NUMBA_CPU_FEATURES`` may leave
    AMX out; LLVM then cannot select the tile intrinsics and aborts the process (a fatal
    error, not an exception) when the first AMX kernel compiles. Unset, numba compiles for
    the host's features (:func:`_host_has_amx`)."""
    from numba.core import config

    features = config.CPU_FEATURES
    if features is None:
        return True
    return {"+amx-tile", "+amx-bf16"} <= set(features.replace(" ", "").split(","))


def _request_state() -> bool:
    """Ask Linux for the AMX tile state (needed before any tile instruction)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc syscall
        return False


def available() -> bool:
    """Whether the fused call may use AMX here: numba, compiling for AMX, x86-64 Linux, a CPU
    with AMX-BF16, the tile state granted, and ``XYSERVE_AMX`` not "0". Asked once per
    process."""
    global _state
    if _state is None:
        _state = (
            njit is not None
            and os.environ.get(ENV, "").strip() != "0"
            and platform.system() == "Linux"
            and platform.machine() in ("x86_64", "AMD64")
            and _host_has_amx()
            and _numba_compiles_amx()
            and _request_state()
        )
    return _state


def panels(bits: np.ndarray) -> np.ndarray:
    """[..., N, K] uint16 bfloat16 weight rows as [..., ceil(N / 32), K', 32] AMX panels (see
    the module docstring; K' = K rounded up to 32, zero past N and K)."""
    *lead, n, k = bits.shape
    count, kb = -(-n // COLS), -(-k // KBLOCK)
    padded = np.zeros((*lead, count * COLS, kb * KBLOCK), np.uint16)
    padded[..., :n, :k] = bits
    # [.., count, half, col, kb, pair, two] -> [.., count, kb, half, pair, col, two]
    t = padded.reshape(*lead, count, 2, 16, kb, 16, 2)
    nd = len(lead)
    order = [*range(nd), nd, nd + 3, nd + 1, nd + 4, nd + 2, nd + 5]
    return np.ascontiguousarray(t.transpose(order)).reshape(*lead, count, kb * KBLOCK, COLS)


if njit is not None:
    _i8, _i16, _i64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
    _i8p = _i8.as_pointer()
    _void = ir.VoidType()

    @contextmanager
    def _counted_loop(builder, count, step: int, name: str):
        """IR: ``for k in range(0, count, step)`` around the body written inside the ``with``
        (``k`` is yielded, an i64; nothing runs where ``count`` <= 0)."""
        entry = builder.block
        loop = builder.append_basic_block(name)
        done = builder.append_basic_block(name + "_done")
        zero, inc = ir.Constant(_i64, 0), ir.Constant(_i64, step)
        builder.cbranch(builder.icmp_signed(">", count, zero), loop, done)
        builder.position_at_end(loop)
        k = builder.phi(_i64)
        k.add_incoming(zero, entry)
        yield k
        nxt = builder.add(k, inc)
        k.add_incoming(nxt, builder.block)
        builder.cbranch(builder.icmp_signed("<", nxt, count), loop, done)
        builder.position_at_end(done)

    def _fn(builder, name: str, args: list):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_void, args), name)

    def _bytes(context, builder, signature, args, i, off):
        """Pointer (i8*) to element ``off`` of array argument ``i``."""
        data = context.make_array(signature.args[i])(context, builder, args[i]).data
        at = context.cast(builder, args[off], signature.args[off], types.intp) if off else None
        return builder.bitcast(builder.gep(data, [at]) if at is not None else data, _i8p)

    @intrinsic
    def tile_config(typingctx, cfg):
        """``ldtilecfg`` from a 64-byte uint8 array (:func:`config`)."""
        if not (isinstance(cfg, types.Array) and cfg.dtype == types.uint8):
            return None

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            builder.call(
                _fn(builder, "llvm.x86.ldtilecfg", [_i8p]),
                [_bytes(context, builder, signature, args, 0, None)],
            )
            return context.get_dummy_value()

        return types.void(cfg), codegen

    @intrinsic
    def tile_release(typingctx):
        """``tilerelease``: the thread's tile state back to its initial (unsaved) state."""

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            builder.call(_fn(builder, "llvm.x86.tilerelease", []), [])
            return context.get_dummy_value()

        return types.void(), codegen

    def _make_panel_tile(two: bool):
        """:func:`panel_tile` (``two``) or :func:`panel_tile_one`."""

        @intrinsic
        def tile(typingctx, a, a_off, lda, w, w_off, kblocks, c, c_off):
            return _panel_tile_typer(two, a, a_off, lda, w, w_off, kblocks, c, c_off)

        return tile

    def _panel_tile_typer(two, a, a_off, lda, w, w_off, kblocks, c, c_off):
        """A panel (``kblocks`` blocks of 32 k at ``w[w_off:]``, two B tiles a block) times
        two A tiles at ``a[a_off:]`` (32 rows of bfloat16, rows ``lda`` elements apart), into
        ``c[c_off:]``: 16 rows of 64 float32 (rows 256 bytes apart), columns 0-31 the first
        A tile's sums, 32-63 the second's. Four accumulator tiles (0-3) run independent
        chains, which hides ``tdpbf16ps``'s latency; tiles 4-5 hold A, 6-7 B
        (:func:`config`). Without ``two``: one A tile, its sums over the even blocks of k in
        columns 0-31 and over the odd ones in 32-63 (to be added)."""
        if not all(isinstance(x, types.Array) for x in (a, w, c)):
            return None
        if a.dtype != types.uint16 or w.dtype != types.uint16 or c.dtype != types.float32:
            return None
        sig = types.void(a, a_off, lda, w, w_off, kblocks, c, c_off)

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            load = _fn(builder, "llvm.x86.tileloadd64", [_i8, _i8p, _i64])
            dot = _fn(builder, "llvm.x86.tdpbf16ps", [_i8, _i8, _i8])
            zero = _fn(builder, "llvm.x86.tilezero", [_i8])
            store = _fn(builder, "llvm.x86.tilestored64", [_i8, _i8p, _i64])

            def t(i):
                return ir.Constant(_i8, i)

            def n(v):
                return ir.Constant(_i64, v)

            a0 = _bytes(context, builder, signature, args, 0, 1)
            w0 = _bytes(context, builder, signature, args, 3, 4)
            c0 = _bytes(context, builder, signature, args, 6, 7)
            lda_b = builder.mul(context.cast(builder, args[2], signature.args[2], types.intp), n(2))
            count = context.cast(builder, args[5], signature.args[5], types.intp)
            a1 = builder.gep(a0, [builder.mul(lda_b, n(ROWS))])
            block = 2 * 2 * TILE_ELEMS  # bytes of one block of k (two B tiles)
            for i in range(4):
                builder.call(zero, [t(i)])

            def block_at(kb, first, a_tile, a_base):
                """Block ``kb`` of k into C tiles ``first``, ``first`` + 1 through A tile
                ``a_tile`` (read from ``a_base``; None: already loaded)."""
                b_at = builder.gep(w0, [builder.mul(kb, n(block))])
                builder.call(load, [t(6), b_at, n(64)])
                builder.call(load, [t(7), builder.gep(b_at, [n(2 * TILE_ELEMS)]), n(64)])
                if a_base is not None:
                    a_at = builder.gep(a_base, [builder.mul(kb, n(2 * KBLOCK))])
                    builder.call(load, [t(a_tile), a_at, lda_b])
                builder.call(dot, [t(first), t(a_tile), t(6)])
                builder.call(dot, [t(first + 1), t(a_tile), t(7)])

            if two:
                with _counted_loop(builder, count, 1, "amx_k") as kb:
                    block_at(kb, 0, 4, a0)
                    a_at = builder.gep(a1, [builder.mul(kb, n(2 * KBLOCK))])
                    builder.call(load, [t(5), a_at, lda_b])
                    builder.call(dot, [t(2), t(5), t(6)])
                    builder.call(dot, [t(3), t(5), t(7)])
            else:
                even = builder.mul(builder.sdiv(count, n(2)), n(2))
                with _counted_loop(builder, even, 2, "amx_k2") as kb:
                    block_at(kb, 0, 4, a0)
                    block_at(builder.add(kb, n(1)), 2, 5, a0)
                last = builder.sub(count, n(1))
                with builder.if_then(builder.icmp_signed("<", even, count)):
                    block_at(last, 0, 4, a0)
            for i in range(4):
                builder.call(store, [t(i), builder.gep(c0, [n(4 * 16 * i)]), n(4 * 64)])
            return context.get_dummy_value()

        return sig, codegen

    panel_tile = _make_panel_tile(True)
    panel_tile_one = _make_panel_tile(False)

    @intrinsic
    def round_row(typingctx, x, x_off, a, a_off, count):
        """``a[a_off:a_off + count]`` = ``x[x_off:x_off + count]`` (float32) rounded to
        bfloat16 (nearest even; NaN stays NaN), 16 values at a time (``count`` a multiple of
        16): as bits where ``a`` is uint16, as their float32 values where it is float32."""
        if not (isinstance(x, types.Array) and isinstance(a, types.Array)):
            return None
        if x.dtype != types.float32 or a.dtype not in (types.uint16, types.float32):
            return None
        wide = a.dtype == types.float32
        sig = types.void(x, x_off, a, a_off, count)

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            i32 = ir.IntType(32)
            vf, vi = ir.VectorType(ir.FloatType(), 16), ir.VectorType(i32, 16)
            vh = ir.VectorType(_i16, 16)

            def splat(v):
                return ir.Constant(vi, [v] * 16)

            def n(v):
                return ir.Constant(_i64, v)

            def idx(i):
                return context.cast(builder, args[i], signature.args[i], types.intp)

            xd = context.make_array(signature.args[0])(context, builder, args[0]).data
            ad = context.make_array(signature.args[2])(context, builder, args[2]).data
            xp, ap, count = builder.gep(xd, [idx(1)]), builder.gep(ad, [idx(3)]), idx(4)
            with _counted_loop(builder, count, 16, "round_k") as k:
                v = builder.load(builder.bitcast(builder.gep(xp, [k]), vf.as_pointer()), align=4)
                h = bf16.round_bits(builder, builder.bitcast(v, vi), splat)
                at = builder.gep(ap, [k])
                if wide:
                    value = builder.bitcast(builder.shl(h, splat(16)), vf)
                    builder.store(value, builder.bitcast(at, vf.as_pointer()), align=4)
                else:
                    builder.store(
                        builder.trunc(h, vh), builder.bitcast(at, vh.as_pointer()), align=2
                    )
            return context.get_dummy_value()

        return sig, codegen

    @njit(inline="always")
    def config(cfg):  # pragma: no cover - compiled
        """The tile configuration :func:`panel_tile` uses: palette 1, tiles 0-7 of 16 rows of
        64 bytes (four C, two A, two B)."""
        cfg[:] = 0
        cfg[0] = 1
        for t in range(8):
            cfg[16 + 2 * t] = 64  # bytes per row (little-endian uint16)
            cfg[48 + t] = ROWS

    def linear(x, w, bias, out, accumulate, threads):  # pragma: no cover - compiled
        """out = bf16(x) @ W.T (+ bias), or out += it with ``accumulate``, for the first
        ``out.shape[0]`` rows of ``x`` (float32, C-contiguous; its width K a multiple of
        32); ``w``: [ceil(N / 32), K, 32] AMX panels (:func:`panels`). As
        ``fused_forward._linear``: each thread takes a contiguous run of panels and streams
        its share of the weights once, whatever the number of rows; the rows go in A tiles of
        16, two at a time over a panel (a lone last one alone, its even and odd blocks of k
        in separate accumulators). Compiled by ``fused_forward`` (serial and parallel)."""
        rows, kp, jobs = out.shape[0], w.shape[1], w.shape[0]
        groups = (rows + ROWS - 1) // ROWS
        pairs, lone = groups // 2, groups % 2
        a = np.empty((groups * ROWS, kp), np.uint16)
        for r in range(rows):
            round_row(x, r * kp, a, r * kp, kp)
        a[rows:] = 0
        chunks = max(1, min(threads, jobs))
        for t in prange(chunks):
            cfg = np.empty(64, np.uint8)
            config(cfg)
            tile_config(cfg)
            c = np.empty((pairs + lone) * ROWS * 64, np.float32)
            for job in range(jobs * t // chunks, jobs * (t + 1) // chunks):
                for p in range(pairs):
                    a_at, c_at = p * 2 * ROWS * kp, p * ROWS * 64
                    panel_tile(a, a_at, kp, w, job * kp * COLS, kp // KBLOCK, c, c_at)
                if lone:  # its two chains' sums added, into the first 32 columns
                    a_at, c_at = pairs * 2 * ROWS * kp, pairs * ROWS * 64
                    panel_tile_one(a, a_at, kp, w, job * kp * COLS, kp // KBLOCK, c, c_at)
                    for i in range(ROWS):
                        for j in range(COLS):
                            c[c_at + i * 64 + j] += c[c_at + i * 64 + COLS + j]
                n0 = job * COLS
                cols = min(COLS, out.shape[1] - n0)
                for r in range(rows):
                    g = r // ROWS
                    at = (g // 2) * ROWS * 64 + (r % ROWS) * 64 + (g % 2) * COLS
                    gemm.store_sums(out, r, n0, cols, c, at, bias, accumulate)
            tile_release()

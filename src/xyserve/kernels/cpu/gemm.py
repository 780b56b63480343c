"""SmoothGEMM's ``numba`` CPU entry point: an outer-product GEMM for the few token rows of
decode steps.

Why: with M (token rows) at 64 and below and cold weights, MKL's sgemm is far from both its
compute peak and the memory floor of streaming the weight once. ``xyserve tune`` still decides
per (op, bucket), against ``F.linear``, with the same margin as every other entry point.

The register tile is BLIS's outer product, written as LLVM vector IR (a numba intrinsic:
numba's own loops do not vectorize this form, and a tile written as scalars for LLVM's SLP
vectorizer was slower: docs/perf.md): 6 weight rows x 2 vectors of token rows in 12 vector
accumulators. Per step of K it loads two token vectors and broadcasts 6 weight scalars for 12
FMAs, with no horizontal sums. The vector width comes from the host (``kernels.cpu.isa``): 16 floats
on AVX-512 (a 6 x 32 tile in zmm registers; numba sets no ``min-legal-vector-width``, so LLVM
keeps the explicit 512-bit vectors even on cores it tunes for 256-bit loops), 8 on AVX/AVX2
(6 x 16 in ymm), 4 elsewhere (the portable 6 x 8 tile in 128-bit vectors). The FMAs are LLVM's
``fmuladd``: fused where the CPU has FMA, a multiply and an add where not. Every width's tiles
are compiled into the one kernel and the width is an argument, so the tests run each width the
host can run. The token rows are first packed K-major in panels of two vectors, so a panel
streams contiguously (a strided panel, rows 256 bytes apart, keeps to 16 of L1's 64 sets).
Token rows left over go to a one-vector panel (and at width 16 then an 8-row one), then to
plain dot products along K (fewer rows would waste most of a vector). Each thread owns a
contiguous share of the weight rows, so it streams only that share, and each 6-row weight
block stays in L1 while every panel passes it (up to K of about 1300 with a 32 KB L1). When 6
does not divide N the last block overlaps its neighbour and writes back only its new rows. The
IR uses llvmlite's typed pointers (numba 0.68, installed here, emits them; older versions were
not run); a numba without them needs the GEPs and loads given their element types.

The output is row-major, like ``F.linear``'s, with the bias added in the tile's write-back.
numba is optional: without it (or for dtypes other than float32) ``F.linear`` runs.
Measurements of the tile (widths, against the vendor GEMM) are in docs/perf.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xyserve.kernels.cpu import use_cpu_threads
from xyserve.kernels.cpu.isa import vector_width

try:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None

_WIDTH = vector_width()  # read once: the host does not change under a running process
MR = 6  # weight rows of the register tile
VECTORS = 2  # token vectors of the register tile: its token rows are 2 x the vector width


def available(dtype: torch.dtype) -> bool:
    return numba is not None and dtype == torch.float32


def make_tile(
    rows: int,
    width: int,
    vectors: int,
    prefetch: int = 0,
    split: int = 1,
    accumulate: bool = False,
    stream: bool = False,
    paired: bool = False,
    kpair: bool = False,
):
    """An intrinsic ``tile(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)``: ``acc[i, j] =
    sum_k w[w_off + i * ldw + k] * xt[xt_off + k * ldxt + j]`` for ``rows`` x ``width *
    vectors`` in vectors of ``width`` floats,
    written row-major to ``acc`` (float32 arrays, ``w`` also uint16 bfloat16 bits, each
    element widened as it is broadcast; offsets in elements; ``k_count`` >= 1; no bounds
    checks, the caller owns them). ``prefetch`` > 0: each step of k also prefetches
    the ``xt`` row ``prefetch // (its bytes)`` rows of ``ldxt`` ahead (``prefetch`` bytes
    where ``ldxt`` is the tile's own row), for an ``xt`` streamed from memory once (a
    prefetch past the array's end is harmless). ``xt`` may also be uint16 bfloat16 bit patterns,
    each vector widened to float32 as it is loaded (the upper half of a float32's bits):
    half the bytes streamed, the same float32 arithmetic. ``split`` > 1 keeps that many sets
    of accumulators, for consecutive k in turn (summed at the end), so a tile of few rows
    has enough independent FMA chains to hide their latency; ``k_count`` must then be a
    multiple of ``split`` (the caller's check). ``accumulate``: ``acc`` += the sums instead
    of ``acc`` = them (one call per chunk of k, the sums kept in ``acc`` between calls).
    ``stream`` (with ``prefetch`` 0): the tile takes two more arguments, ``pf_off`` and
    ``pf_step``, and each step k prefetches the one cache line of ``xt`` at element ``pf_off +
    k * pf_step``: the caller spreads the prefetch of what it reads next over the tile's
    steps (a burst of prefetches issued by one pass stalls on the memory system while the
    passes after it compute with nothing in flight). ``paired`` (two vectors, bfloat16
    ``xt``): each ``xt`` row holds its two vectors interleaved, element j of the first vector
    in the low half of 32-bit word j and element j of the second in its high half, so one
    load and two integer operations (a shift, a mask) widen both, where separate vectors
    take two loads, two zero-extensions and two shifts; a float32 ``xt`` is read as without
    it. ``kpair`` (two vectors of 16, bfloat16 ``xt``): ``xt`` is laid out as AMX's B tiles
    (``kernels.cpu.amx.panels``): per block of 32 k, the two vectors' halves one after the
    other, each 16 rows of (16 columns x 2 consecutive k), so one load gives a vector at k
    (low halves) and at k + 1 (high halves); the tile steps k two at a time (``k_count`` a
    multiple of 2 ``split``, ``xt_off`` at a block's start, ``ldxt`` unused)."""
    if paired and vectors != 2:
        raise ValueError("paired bfloat16 vectors come two to a row")
    if kpair and (vectors != 2 or width != 16 or paired):
        raise ValueError("k-paired bfloat16 panels are AMX's: two vectors of 16, not paired")
    if stream and prefetch:
        raise ValueError("a streaming tile prefetches where its caller says, not ahead")

    def typer(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc, pf):
        arrays = (w, xt, acc)
        if any(not isinstance(a, types.Array) for a in arrays) or acc.dtype != types.float32:
            return None  # the IR writes float32 only: anything else is a typing error
        if xt.dtype not in (types.float32, types.uint16):
            return None
        if w.dtype not in (types.float32, types.uint16):
            return None
        w_bf16 = w.dtype == types.uint16
        bf16 = xt.dtype == types.uint16
        if kpair and not bf16:
            return None
        sig = types.void(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc, *pf)

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vec = ir.VectorType(f32, width)
            vec_p = vec.as_pointer()
            half_p = ir.VectorType(ir.IntType(16), width).as_pointer()
            sixteen = ir.Constant(ir.VectorType(i32, width), [16] * width)
            word_p = ir.VectorType(i32, width).as_pointer()
            high_half = ir.Constant(ir.VectorType(i32, width), [-65536] * width)  # 0xFFFF0000

            def load_xt(at):
                """A vector of ``xt`` from element pointer ``at``, as float32."""
                if not bf16:
                    return builder.load(builder.bitcast(at, vec_p), align=4)
                bits = builder.load(builder.bitcast(at, half_p), align=2)
                wide = builder.shl(builder.zext(bits, ir.VectorType(i32, width)), sixteen)
                return builder.bitcast(wide, vec)

            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            def index(i):
                return context.cast(builder, args[i], signature.args[i], types.intp)

            def const(v):
                return ir.Constant(i64, v)

            def _prefetch(builder, row, ld, row_bytes):
                """Prefetch the ``xt`` row ``prefetch // row_bytes`` rows of ``ld`` past
                ``row`` (``prefetch`` bytes ahead where ``ld`` is the row's own width)."""
                ahead = builder.gep(row, [builder.mul(const(prefetch // row_bytes), ld)])
                emit_prefetch(builder, ahead, max(1, row_bytes // 64))

            w_data, xt_data, acc_data = data(0), data(3), data(7)
            w_off, ldw, xt_off, ldxt, k_count = (index(i) for i in (1, 2, 4, 5, 6))
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.v{width}f32"
            )
            w_rows = [
                builder.gep(w_data, [builder.add(w_off, builder.mul(ldw, const(i)))])
                for i in range(rows)
            ]
            xt_base = builder.gep(xt_data, [xt_off])
            if stream:
                pf_base = builder.gep(xt_data, [index(8)])
                pf_step = index(9)

            def acc_at(idx):
                return builder.bitcast(builder.gep(acc_data, [const(width * idx)]), vec_p)

            # the first phase starts from what ``acc`` holds (accumulate) or from zero
            starts = [
                builder.load(acc_at(idx), align=4) if accumulate else ir.Constant(vec, None)
                for idx in range(rows * vectors)
            ]
            entry = builder.block
            loop = builder.append_basic_block("tile_k")
            done = builder.append_basic_block("tile_done")
            builder.branch(loop)

            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            accs = []  # per phase of k (``split``), rows x vectors
            for idx in range(split * rows * vectors):
                a = builder.phi(vec)
                first = idx < rows * vectors
                a.add_incoming(starts[idx] if first else ir.Constant(vec, None), entry)
                accs.append(a)
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, width), [0] * width)

            def broadcast(i, at):
                """Token row ``i``'s value at k = ``at`` in every lane (bfloat16 bits widened)."""
                s = builder.load(builder.gep(w_rows[i], [at]), align=2 if w_bf16 else 4)
                if w_bf16:
                    s = builder.bitcast(
                        builder.shl(builder.zext(s, i32), ir.Constant(i32, 16)), f32
                    )
                return builder.shuffle_vector(
                    builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, splat
                )

            new = []
            step = 2 if kpair else 1  # k per phase
            for phase in range(split):
                kk = builder.add(k, const(step * phase))
                if kpair:  # both k of the pair, both vectors, from two loads
                    half0 = builder.gep(
                        xt_base,
                        [
                            builder.add(
                                builder.mul(builder.ashr(kk, const(5)), const(1024)),
                                builder.mul(
                                    builder.ashr(builder.and_(kk, const(31)), const(1)), const(32)
                                ),
                            )
                        ],
                    )
                    half1 = builder.gep(half0, [const(512)])
                    if prefetch:
                        for half in (half0, half1):
                            emit_prefetch(builder, builder.gep(half, [const(prefetch // 2)]), 1)
                    elif stream:
                        for d in (0, 1):
                            at = builder.mul(builder.add(kk, const(d)), pf_step)
                            emit_prefetch(builder, builder.gep(pf_base, [at]), 1)
                    words = [
                        builder.load(builder.bitcast(h, word_p), align=4) for h in (half0, half1)
                    ]
                    pairs = [
                        [builder.bitcast(builder.shl(wd, sixteen), vec) for wd in words],
                        [builder.bitcast(builder.and_(wd, high_half), vec) for wd in words],
                    ]
                    base = phase * rows * vectors
                    for i in range(rows):
                        sums = [accs[base + i * vectors + j] for j in range(vectors)]
                        for d, tokens in enumerate(pairs):
                            at = kk if d == 0 else builder.add(kk, const(1))
                            b = broadcast(i, at)
                            sums = [
                                builder.call(fma, [b, tokens[j], sums[j]]) for j in range(vectors)
                            ]
                        new += sums
                    continue
                xt_row = builder.gep(xt_base, [builder.mul(kk, ldxt)])
                if prefetch:
                    _prefetch(builder, xt_row, ldxt, width * vectors * (2 if bf16 else 4))
                elif stream:
                    emit_prefetch(builder, builder.gep(pf_base, [builder.mul(kk, pf_step)]), 1)
                if paired and bf16:
                    words = builder.load(builder.bitcast(xt_row, word_p), align=4)
                    lo = builder.shl(words, sixteen)
                    hi = builder.and_(words, high_half)
                    tokens = [builder.bitcast(lo, vec), builder.bitcast(hi, vec)]
                else:
                    tokens = [
                        load_xt(builder.gep(xt_row, [const(width * j)])) for j in range(vectors)
                    ]
                base = phase * rows * vectors
                for i in range(rows):
                    b = broadcast(i, kk)
                    new += [
                        builder.call(fma, [b, tokens[j], accs[base + i * vectors + j]])
                        for j in range(vectors)
                    ]
            k_next = builder.add(k, const(split * (2 if kpair else 1)))
            k.add_incoming(k_next, loop)
            for a, v in zip(accs, new):
                a.add_incoming(v, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

            builder.position_at_end(done)
            size = rows * vectors
            sums = new[:size]
            for phase in range(1, split):
                sums = [
                    builder.fadd(x, y) for x, y in zip(sums, new[phase * size : (phase + 1) * size])
                ]
            for idx, v in enumerate(sums):
                builder.store(v, acc_at(idx), align=4)
            return context.get_dummy_value()

        return sig, codegen

    if stream:

        @intrinsic
        def tile(typingctx, w, w_off, ldw, xt, xt_off, ldxt, k_count, acc, pf_off, pf_step):
            return typer(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc, (pf_off, pf_step))

        return tile

    @intrinsic
    def tile(typingctx, w, w_off, ldw, xt, xt_off, ldxt, k_count, acc):  # noqa: F811
        return typer(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc, ())

    return tile


def emit_prefetch(builder, at, lines: int) -> None:
    """IR: prefetch ``lines`` cache lines from pointer ``at`` on, for reading, into L2
    (``prefetcht1``: docs/perf.md, "Panels", compares the levels)."""
    i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
    pf = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
    )
    base = builder.bitcast(at, i8p)
    flags = [ir.Constant(i32, v) for v in (0, 2, 1)]  # read, locality 2 (L2), data
    for line in range(lines):
        builder.call(pf, [builder.gep(base, [ir.Constant(i64, 64 * line)]), *flags])


def make_prefetch(lines: int):
    """An intrinsic ``prefetch(a, offset)``: prefetch ``lines`` cache lines of array ``a``
    from element ``offset`` on into L2 (a hint: never faults, even past the array)."""

    @intrinsic
    def prefetch(typingctx, a, offset):
        if not isinstance(a, types.Array):
            return None
        sig = types.void(a, offset)

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            off = context.cast(builder, args[1], signature.args[1], types.intp)
            emit_prefetch(builder, builder.gep(data, [off]), lines)
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


def store_sums(out, r, n0, cols, sums, at, bias, accumulate):  # pragma: no cover - compiled
    """A tile's sums written back: ``out[r, n0:n0 + cols]`` = ``sums[at:at + cols]`` (plus
    ``bias[n0:n0 + cols]`` where ``bias`` is not empty), or ``+=`` with ``accumulate`` (a
    residual add). Shared by the fused call's panel jobs and its AMX linear."""
    has_bias = bias.shape[0] > 0
    for j in range(cols):
        v = sums[at + j]
        if has_bias:
            v += bias[n0 + j]
        if accumulate:
            out[r, n0 + j] += v
        else:
            out[r, n0 + j] = v


if numba is not None:
    store_sums = njit(inline="always")(store_sums)
    # (vector width, vectors): the tiles of every width, all compiled into the one kernel
    _t16x2, _t16x1 = make_tile(MR, 16, 2), make_tile(MR, 16, 1)
    _t8x2, _t8x1 = make_tile(MR, 8, 2), make_tile(MR, 8, 1)
    _t4x2, _t4x1 = make_tile(MR, 4, 2), make_tile(MR, 4, 1)

    @njit(inline="always")
    def _tile(vw, rows, w, w_off, ldw, xt, xt_off, ldxt, k_count, acc):  # pragma: no cover
        """The tile for ``rows`` token rows (2 vw, vw, or 8 at vw = 16) of vector width vw."""
        if vw == 16:
            if rows == 32:
                _t16x2(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)
            elif rows == 16:
                _t16x1(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)
            else:
                _t8x1(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)
        elif vw == 8:
            if rows == 16:
                _t8x2(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)
            else:
                _t8x1(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)
        elif rows == 8:
            _t4x2(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)
        else:
            _t4x1(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)

    @njit(parallel=True, fastmath=True, cache=True)
    def _gemm_nt(x, w, bias, y, threads, vw):  # pragma: no cover - compiled
        """``y[M, N] = x[M, K] @ w[N, K].T (+ bias)`` for C-contiguous float32 arrays, N >= MR,
        K >= 1, on ``threads`` shares of the weight rows (``bias`` empty for none), with
        vectors of ``vw`` floats (4, 8 or 16)."""
        m_count, k_count = x.shape
        n_count = w.shape[0]
        tm = VECTORS * vw  # the widest panel
        # panels: full ones of tm rows, then one of vw rows, then (vw = 16) one of 8; the
        # rest (fewer than 8, or than 4 at vw = 4) dot products
        full = m_count // tm
        rest = m_count - tm * full
        one = 1 if rest >= vw else 0
        rest -= vw * one
        eight = 1 if vw == 16 and rest >= 8 else 0
        rest -= 8 * eight
        packed = m_count - rest
        panels = full + one + eight
        p_rows = np.full(panels, tm, np.int64)
        if one:
            p_rows[full] = vw
        if eight:
            p_rows[panels - 1] = 8
        xt = np.empty((panels, k_count, tm), np.float32)
        for p in prange(panels):  # pack: panel p holds token rows p*tm.. K-major
            m0 = p * tm  # every panel but the last two is full, so this is its first row
            for k in range(k_count):
                for j in range(p_rows[p]):
                    xt[p, k, j] = x[m0 - (tm - vw) * (p > full) + j, k]
        has_bias = bias.shape[0] > 0
        blocks = (n_count + MR - 1) // MR
        for t in prange(threads):
            acc = np.empty(MR * tm, np.float32)
            for blk in range(blocks * t // threads, blocks * (t + 1) // threads):
                # the last block ends at row N; where it overlaps its neighbour (MR does not
                # divide N) it writes back only rows from ``first`` on, so no row is written twice
                n = min(MR * blk, n_count - MR)
                first = MR * blk - n
                for p in range(panels):
                    width = p_rows[p]
                    m0 = p * tm - (tm - vw) * (p > full)
                    _tile(
                        vw, width, w, n * k_count, k_count, xt, p * k_count * tm, tm, k_count, acc
                    )
                    for j in range(width):
                        for i in range(first, MR):
                            v = acc[i * width + j]
                            y[m0 + j, n + i] = v + bias[n + i] if has_bias else v
                for m in range(packed, m_count):  # too few rows for a vector of tokens
                    s0 = s1 = s2 = s3 = s4 = s5 = np.float32(0.0)
                    for k in range(k_count):
                        c = x[m, k]
                        s0 += w[n, k] * c
                        s1 += w[n + 1, k] * c
                        s2 += w[n + 2, k] * c
                        s3 += w[n + 3, k] * c
                        s4 += w[n + 4, k] * c
                        s5 += w[n + 5, k] * c
                    sums = (s0, s1, s2, s3, s4, s5)
                    for i in range(first, MR):
                        y[m, n + i] = sums[i] + bias[n + i] if has_bias else sums[i]


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    threads: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias`` for a 2-D float32 CPU ``x`` of any layout (copied to row-major,
    which costs O(M K) against the GEMM's O(M N K)), in vectors of ``width`` floats (the
    host's, ``kernels.cpu.isa.vector_width``, when None; the caller owns that the host runs it). The kernel checks no bounds, so anything
    else (other dtypes or devices, shapes that do not agree) goes to ``F.linear``, which raises
    its own clear error where the shapes are wrong; so do weights of fewer than MR rows (only
    tiny test models have them)."""
    n = weight.shape[0] if weight.dim() == 2 else -1
    fits = (
        x.dim() == 2
        and weight.dim() == 2
        and n >= MR
        and weight.shape[1] == x.shape[1]
        and (bias is None or (bias.dim() == 1 and bias.shape[0] == n))
        and all(
            t.dtype == torch.float32 and t.device.type == "cpu"
            for t in (x, weight) + (() if bias is None else (bias,))
        )
    )
    if not fits:
        return F.linear(x, weight, bias)
    x2 = x.detach().contiguous()
    w = weight.detach().contiguous()
    m, k = x2.shape
    b = torch.empty(0, dtype=torch.float32) if bias is None else bias.detach().contiguous()
    if k == 0 or m == 0:
        y = torch.zeros((m, n), dtype=torch.float32)
        return y if bias is None else y.add_(b)
    y = torch.empty((m, n), dtype=torch.float32)
    vw = _WIDTH if width is None else width
    _gemm_nt(x2.numpy(), w.numpy(), b.numpy(), y.numpy(), use_cpu_threads(threads), vw)
    return y


def warmup() -> None:
    """Compile (or load from numba's cache) the kernel now, not inside the first step."""
    if numba is not None:
        f32 = torch.float32
        linear(torch.zeros((4, 8), dtype=f32), torch.zeros((MR + 1, 8), dtype=f32), None)

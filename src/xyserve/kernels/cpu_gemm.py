"""SmoothGEMM's ``numba`` CPU entry point: an outer-product GEMM for the few token rows of
decode steps.

Why: with M (token rows) at 64 and below and cold weights, MKL's sgemm on the 2-core dev box
is far from both its compute peak and the memory floor of streaming the weight once. ``xyserve
tune`` still decides per (op, bucket), against ``F.linear``, with the same margin as every other
entry point.

The register tile is BLIS's outer product, written as LLVM vector IR (a numba intrinsic:
numba's own loops do not vectorize this form, and a tile written as scalars for LLVM's SLP
vectorizer ran at 6.5-8.6 GFLOP/s): 6 weight rows x 16 token rows in 12 vector accumulators
(AVX2's 16 registers hold them, two token vectors and one broadcast weight). Per step of K it
loads two token vectors and broadcasts 6 weight scalars for 12 FMAs, with no horizontal sums;
with its operands in L1 it runs at the core's FMA peak (about 75 GFLOP/s, one thread). The
FMAs are LLVM's ``fmuladd``: fused where the CPU has FMA, a multiply and an add where not. The
token rows are first packed K-major in 16-row panels, so a panel streams contiguously (a strided
panel, rows 256 bytes apart, keeps to 16 of L1's 64 sets: the tile lost a fifth). Token rows
left over go to an 8-row tile, then to plain dot products along K (fewer than 8 rows would
waste most of a vector). Each thread owns a contiguous share of the weight rows, so it streams
only that share, and each 6-row weight block stays in L1 while every panel passes it (up to
K of about 1300; at K = 2048 a block is 48 KB and comes from L2). When 6 does not divide N the
last block overlaps its neighbour and writes back only its new rows. On a CPU without AVX2
LLVM splits the 8-wide vectors. The IR uses llvmlite's typed pointers (numba 0.68, installed
here, emits them; older versions were not run); a numba without them needs the GEPs and loads
given their element types.

One-off microbenchmark (2 threads, the weight cycled through 150 MB of copies), time against
the 4 x 3 dot-product kernel this replaced, at M = 64 / 32 / 16: 4096 x 768 0.84-0.94 / 0.87 /
0.88; 1280 x 768 0.87-1.06 / 0.86 / 0.83; 768 x 768 0.91 / - / 0.75; 768 x 2048 0.86 / - / 0.74;
32000 x 768 0.89 / - / 0.74. At M = 1-7 (dot products only) 0.93-0.98.

The output is row-major, like ``F.linear``'s, with the bias added in the tile's write-back.
numba is optional: without it (or for dtypes other than float32) ``F.linear`` runs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xyserve.kernels import use_cpu_threads

try:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None

MR = 6  # weight rows of the register tile
TM = 16  # token rows of the register tile (two 8-wide vectors); the panel width


def available(dtype: torch.dtype) -> bool:
    return numba is not None and dtype == torch.float32


def _make_tile(rows: int, vectors: int):
    """An intrinsic ``tile(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)``: ``acc[i, j] =
    sum_k w[w_off + i * ldw + k] * xt[xt_off + k * ldxt + j]`` for ``rows`` x ``8 * vectors``,
    written row-major to ``acc`` (float32 arrays; offsets in elements; ``k_count`` >= 1; no
    bounds checks, the caller owns them)."""

    @intrinsic
    def tile(typingctx, w, w_off, ldw, xt, xt_off, ldxt, k_count, acc):
        if any(not isinstance(a, types.Array) or a.dtype != types.float32 for a in (w, xt, acc)):
            return None  # the IR reads float32 only: anything else is a typing error
        sig = types.void(w, w_off, ldw, xt, xt_off, ldxt, k_count, acc)

        def codegen(context, builder, signature, args):  # pragma: no cover - compiled
            f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
            vec = ir.VectorType(f32, 8)
            vec_p = vec.as_pointer()

            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            def index(i):
                return context.cast(builder, args[i], signature.args[i], types.intp)

            def const(v):
                return ir.Constant(i64, v)

            w_data, xt_data, acc_data = data(0), data(3), data(7)
            w_off, ldw, xt_off, ldxt, k_count = (index(i) for i in (1, 2, 4, 5, 6))
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fmuladd.v8f32"
            )
            w_rows = [
                builder.gep(w_data, [builder.add(w_off, builder.mul(ldw, const(i)))])
                for i in range(rows)
            ]
            xt_base = builder.gep(xt_data, [xt_off])
            entry = builder.block
            loop = builder.append_basic_block("tile_k")
            done = builder.append_basic_block("tile_done")
            builder.branch(loop)

            builder.position_at_end(loop)
            k = builder.phi(i64)
            k.add_incoming(const(0), entry)
            accs = []
            for _ in range(rows * vectors):
                a = builder.phi(vec)
                a.add_incoming(ir.Constant(vec, None), entry)
                accs.append(a)
            xt_row = builder.gep(xt_base, [builder.mul(k, ldxt)])
            tokens = [
                builder.load(builder.bitcast(builder.gep(xt_row, [const(8 * j)]), vec_p), align=4)
                for j in range(vectors)
            ]
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, 8), [0] * 8)
            new = []
            for i in range(rows):
                s = builder.load(builder.gep(w_rows[i], [k]), align=4)
                b = builder.shuffle_vector(
                    builder.insert_element(undef, s, ir.Constant(i32, 0)), undef, splat
                )
                new += [
                    builder.call(fma, [b, tokens[j], accs[i * vectors + j]]) for j in range(vectors)
                ]
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, loop)
            for a, v in zip(accs, new):
                a.add_incoming(v, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

            builder.position_at_end(done)
            for idx, v in enumerate(new):
                out = builder.bitcast(builder.gep(acc_data, [const(8 * idx)]), vec_p)
                builder.store(v, out, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


if numba is not None:
    _tile16 = _make_tile(MR, TM // 8)
    _tile8 = _make_tile(MR, 1)  # a last panel of at most 8 token rows: half the FMAs

    @njit(parallel=True, fastmath=True, cache=True)
    def _gemm_nt(x, w, bias, y, threads):  # pragma: no cover - compiled
        """``y[M, N] = x[M, K] @ w[N, K].T (+ bias)`` for C-contiguous float32 arrays, N >= MR,
        K >= 1, on ``threads`` shares of the weight rows (``bias`` empty for none)."""
        m_count, k_count = x.shape
        n_count = w.shape[0]
        full = m_count // TM
        half = (m_count - TM * full) // 8  # one 8-row panel after the full ones, or none
        packed = TM * full + 8 * half  # token rows the tiles take; the rest (< 8) dot products
        panels = full + half
        xt = np.empty((panels, k_count, TM), np.float32)
        for p in prange(panels):  # pack: panel p holds token rows p*TM.. K-major
            m0 = p * TM
            for k in range(k_count):
                for j in range(min(TM, packed - m0)):
                    xt[p, k, j] = x[m0 + j, k]
        has_bias = bias.shape[0] > 0
        blocks = (n_count + MR - 1) // MR
        for t in prange(threads):
            acc = np.empty(MR * TM, np.float32)
            for blk in range(blocks * t // threads, blocks * (t + 1) // threads):
                # the last block ends at row N; where it overlaps its neighbour (MR does not
                # divide N) it writes back only rows from ``first`` on, so no row is written twice
                n = min(MR * blk, n_count - MR)
                first = MR * blk - n
                for p in range(panels):
                    m0 = p * TM
                    width = min(TM, packed - m0)
                    if width == TM:
                        _tile16(w, n * k_count, k_count, xt, p * k_count * TM, TM, k_count, acc)
                    else:
                        _tile8(w, n * k_count, k_count, xt, p * k_count * TM, TM, k_count, acc)
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
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, threads: int | None = None
) -> torch.Tensor:
    """``x @ weight.T + bias`` for a 2-D float32 CPU ``x`` of any layout (copied to row-major,
    which costs O(M K) against the GEMM's O(M N K)). The kernel checks no bounds, so anything
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
    _gemm_nt(x2.numpy(), w.numpy(), b.numpy(), y.numpy(), use_cpu_threads(threads))
    return y


def warmup() -> None:
    """Compile (or load from numba's cache) the kernel now, not inside the first step."""
    if numba is not None:
        f32 = torch.float32
        linear(torch.zeros((4, 8), dtype=f32), torch.zeros((MR + 1, 8), dtype=f32), None)

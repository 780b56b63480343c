"""A whole Llama-family forward in one numba call, for small models on CPU in float32.

Why: a small model (the bundled draft: hidden 128, 2 layers) spends a pass mostly on per-op
overhead (torch dispatch, kernel wrappers, Python), not on arithmetic. Here every layer, the
paged K/V cache writes, attention and the lm_head run in one compiled function, so a pass
costs one call.

The call takes rows: a token id and its position, a cache slot to write its K/V to, the block
table its keys are read through, and how many of the table's positions it sees (``ctx_len``:
positions ``0 .. ctx_len - 1``), plus optional extra key slots (the row's ancestors in a token
tree; empty for a plain causal row, whose ``ctx_len`` is its position + 1 and whose own slot
is in its table). Per layer every row's K/V is written first, then every row attends, so
several rows of one request (a catch-up pass) see each other as in a causal prefill.

Weights that are all bfloat16 values (a bfloat16 checkpoint, as the bundled draft's) are kept
as their 16-bit patterns and widened to float32 row by row as they are read: exactly the same
values and float32 arithmetic, half the bytes streamed per pass (at batch 1 a pass is bound by
reading its weights). Other weights stay float32.

Supported: grouped-query attention, an optional qkv bias (Qwen2), an optional per-head q/k
RMSNorm before RoPE (Qwen3), tied or separate lm_head, and RoPE read from the model's own
cos/sin tables (so scaled RoPE stays the model's). Linear layers keep the model's [out, in]
layout: each weight row is read once per call for all token rows, so at one row a pass streams
the weights once, and at many rows it still does.

Two compilations of the same code exist: ``serial`` (one thread) and ``parallel`` (numba
``prange`` over each linear layer's output columns, attention's (row, head) pairs, and rows);
:func:`forward` takes either. Which one the draft uses was chosen by measurement (docs/perf.md, "Fused draft forward
and trees").
numba is optional: without it :func:`available` is False and callers keep their torch path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import FunctionType

import numpy as np

from xyserve.kernels.cpu import use_cpu_threads

try:
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None


def available() -> bool:
    return njit is not None


@dataclass
class PackedWeights:
    """A model's weights as contiguous numpy arrays, linear layers [out, in].

    The linear layers (``qkv``, ``o``, ``gate_up``, ``down``, ``lm_head``) are float32, or
    uint16 bfloat16 patterns when every one of their values is a bfloat16 value; the rest is
    float32. Layer arrays are stacked along a first axis of length ``num_layers``. Absent biases and
    q/k norms are zero-sized along their last axis (``has_*`` tell the kernel).
    """

    embed: np.ndarray  # [V, H]
    lm_head: np.ndarray  # [V, H] (float32 or bfloat16 bits, as every linear layer)
    final_norm: np.ndarray  # [H]
    input_norm: np.ndarray  # [L, H]
    post_norm: np.ndarray  # [L, H]
    qkv: np.ndarray  # [L, (Hq + 2 Hkv) D, H]
    qkv_bias: np.ndarray  # [L, (Hq + 2 Hkv) D] or [L, 0]
    o: np.ndarray  # [L, H, Hq D]
    o_bias: np.ndarray  # [L, H] or [L, 0]
    gate_up: np.ndarray  # [L, 2 I, H]
    down: np.ndarray  # [L, H, I]
    q_norm: np.ndarray  # [L, D] or [L, 0]
    k_norm: np.ndarray  # [L, D] or [L, 0]
    cos: np.ndarray  # [max_positions, D / 2]
    sin: np.ndarray  # [max_positions, D / 2]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float

    @property
    def num_layers(self) -> int:
        return self.input_norm.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.embed.shape[0]


def _bf16_exact(arrays: list[np.ndarray]) -> bool:
    """Whether every value is a bfloat16 value (its low 16 bits are zero)."""
    return all(not (a.view(np.uint32) & 0xFFFF).any() for a in arrays)


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.view(np.uint32) >> 16).astype(np.uint16)


def _f32(x) -> np.ndarray:
    """A float32 C-contiguous copy of a tensor or array (never a view of the model's)."""
    a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _stack(mats: list) -> np.ndarray:
    """Per-layer tensors stacked; ``None`` entries (absent) give a zero-width array."""
    if any(m is None for m in mats):
        return np.zeros((len(mats), 0), np.float32)
    arrs = [_f32(m) for m in mats]
    return np.ascontiguousarray(np.stack(arrs), dtype=np.float32)


def pack(
    embed,
    lm_head,
    final_norm,
    layers: list[dict],
    cos,
    sin,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
    compact: bool = True,
) -> PackedWeights:
    """Copy a model's weights once into :class:`PackedWeights`.

    ``layers``: one dict per layer with ``input_norm``, ``post_norm``, ``qkv`` ([(Hq + 2 Hkv) D,
    H], q rows then k then v), ``qkv_bias``, ``o`` ([H, Hq D]), ``o_bias``, ``gate_up``
    ([2 I, H], gate rows then up), ``down`` ([H, I]), ``q_norm``, ``k_norm`` (None where the
    model has none). ``cos``/``sin``: the model's [max_positions, D] or [.., D / 2] tables
    (non-interleaved halves, as HF: both halves equal, the first is kept). ``compact``: keep
    the linear layers as bfloat16 bits where that loses nothing.
    """
    half = head_dim // 2
    cos_a, sin_a = _f32(cos), _f32(sin)
    linears = {
        "lm_head": _f32(lm_head),
        **{k: _stack([lay[k] for lay in layers]) for k in ("qkv", "o", "gate_up", "down")},
    }
    if compact and _bf16_exact(list(linears.values())):
        linears = {k: _bf16_bits(a) for k, a in linears.items()}
    return PackedWeights(
        embed=_f32(embed),
        final_norm=_f32(final_norm),
        input_norm=_stack([lay["input_norm"] for lay in layers]),
        post_norm=_stack([lay["post_norm"] for lay in layers]),
        qkv_bias=_stack([lay["qkv_bias"] for lay in layers]),
        o_bias=_stack([lay["o_bias"] for lay in layers]),
        **linears,
        q_norm=_stack([lay["q_norm"] for lay in layers]),
        k_norm=_stack([lay["k_norm"] for lay in layers]),
        cos=np.ascontiguousarray(cos_a.reshape(cos_a.shape[0], -1)[:, :half]),
        sin=np.ascontiguousarray(sin_a.reshape(sin_a.shape[0], -1)[:, :half]),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        eps=float(eps),
    )


def new_cache(w: PackedWeights, num_blocks: int, block_size: int) -> tuple[np.ndarray, ...]:
    """Zeroed K and V caches: [L, num_blocks, block_size, Hkv, D] each."""
    shape = (w.num_layers, num_blocks, block_size, w.num_kv_heads, w.head_dim)
    return np.zeros(shape, np.float32), np.zeros(shape, np.float32)


# ---- the compiled code ------------------------------------------------------------------
def _rms_rows(src, weight, eps, dst):  # pragma: no cover - compiled
    """dst[r] = src[r] / rms(src[r]) * weight, every row."""
    n = src.shape[1]
    for r in prange(src.shape[0]):
        ss = np.float32(0.0)
        for j in range(n):
            ss += src[r, j] * src[r, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(n) + np.float32(eps))
        for j in range(n):
            dst[r, j] = src[r, j] * inv * weight[j]


def _wval(row, k):
    """Element ``k`` of a weight row as float32 (a bfloat16 pattern widened: its bits are the
    float32's upper half). Compiled per weight dtype (below), so the loops stay vector code."""
    if row.dtype == np.uint16:
        return np.array([np.uint32(row[k]) << 16], np.uint32).view(np.float32)[0]
    return row[k]


def _dot8(xr, w, n, kdim, out_row, bias, has_bias, accumulate):  # pragma: no cover - compiled
    """out_row[n .. n + 7] (+)= xr . w[n .. n + 7] (+ bias): eight weight rows streamed side by
    side, each load of ``xr`` shared by eight products."""
    w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
    w4, w5, w6, w7 = w[n + 4], w[n + 5], w[n + 6], w[n + 7]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    for k in range(kdim):
        xv = xr[k]
        a0 += xv * _wval(w0, k)
        a1 += xv * _wval(w1, k)
        a2 += xv * _wval(w2, k)
        a3 += xv * _wval(w3, k)
        a4 += xv * _wval(w4, k)
        a5 += xv * _wval(w5, k)
        a6 += xv * _wval(w6, k)
        a7 += xv * _wval(w7, k)
    acc = (a0, a1, a2, a3, a4, a5, a6, a7)
    for i in range(8):
        b = bias[n + i] if has_bias else np.float32(0.0)
        if accumulate:
            out_row[n + i] += acc[i] + b
        else:
            out_row[n + i] = acc[i] + b


def _tile4x4(x, w, r, n, kdim, out, bias, has_bias, accumulate):  # pragma: no cover
    """out[r .. r + 3, n .. n + 3] (+)= x[r .. r + 3] . w[n .. n + 3] (+ bias): four rows
    against four weight rows, sixteen sums in registers, so each load of a weight or of a
    row feeds four products (one weight row against four rows fed one each)."""
    x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
    w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    for k in range(kdim):
        v0, v1, v2, v3 = _wval(w0, k), _wval(w1, k), _wval(w2, k), _wval(w3, k)
        e0, e1, e2, e3 = x0[k], x1[k], x2[k], x3[k]
        a00 += e0 * v0
        a01 += e0 * v1
        a02 += e0 * v2
        a03 += e0 * v3
        a10 += e1 * v0
        a11 += e1 * v1
        a12 += e1 * v2
        a13 += e1 * v3
        a20 += e2 * v0
        a21 += e2 * v1
        a22 += e2 * v2
        a23 += e2 * v3
        a30 += e3 * v0
        a31 += e3 * v1
        a32 += e3 * v2
        a33 += e3 * v3
    acc = ((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23),
           (a30, a31, a32, a33))  # fmt: skip
    for i in range(4):
        for j in range(4):
            b = bias[n + j] if has_bias else np.float32(0.0)
            if accumulate:
                out[r + i, n + j] += acc[i][j] + b
            else:
                out[r + i, n + j] = acc[i][j] + b


def _linear(x, w, bias, out, accumulate):  # pragma: no cover - compiled
    """out = x @ w.T (+ bias), or out += x @ w.T (+ bias) with ``accumulate`` (a residual
    add). ``w``: [N, K] as the model stores it. The output columns go in blocks of eight, split
    into one contiguous run of blocks per thread (each thread streams its own part of the
    weights, in order). In a block, rows go four at a time (four dot products share each
    weight load), and the last rows one at a time over eight weight rows at once (one dot
    product per weight row streams slower: docs/perf.md). A weight streams from memory once
    per call whatever the number of rows."""
    rows, kdim = x.shape
    ncols = w.shape[0]
    has_bias = bias.shape[0] > 0
    for c in prange((ncols + 7) // 8):
        n0, n1 = c * 8, min(ncols, c * 8 + 8)
        r = 0
        while r + 4 <= rows and n1 - n0 == 8:
            for n in range(n0, n1, 4):
                _tile4x4_c(x, w, r, n, kdim, out, bias, has_bias, accumulate)
            r += 4
        while r + 4 <= rows:
            x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
            for n in range(n0, n1):
                wn = w[n]
                b = bias[n] if has_bias else np.float32(0.0)
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for k in range(kdim):
                    wv = _wval(wn, k)
                    a0 += x0[k] * wv
                    a1 += x1[k] * wv
                    a2 += x2[k] * wv
                    a3 += x3[k] * wv
                if accumulate:
                    out[r, n] += a0 + b
                    out[r + 1, n] += a1 + b
                    out[r + 2, n] += a2 + b
                    out[r + 3, n] += a3 + b
                else:
                    out[r, n] = a0 + b
                    out[r + 1, n] = a1 + b
                    out[r + 2, n] = a2 + b
                    out[r + 3, n] = a3 + b
            r += 4
        while r < rows:
            xr = x[r]
            if n1 - n0 == 8:
                _dot8_c(xr, w, n0, kdim, out[r], bias, has_bias, accumulate)
            else:
                for n in range(n0, n1):
                    wn = w[n]
                    acc = np.float32(0.0)
                    for k in range(kdim):
                        acc += xr[k] * _wval(wn, k)
                    b = bias[n] if has_bias else np.float32(0.0)
                    if accumulate:
                        out[r, n] += acc + b
                    else:
                        out[r, n] = acc + b
            r += 1


def _head_norm(v, weight, eps):  # pragma: no cover - compiled
    """In-place RMSNorm of one head's vector (Qwen3's q/k norm)."""
    d = v.shape[0]
    ss = np.float32(0.0)
    for j in range(d):
        ss += v[j] * v[j]
    inv = np.float32(1.0) / np.sqrt(ss / np.float32(d) + np.float32(eps))
    for j in range(d):
        v[j] = v[j] * inv * weight[j]


def _rotate(src, cos_row, sin_row, dst):  # pragma: no cover - compiled
    half = cos_row.shape[0]
    for j in range(half):
        x1, x2 = src[j], src[half + j]
        dst[j] = x1 * cos_row[j] - x2 * sin_row[j]
        dst[half + j] = x2 * cos_row[j] + x1 * sin_row[j]


def _rope_row(
    r, qkv_out, pos, slots, cos, sin, qn, kn, eps, num_heads, q, kc, vc
):  # pragma: no cover - compiled
    """Row ``r``: q rotated into ``q``; k rotated and v copied into the row's cache slot
    (after the optional per-head q/k norm)."""
    bs, hkv, d = kc.shape[1], kc.shape[2], kc.shape[3]
    nq = num_heads * d
    p = pos[r]
    blk, off = slots[r] // bs, slots[r] % bs
    for hh in range(num_heads):
        src = qkv_out[r, hh * d : (hh + 1) * d]
        if qn.shape[0]:
            _head_norm_c(src, qn, eps)
        _rotate_c(src, cos[p], sin[p], q[r, hh * d : (hh + 1) * d])
    for hh in range(hkv):
        src = qkv_out[r, nq + hh * d : nq + (hh + 1) * d]
        if kn.shape[0]:
            _head_norm_c(src, kn, eps)
        _rotate_c(src, cos[p], sin[p], kc[blk, off, hh])
        vsrc = qkv_out[r, nq + (hkv + hh) * d : nq + (hkv + hh + 1) * d]
        for j in range(d):
            vc[blk, off, hh, j] = vsrc[j]


def _attend_head(qh, key_slot, nk, kc, vc, kh, scale, oh):  # pragma: no cover - compiled
    """One head of one row: softmax(q . K / sqrt(d)) V over the cache slots ``key_slot[:nk]``."""
    bs, d = kc.shape[1], kc.shape[3]
    sc = np.empty(nk, np.float32)
    m = np.float32(-3.4028235e38)  # finite: fastmath assumes no infinities
    for j in range(nk):
        s = key_slot[j]
        kv = kc[s // bs, s % bs, kh]
        acc = np.float32(0.0)
        for e in range(d):
            acc += qh[e] * kv[e]
        acc *= scale
        sc[j] = acc
        m = max(m, acc)
    tot = np.float32(0.0)
    for j in range(nk):
        sc[j] = np.exp(sc[j] - m)
        tot += sc[j]
    for e in range(d):
        oh[e] = np.float32(0.0)
    for j in range(nk):
        s = key_slot[j]
        vv = vc[s // bs, s % bs, kh]
        p_j = sc[j] / tot
        for e in range(d):
            oh[e] += p_j * vv[e]


def _silu_row(gu, r, act):  # pragma: no cover - compiled
    inter = act.shape[1]
    for j in range(inter):
        g = gu[r, j]
        act[r, j] = g / (np.float32(1.0) + np.exp(-g)) * gu[r, inter + j]


# The linear layer a pass calls: each compilation of ``_forward`` binds its own (serial or
# parallel) as this global; the plain Python function (numba off) calls the Python one.
_LINEAR = _linear


def _forward(
    rows,
    weights,
    k_cache,
    v_cache,
    num_heads,
    eps,
    logits,
    argmax,
):  # pragma: no cover - compiled
    """The pass (see the module docstring); ``rows``, ``weights``: the arrays of
    :func:`_row_tuple` and :func:`_weight_tuple`. Parallel regions (in the ``parallel``
    compilation): each linear layer's output columns, attention's (row, head) pairs, and
    RoPE and SiLU over rows only when there are several (one row runs them inline: a region
    costs a fork and join of the thread pool)."""
    ids, pos, slots, table_of, tables, ctx_len, extra_off, extra_slots, out_rows = rows
    (
        embed,
        lm_head,
        final_norm,
        input_norm,
        post_norm,
        qkv,
        qkv_bias,
        o,
        o_bias,
        gate_up,
        down,
        q_norm,
        k_norm,
        cos,
        sin,
    ) = weights
    num_rows = ids.shape[0]
    hidden = embed.shape[1]
    num_layers = input_norm.shape[0]
    bs, hkv, d = k_cache.shape[2], k_cache.shape[3], k_cache.shape[4]
    group = num_heads // hkv
    nq = num_heads * d
    inter = down.shape[2]
    scale = np.float32(1.0 / math.sqrt(d))
    h = np.empty((num_rows, hidden), np.float32)
    x = np.empty((num_rows, hidden), np.float32)
    qkv_out = np.empty((num_rows, qkv.shape[1]), np.float32)
    q = np.empty((num_rows, nq), np.float32)
    attn = np.empty((num_rows, nq), np.float32)
    gu = np.empty((num_rows, 2 * inter), np.float32)
    act = np.empty((num_rows, inter), np.float32)
    # Each row's keys (its table's visible positions, then its extra slots) as cache slots,
    # the same in every layer.
    nks = np.empty(num_rows, np.int64)
    for r in range(num_rows):
        nks[r] = ctx_len[r] + extra_off[r + 1] - extra_off[r]
    key_slots = np.empty((num_rows, max(1, nks.max())), np.int64)
    for r in range(num_rows):
        n_ctx, e0 = ctx_len[r], extra_off[r]
        table = tables[table_of[r]]
        for j in range(n_ctx):
            key_slots[r, j] = table[j // bs] * bs + j % bs
        for j in range(e0, extra_off[r + 1]):
            key_slots[r, n_ctx + j - e0] = extra_slots[j]
    for r in range(num_rows):
        h[r] = embed[ids[r]]
    for layer in range(num_layers):
        kc, vc = k_cache[layer], v_cache[layer]
        _rms_rows_c(h, input_norm[layer], eps, x)
        _LINEAR(x, qkv[layer], qkv_bias[layer], qkv_out, False)
        qn, kn = q_norm[layer], k_norm[layer]
        if num_rows > 1:
            for r in prange(num_rows):
                _rope_row_c(r, qkv_out, pos, slots, cos, sin, qn, kn, eps, num_heads, q, kc, vc)
        else:
            _rope_row_c(0, qkv_out, pos, slots, cos, sin, qn, kn, eps, num_heads, q, kc, vc)
        for i in prange(num_rows * num_heads):  # every row's K/V is in the cache by now
            r, hh = i // num_heads, i % num_heads
            _attend_head_c(
                q[r, hh * d : (hh + 1) * d], key_slots[r], nks[r], kc, vc, hh // group, scale,
                attn[r, hh * d : (hh + 1) * d],
            )  # fmt: skip
        _LINEAR(attn, o[layer], o_bias[layer], h, True)
        _rms_rows_c(h, post_norm[layer], eps, x)
        _LINEAR(x, gate_up[layer], qkv_bias[layer, :0], gu, False)
        if num_rows > 1:
            for r in prange(num_rows):
                _silu_row_c(gu, r, act)
        else:
            _silu_row_c(gu, 0, act)
        _LINEAR(act, down[layer], qkv_bias[layer, :0], h, True)
    sel = out_rows.shape[0]
    hs = np.empty((sel, hidden), np.float32)
    for i in range(sel):
        hs[i] = h[out_rows[i]]
    xs = np.empty((sel, hidden), np.float32)
    _rms_rows_c(hs, final_norm, eps, xs)
    _LINEAR(xs, lm_head, final_norm[:0], logits, False)
    for i in range(sel):
        best, idx = logits[i, 0], 0
        for v in range(1, logits.shape[1]):
            if logits[i, v] > best:
                best, idx = logits[i, v], v
        argmax[i] = idx


def _greedy_chains(
    rows,
    steps,
    weights,
    k_cache,
    v_cache,
    num_heads,
    eps,
    tokens,
):  # pragma: no cover - compiled
    """``steps[i]`` greedy tokens after output row ``i``'s request: the first from the rows'
    pass, each next one from a one-row pass of the token before (at the next position, slot
    from the request's table; the slots must be allocated). ``tokens``: [S, max(steps)]."""
    pos, table_of, tables, extra_slots, out_rows = rows[1], rows[3], rows[4], rows[7], rows[8]
    sel = out_rows.shape[0]
    bs = k_cache.shape[2]
    vocab = weights[0].shape[0]
    logits = np.empty((sel, vocab), np.float32)
    argmax = np.empty(sel, np.int64)
    _serial_c(rows, weights, k_cache, v_cache, num_heads, eps, logits, argmax)
    last = np.empty(sel, np.int64)
    for i in range(sel):
        tokens[i, 0] = argmax[i]
        last[i] = argmax[i]
    for lv in range(1, tokens.shape[1]):
        live = np.array([i for i in range(sel) if steps[i] > lv], np.int64)
        n = live.shape[0]
        if n == 0:
            break
        r_ids = np.empty(n, np.int64)
        r_pos = np.empty(n, np.int64)
        r_slots = np.empty(n, np.int64)
        r_table = np.empty(n, np.int64)
        for j in range(n):
            i = live[j]
            row = out_rows[i]
            r_ids[j] = last[i]
            r_pos[j] = pos[row] + lv
            r_table[j] = table_of[row]
            p = r_pos[j]
            r_slots[j] = tables[r_table[j], p // bs] * bs + p % bs
        r_logits = np.empty((n, vocab), np.float32)
        r_argmax = np.empty(n, np.int64)
        one = (r_ids, r_pos, r_slots, r_table, tables, r_pos + 1, np.zeros(n + 1, np.int64))
        one_rows = (*one, extra_slots[:0], np.arange(n))
        _serial_c(one_rows, weights, k_cache, v_cache, num_heads, eps, r_logits, r_argmax)
        for j in range(n):
            tokens[live[j], lv] = r_argmax[j]
            last[live[j]] = r_argmax[j]


if njit is not None:

    @intrinsic
    def _bf16_to_f32(typingctx, bits):  # pragma: no cover - compiled
        """float32 whose upper 16 bits are ``bits`` (uint16) and lower 16 bits zero."""

        def codegen(context, builder, signature, args):
            wide = builder.zext(args[0], ir.IntType(32))
            wide = builder.shl(wide, ir.Constant(ir.IntType(32), 16))
            return builder.bitcast(wide, ir.FloatType())

        return types.float32(types.uint16), codegen

    @overload(_wval)
    def _wval_impl(row, k):  # pragma: no cover - compiled
        if row.dtype == types.uint16:
            return lambda row, k: _bf16_to_f32(row[k])
        return lambda row, k: row[k]

    # numpy's error model: a NaN row gives NaN logits for that row, not a ZeroDivisionError
    # that would fail the whole proposal
    _opts = {"fastmath": True, "cache": True, "nogil": True, "error_model": "numpy"}

    def _bound(fn, suffix="", **callees):
        """``fn`` with ``callees`` bound as its globals, under its name plus ``suffix``. The
        parallel compilations take the suffix ``_par``: numba files a cached compilation under
        the function's name and keys it on the argument types, not on ``parallel``, so
        compiled from one function the serial and parallel dispatchers would load each other's
        code from the cache in a later process. (The compilations differ in the linear layer
        they call: a global of each, not an argument, since a compiled function passed as an
        argument is a type of its own in every process, and numba's cache would never hit.)"""
        scope = {**fn.__globals__, **callees}
        copy = FunctionType(fn.__code__, scope, fn.__name__ + suffix, fn.__defaults__)
        copy.__qualname__ = fn.__qualname__ + suffix
        return copy

    # The helpers compile once each (a serial prange is a range); the two entry points differ
    # only in whether their own prange loops and the linear layers' jobs run in parallel.
    _rms_rows_c = njit(**_opts)(_rms_rows)
    _head_norm_c = njit(**_opts)(_head_norm)
    _rotate_c = njit(**_opts)(_rotate)
    _dot8_c = njit(**_opts)(_dot8)
    _tile4x4_c = njit(**_opts)(_tile4x4)
    _rope_row_c = njit(**_opts)(_rope_row)
    _attend_head_c = njit(**_opts)(_attend_head)
    _silu_row_c = njit(**_opts)(_silu_row)
    _linear_c = njit(**_opts)(_linear)
    _linear_c_par = njit(parallel=True, **_opts)(_bound(_linear, "_par"))
    _serial = _serial_c = njit(**_opts)(_bound(_forward, _LINEAR=_linear_c))
    _parallel = njit(parallel=True, **_opts)(_bound(_forward, "_par", _LINEAR=_linear_c_par))
    _greedy_chains_c = njit(**_opts)(_greedy_chains)


def _weight_tuple(w: PackedWeights) -> tuple:
    """The arrays the compiled pass reads, in its order."""
    return (
        w.embed, w.lm_head, w.final_norm, w.input_norm, w.post_norm, w.qkv, w.qkv_bias, w.o,
        w.o_bias, w.gate_up, w.down, w.q_norm, w.k_norm, w.cos, w.sin,
    )  # fmt: skip


@dataclass
class Rows:
    """One pass's rows (see the module docstring), as the int64 arrays the kernel reads."""

    ids: np.ndarray  # [R] token ids
    pos: np.ndarray  # [R] positions (RoPE)
    slots: np.ndarray  # [R] cache slot each row's K/V is written to
    table_of: np.ndarray  # [R] the row's block table: an index into ``tables``
    tables: np.ndarray  # [T, max_blocks] block ids
    ctx_len: np.ndarray  # [R] the row sees its table's positions 0 .. ctx_len - 1
    extra_off: np.ndarray  # [R + 1] the row's extra key slots: extra_slots[off[r]:off[r + 1]]
    extra_slots: np.ndarray  # [E]
    out_rows: np.ndarray  # [S] rows whose logits are returned, in this order


def _row_tuple(r: Rows) -> tuple:
    return (
        r.ids, r.pos, r.slots, r.table_of, r.tables, r.ctx_len, r.extra_off, r.extra_slots,
        r.out_rows,
    )  # fmt: skip


def forward(
    w: PackedWeights,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    rows: Rows,
    parallel: bool = False,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [S, V] of ``rows.out_rows`` and their argmax [S] (ties: the first index); every
    row's K/V lands in its slot of the caches. The kernel checks no index: callers build
    ``rows`` from their own block tables (positions below ``cos.shape[0]``, slots inside the
    cache). ``parallel`` runs on ``threads`` (torch's intra-op count when None): the linear
    layers split their output columns across them whatever the number of rows, so one row
    streams its weights on every thread."""
    sel = rows.out_rows.shape[0]
    logits = np.empty((sel, w.vocab_size), np.float32)
    argmax = np.empty(sel, np.int64)
    if parallel:
        use_cpu_threads(threads)
    fn = _parallel if parallel else _serial
    fn(_row_tuple(rows), _weight_tuple(w), k_cache, v_cache, w.num_heads, w.eps, logits, argmax)
    return logits, argmax


def greedy_chains(
    w: PackedWeights, k_cache: np.ndarray, v_cache: np.ndarray, rows: Rows, steps: np.ndarray
) -> np.ndarray:
    """Greedy proposals in one call: ``steps[i]`` (>= 1) tokens for output row ``i``'s request,
    the first from ``rows``' pass, each next one a single-thread pass over the token before,
    as :func:`forward` would give them one pass at a time. Output row ``i`` must be a causal
    row (its table sees it) whose table already holds the slots of the next ``steps[i] - 1``
    positions. Returns [S, max(steps)] token ids (entries past a row's steps are unset)."""
    sel = rows.out_rows.shape[0]
    tokens = np.zeros((sel, int(steps.max(initial=1))), np.int64)
    _greedy_chains_c(
        _row_tuple(rows), steps, _weight_tuple(w), k_cache, v_cache, w.num_heads, w.eps,
        tokens,
    )  # fmt: skip
    return tokens

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

Linear layers are packed once into panels: P output columns (two vectors of the host's
width, ``kernels.cpu.isa``) by every input, K-major, so a panel streams contiguously. A
register tile (``gemm.make_tile``, written as LLVM vector IR) broadcasts each token row's
x[r, k] against the panel's two weight vectors at k and accumulates in registers, up to
``panel_rows`` rows a pass over the panel, with no horizontal sums (the model's [out, in]
rows, read as dot products, needed one per output). A weight streams from memory once per
call whatever the number of rows, and a verify step's few extra rows cost FMAs on data
already in L1, not another read. Weights that are all bfloat16 values (a bfloat16 checkpoint,
as the bundled models') are kept as their 16-bit patterns and widened to float32 as they are
loaded: exactly the same values and float32 arithmetic, half the bytes streamed per pass (at
batch 1 a pass is bound by reading its weights). Other weights stay float32. In a bfloat16
engine on a host with AMX (``pack(amx_tiles=True)``, ``kernels.cpu.amx``) the panels are laid
out as AMX's B tiles instead: AMX tiles take a linear layer from ``AMX_MIN_ROWS`` rows, an
FMA tile reading the same layout below, and either way the layer's input is first rounded to
bfloat16, as that engine's eager forward rounds it. Softmax and SiLU
use the vectorizable exp of ``kernels.cpu.exp`` (numba's ``np.exp`` is a libm call per
element), and a layer's caches are read as [slots, Hkv, D], so a key costs no division.

Supported: grouped-query attention, an optional qkv bias (Qwen2), an optional per-head q/k
RMSNorm before RoPE (Qwen3), tied or separate lm_head, and RoPE read from the model's own
cos/sin tables (so scaled RoPE stays the model's).

Two compilations of the same code exist: ``serial`` (one thread) and ``parallel`` (numba
``prange`` over each linear layer's output columns, attention's (request, K/V head) items,
and rows); :func:`forward` takes either. The draft runs the serial one, the engine's step the
parallel one (docs/perf.md, "Fused draft forward and trees", says why).
numba is optional: without it :func:`available` is False and callers keep their torch path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import FunctionType

import numpy as np

from xyserve.kernels.cpu import memory, use_cpu_threads
from xyserve.kernels.cpu.isa import vector_width

try:
    from numba import njit, prange

    from xyserve.kernels.cpu import act, amx, argmax, bf16, exp, gemm
    from xyserve.kernels.cpu.act import silu_mul_row
    from xyserve.kernels.cpu.argmax import first_argmax
    from xyserve.kernels.cpu.cache import depends_on
    from xyserve.kernels.cpu.exp import softmax_
    from xyserve.kernels.cpu.gemm import make_prefetch, make_tile

    # the helpers this module's kernels inline from others (numba's cache keys on them too)
    DEPENDS = (act, amx, argmax, bf16, exp, gemm)
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None


def available() -> bool:
    return njit is not None


@dataclass
class PackedWeights:
    """A model's weights as contiguous numpy arrays.

    The linear layers (``qkv``, ``o``, ``gate_up``, ``down``, ``lm_head``) are panels [ceil(out
    / P), in, P] of float32, or of uint16 bfloat16 patterns when every one of their values is a
    bfloat16 value (each row of P interleaved, as :func:`_panels` lays it out); the rest is
    float32. Layer arrays are stacked along a first axis of length
    ``num_layers``. Absent biases and q/k norms are zero-sized along their last axis.
    """

    embed: np.ndarray  # [V, H]
    lm_head: np.ndarray  # [ceil(V / P), H, P] (float32 or bfloat16 bits, as every linear layer)
    final_norm: np.ndarray  # [H]
    input_norm: np.ndarray  # [L, H]
    post_norm: np.ndarray  # [L, H]
    qkv: np.ndarray  # [L, ceil((Hq + 2 Hkv) D / P), H, P]
    qkv_bias: np.ndarray  # [L, (Hq + 2 Hkv) D] or [L, 0]
    o: np.ndarray  # [L, ceil(H / P), Hq D, P]
    o_bias: np.ndarray  # [L, H] or [L, 0]
    gate_up: np.ndarray  # [L, ceil(2 I / P), H, P]
    down: np.ndarray  # [L, ceil(H / P), I, P]
    q_norm: np.ndarray  # [L, D] or [L, 0]
    k_norm: np.ndarray  # [L, D] or [L, 0]
    cos: np.ndarray  # [max_positions, D / 2]
    sin: np.ndarray  # [max_positions, D / 2]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    # the lm_head's rows: the logits' width (the vocabulary, or the first rows of it that a
    # draft with a token map scores, ``spec.draft_forward``)
    head_rows: int
    # the linear layers are AMX panels (``kernels.cpu.amx``), read by AMX tiles from
    # ``AMX_MIN_ROWS`` rows and by the FMA tile below, their inputs rounded to bfloat16
    amx: bool = False

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


def _panels(a: np.ndarray, p: int) -> np.ndarray:
    """[..., N, K] weight rows as [..., ceil(N / p), K, p] panels (K-major; columns past N
    zero). bfloat16 bits (uint16) go interleaved, as the panel tile reads them
    (``gemm.make_tile(paired=True)``): within a row of k, column j of the panel's first half
    and column j of its second half side by side (positions 2j and 2j + 1)."""
    *lead, n, k = a.shape
    count = -(-n // p)
    padded = np.zeros((*lead, count * p, k), a.dtype)
    padded[..., :n, :] = a
    panels = padded.reshape(*lead, count, p, k).swapaxes(-1, -2)
    if a.dtype == np.uint16:
        halves = panels.reshape(*lead, count, k, 2, p // 2)
        panels = halves.swapaxes(-1, -2).reshape(*lead, count, k, p)
    out = memory.empty((*lead, count, k, p), a.dtype)
    out[...] = panels
    return out


def _amx_panels(bits: np.ndarray) -> np.ndarray:
    """:func:`kernels.cpu.amx.panels`, in memory that streams well (as :func:`_panels`). Only
    where AMX runs (``amx.available()``, which also asks Linux for the tile state: a tile
    instruction before that is an illegal instruction)."""
    if not amx.available():
        raise RuntimeError("AMX panels on a host or process without AMX")
    panels = amx.panels(bits)
    out = memory.empty(panels.shape, np.uint16)
    out[...] = panels
    return out


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
    width: int | None = None,
    amx_tiles: bool = False,
) -> PackedWeights:
    """Copy a model's weights once into :class:`PackedWeights`.

    ``layers``: one dict per layer with ``input_norm``, ``post_norm``, ``qkv`` ([(Hq + 2 Hkv) D,
    H], q rows then k then v), ``qkv_bias``, ``o`` ([H, Hq D]), ``o_bias``, ``gate_up``
    ([2 I, H], gate rows then up), ``down`` ([H, I]), ``q_norm``, ``k_norm`` (None where the
    model has none). ``cos``/``sin``: the model's [max_positions, D] or [.., D / 2] tables
    (non-interleaved halves, as HF: both halves equal, the first is kept). ``compact``: keep
    the linear layers as bfloat16 bits where that loses nothing. ``width``: the vector width
    of the tile that will read them (the host's when None), whose two vectors make a panel
    (one of ``TILE_WIDTHS``, else a ValueError). ``lm_head`` may have fewer rows than
    ``embed`` (a draft's token map): the logits are then its rows' scores, and outside
    :func:`forward` the row count must be a multiple of the panel width (the compiled callers
    read it from the panels). ``amx_tiles``: lay the linear layers out for
    AMX (``kernels.cpu.amx``) where that can be done: the host has AMX, the layers are
    bfloat16 bits, every input width is a multiple of 32 and the width is 16. The pass then
    rounds every linear layer's input to bfloat16 (as a bfloat16 model's eager forward
    does), so this is for bfloat16 engines only; :attr:`PackedWeights.amx` says whether it
    was done.
    """
    width = vector_width() if width is None else width
    if width not in TILE_WIDTHS:
        raise ValueError(f"width {width}: the panel tiles are compiled for widths {TILE_WIDTHS}")
    half = head_dim // 2
    cos_a, sin_a = _f32(cos), _f32(sin)
    linears = {
        "lm_head": _f32(lm_head),
        **{k: _stack([lay[k] for lay in layers]) for k in ("qkv", "o", "gate_up", "down")},
    }
    if compact and _bf16_exact(list(linears.values())):
        linears = {k: _bf16_bits(a) for k, a in linears.items()}
    p = 2 * width
    use_amx = (
        amx_tiles
        and width == 16
        and all(a.dtype == np.uint16 and a.shape[-1] % amx.KBLOCK == 0 for a in linears.values())
        and amx.available()
    )
    linears = {k: _amx_panels(a) if use_amx else _panels(a, p) for k, a in linears.items()}
    packed = PackedWeights(
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
        amx=use_amx,
        head_rows=int(lm_head.shape[0]),
    )
    # every array moves to memory that streams well (``kernels.cpu.memory``: 2 MiB huge pages
    # for the large ones, 64-byte aligned all)
    placed = {id(a) for a in linears.values()}  # ``_panels`` wrote these there already
    for f in fields(packed):
        a = getattr(packed, f.name)
        if isinstance(a, np.ndarray) and id(a) not in placed:
            setattr(packed, f.name, memory.copy(a))
    return packed


def new_cache(
    w: PackedWeights, num_blocks: int, block_size: int, dtype: type = np.float32
) -> tuple[np.ndarray, ...]:
    """Zeroed K and V caches: [L, num_blocks, block_size, Hkv, D] each (``kernels.cpu.memory``),
    of float32, or (``dtype=np.uint16``) of bfloat16 bits."""
    shape = (w.num_layers, num_blocks, block_size, w.num_kv_heads, w.head_dim)
    return memory.zeros(shape, dtype), memory.zeros(shape, dtype)


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


def _linear(x, w, bias, out, accumulate, threads):  # pragma: no cover - compiled
    """out = x @ w.T (+ bias), or out += x @ w.T (+ bias) with ``accumulate`` (a residual
    add), for the first ``out.shape[0]`` rows of ``x``; ``w``: [ceil(N / P), K, P] panels
    (:func:`_panel_job`). The panels go in one contiguous run per thread, so each thread
    streams its own part of the weights, in order, once per call whatever the number of rows.
    (The thread count comes in as an argument: numba's ``get_thread_id`` reads a pointer that
    its cache cannot keep.)"""
    jobs = w.shape[0]
    chunks = max(1, min(threads, jobs))
    for t in prange(chunks):
        scratch = np.empty(out.shape[0] * w.shape[2], np.float32)  # the panel tiles' sums
        for c in range(jobs * t // chunks, jobs * (t + 1) // chunks):
            _panel_job_c(x, w, bias, out, accumulate, c, scratch)


# From how many rows a linear layer over AMX panels runs on AMX tiles; below, the FMA tile
# reads the same panels (docs/perf.md, "AMX for the fused call's linear layers", has the row
# counts measured).
AMX_MIN_ROWS = 6


def _linear_amx(x, w, bias, out, accumulate, threads):  # pragma: no cover - compiled
    """:func:`_linear` over AMX panels (``PackedWeights.amx``), the input rounded to bfloat16:
    AMX tiles from ``AMX_MIN_ROWS`` rows (``_AMX``, ``kernels.cpu.amx.linear``), the FMA tile
    over the same panels below (``_KP``, on a rounded copy of the rows)."""
    rows = out.shape[0]
    if rows >= AMX_MIN_ROWS:
        _AMX(x, w, bias, out, accumulate, threads)
        return
    kdim = x.shape[1]  # a multiple of 32 (``pack``), contiguous rows
    rounded = np.empty((rows, kdim), np.float32)
    for r in range(rows):
        amx.round_row(x, r * kdim, rounded, r * kdim, kdim)
    _KP(rounded, w, bias, out, accumulate, threads)


# What :func:`_linear_amx` calls: each compilation binds its own (serial or parallel AMX
# linear, and :func:`_linear` over the FMA tiles that read AMX panels); unbound, the plain
# functions (which cannot read AMX panels: numba off means no AMX either).
_AMX = _KP = _linear


# The vector widths the panel and value tiles are compiled for (``_panel_tile_source``): a
# panel of any other width would match no tile, so :func:`pack` refuses it.
TILE_WIDTHS = (16, 8, 4)


def panel_rows(width: int) -> int:
    """The most token rows a panel tile of vector width ``width`` takes: two accumulators per
    row, plus two weight vectors and a broadcast, within the ISA's registers (12 rows: 27 of
    AVX-512's 32 zmm; 6 rows: 15 of the 16 ymm or xmm below). At 16, 12 rather than 8 lets a
    verify chain of k = 8 to 11 (9 to 12 rows) go over each panel once (docs/perf.md, "Twelve
    rows a panel pass")."""
    return 12 if width == 16 else 6


# How far ahead of the row it reads a panel tile prefetches its weights, into L2, where one
# pass of rows goes over a panel: the hardware prefetcher alone left a weight stream's latency
# exposed (docs/perf.md, "Panels"). Several passes go over a panel chunk by chunk (below), and
# each pass prefetches its share of the next chunk (``_panel_job``).
PREFETCH_BYTES = 24576
# The most of a panel one chunk of k holds when several passes of rows read it (the chunk and
# the passes' rows stay in L1 between passes).
PANEL_CHUNK_BYTES = 24576
# How many keys ahead attention prefetches a key's K and V (into L2).
KEY_PREFETCH = 16
# Attention scores of an item (a request's rows x a K/V head's query heads) with at least
# SCORE_TILE_QUERIES queries go KEY_TILE keys at a time through a register tile, the queries in
# vector lanes and each key's elements broadcast: no horizontal sum per (query, key), where a
# dot product per pair needs one (docs/perf.md, "Scores of several queries in one tile").
SCORE_TILE_QUERIES = 4
KEY_TILE = 8
SCORE_TILE_WIDTHS = (16, 8)  # the portable width's items take the dot products


def _panel_job(x, w, bias, out, accumulate, c, scratch):  # pragma: no cover - compiled
    """Output columns P c .. P c + P - 1 from panel ``c`` of ``w`` ([K, P], K-major, P = two
    vectors): a register tile (``gemm.make_tile``) broadcasts each row's x[r, k] against the
    panel's two weight vectors at k, with no horizontal sums, for up to ``panel_rows`` rows
    per pass over the panel (the rows split as evenly as the passes allow). With several
    passes the panel goes in chunks of k of ``PANEL_CHUNK_BYTES``, every pass over a chunk
    before the next, so the chunk is read from L1, not L2, after the first pass; the tiles
    add each chunk's sums to ``scratch`` (>= rows x P floats), written out once at the end.
    While they read a chunk, the passes prefetch the next one into L2, each its share, one
    line per step of k, so the weight stream stays in flight through every pass's arithmetic
    (a whole chunk's prefetches issued by one pass would arrive as a burst that pass waits
    on, with nothing in flight during the others). Columns past N in the last panel are zero
    weights, not written."""
    rows, kdim = out.shape[0], x.shape[1]
    p = w.shape[2]
    vw = p // 2
    most = _panel_rows_c(vw)
    n0 = c * p
    cols = min(p, out.shape[1] - n0)
    passes = (rows + most - 1) // most
    chunk = kdim
    if passes > 1:  # a multiple of 4 (the tiles' k phases) that fits the budget
        chunk = max(4, PANEL_CHUNK_BYTES // (p * w.itemsize) // 4 * 4)
    scratch[: rows * p] = np.float32(0.0)
    # Lines of what follows this chunk in ``w`` (the next chunk, or the next panel's first)
    # that each pass prefetches: a share of it per pass, one line per step of k.
    per_line = 64 // w.itemsize
    share = ((chunk * p + per_line - 1) // per_line + passes - 1) // passes  # lines per pass
    for k0 in range(0, kdim, chunk):
        count = min(chunk, kdim - k0)
        at = (c * kdim + k0) * p
        if passes == 1:
            _panel_tile(vw, rows, x, k0, kdim, w, at, count, scratch)
            continue
        step = max(1, share * per_line // count)  # elements of w per step of k
        r = 0
        for i in range(passes):
            t = (rows - r + passes - i - 1) // (passes - i)
            pf = at + count * p + i * share * per_line
            _panel_tile_pf(vw, t, x, r * kdim + k0, kdim, w, at, count, scratch[r * p :], pf, step)
            r += t
    for a in range(rows):
        gemm.store_sums(out, a, n0, cols, scratch, a * p, bias, accumulate)


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
        _rotate_c(src, cos[p], sin[p], src)  # in place: each pair is read before it is written
        bf16.store(kc[blk, off, hh], src, d)
        bf16.store(vc[blk, off, hh], qkv_out[r, nq + (hkv + hh) * d :], d)


def _attend_rows(
    members, kh, group, q, key_slots, ctx_len, nks, kf, vf, scale, attn, sc, bits, bs, vw, acc, st
):  # pragma: no cover - compiled
    """K/V head ``kh`` and its ``group`` query heads of the rows ``members`` (rows through one
    block table, as a request's rows in a step): softmax(q . K / sqrt(d)) V into ``attn``. Row
    r sees its table's first ``ctx_len[r]`` positions, then its extra slots
    (``key_slots[r, ctx_len[r]:nks[r]]``). A table key's K is read once for all the rows that
    see it (a verify step's rows share their request's context) and all the query heads that
    share it (grouped-query attention). Where the item has ``SCORE_TILE_QUERIES`` queries or
    more (a verify step's rows times the group), whole ``KEY_TILE``s of the table's keys are
    scored in a register tile (``_score_tile``), the queries in vector lanes and each key's
    elements broadcast, so no query-key pair needs a horizontal sum; the keys after the last
    whole tile, and every key of a smaller item, go one at a time, a dot product per query.
    The values go a block of ``bs`` table positions at a
    time (their slots are consecutive) through a register tile of width ``vw``
    (``_value_tile``: the row's weights broadcast against the block's values, summed in
    registers; an output updated per key would be loaded and stored per key). ``kf``/``vf``:
    a layer's caches as [slots, Hkv, D] (a slot indexes them directly, with no division into
    block and offset per key). Scratch: ``sc`` ([len(members) x group, >= max nks] float32,
    C-contiguous; row a x group + g is row a's query head g), ``bits`` (int32, >= max nks),
    ``acc`` (float32, >= D; the value tiles add each block's sums to it), ``st`` (float32,
    >= (D + KEY_TILE) x vw: the score tile's queries and sums)."""
    d = kf.shape[2]
    n = members.shape[0]
    lead = members[0]  # the row that sees the most of the table (all see a prefix of it)
    for a in range(1, n):
        if ctx_len[members[a]] > ctx_len[lead]:
            lead = members[a]
    for a in range(n):
        r = members[a]
        for g in range(group):
            q0 = (kh * group + g) * d
            qa, sa = q[r, q0 : q0 + d], sc[a * group + g]
            for j in range(ctx_len[r], nks[r]):  # the row's own extra keys
                sa[j] = _dot(qa, kf[key_slots[r, j], kh], d) * scale
    # the K and V of the key KEY_PREFETCH on are prefetched into L2 (the V for the values'
    # pass after the softmax): a request's keys sit in its blocks, scattered over the cache,
    # and a step of many requests reads them from memory
    kflat = kf.reshape(kf.shape[0] * kf.shape[1] * d)
    flat = vf.reshape(vf.shape[0] * vf.shape[1] * d)
    ld = vf.shape[1] * d  # one slot to the next
    nctx = ctx_len[lead]
    ahead = min(nctx, KEY_PREFETCH)
    for j in range(ahead):
        _prefetch_key(kflat, flat, key_slots[lead, j] * ld + kh * d, d)
    # Keys [0, tiled): KEY_TILE at a time (consecutive slots of one block) against a vector
    # of queries at a time (``qt``: their elements, query-minor), written where the query's
    # row sees the key. The rest go one key at a time, each query a dot product.
    queries = n * group
    tiled = 0
    if queries >= SCORE_TILE_QUERIES and bs % KEY_TILE == 0 and vw in SCORE_TILE_WIDTHS:
        tiled = nctx // KEY_TILE * KEY_TILE
    if tiled > 0:
        qt, tile = st[: d * vw], st[d * vw :]
        for qc in range(0, queries, vw):
            qn = min(vw, queries - qc)
            for jq in range(vw):
                if jq < qn:
                    r, g = members[(qc + jq) // group], (qc + jq) % group
                    q0 = (kh * group + g) * d
                    for e in range(d):
                        qt[e * vw + jq] = q[r, q0 + e]
                else:  # lanes past the queries: computed, never stored
                    for e in range(d):
                        qt[e * vw + jq] = np.float32(0.0)
            for j0 in range(0, tiled, KEY_TILE):
                if qc == 0:
                    for j in range(j0 + ahead, min(j0 + ahead + KEY_TILE, nctx)):
                        _prefetch_key(kflat, flat, key_slots[lead, j] * ld + kh * d, d)
                at = key_slots[lead, j0] * ld + kh * d
                _score_tile(vw, kflat, at, ld, qt, vw, d, tile)
                for jq in range(qn):
                    see = ctx_len[members[(qc + jq) // group]]
                    for i in range(min(KEY_TILE, see - j0)):
                        sc[qc + jq, j0 + i] = tile[i * vw + jq] * scale
    for jj in range(tiled, nctx):
        if jj + ahead < nctx:
            _prefetch_key(kflat, flat, key_slots[lead, jj + ahead] * ld + kh * d, d)
        kv = kf[key_slots[lead, jj], kh]
        for a in range(n):
            r = members[a]
            if jj < ctx_len[r]:
                for g in range(group):
                    q0 = (kh * group + g) * d
                    sc[a * group + g, jj] = _dot(q[r, q0 : q0 + d], kv, d) * scale
    wide = 4 * vw
    for a in range(n):
        r = members[a]
        for g in range(group):
            i, q0 = a * group + g, (kh * group + g) * d
            softmax_(sc[i, : nks[r]], bits)
            oa, sa = attn[r, q0 : q0 + d], sc[i]
            acc[:d] = np.float32(0.0)
            for j0 in range(0, ctx_len[r], bs):
                count = min(bs, ctx_len[r] - j0)
                base = key_slots[r, j0] * ld + kh * d
                c0 = 0
                while c0 < d:
                    step = wide if c0 + wide <= d else (vw if c0 + vw <= d else 0)
                    if step == 0:  # a head size that is not a multiple of the vector width
                        for j in range(j0, j0 + count):
                            for e in range(c0, d):
                                acc[e] += sa[j] * bf16.at(flat, base + (j - j0) * ld + e)
                        break
                    p_off = i * sc.shape[1] + j0
                    _value_tile(vw, step // vw, sc, p_off, flat, base + c0, ld, count, acc[c0:])
                    c0 += step
            oa[:] = acc[:d]
            for j in range(ctx_len[r], nks[r]):
                _axpy(sa[j], vf[key_slots[r, j], kh], oa, d)


def _prefetch_key(kflat, flat, at, d):  # pragma: no cover - compiled
    """Prefetch a key's K and V (``d`` elements from ``at`` in each cache, flat) into L2."""
    for e in range(0, d, 64):  # four cache lines a call
        _prefetch_lines(kflat, at + e)
        _prefetch_lines(flat, at + e)


def _dot(x, y, n):  # pragma: no cover - compiled
    """x . y over n (``y`` a cache row: float32, or bfloat16 bits)."""
    acc = np.float32(0.0)
    for e in range(n):
        acc += x[e] * bf16.at(y, e)
    return acc


def _axpy(a, x, y, n):  # pragma: no cover - compiled
    """y += a x over n (``x`` a cache row: float32, or bfloat16 bits)."""
    for e in range(n):
        y[e] += a * bf16.at(x, e)


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
    threads=1,
):  # pragma: no cover - compiled
    """The pass (see the module docstring); ``rows``, ``weights``: the arrays of
    :func:`_row_tuple` and :func:`_weight_tuple`; ``threads``: how many runs the linear
    layers' jobs are split into (the thread count of the parallel compilation; 1 in the serial
    one). Parallel regions (in the ``parallel`` compilation): each linear layer's output
    columns, attention's (request, K/V head) items, and RoPE and SiLU over rows only when there are
    several (one row runs them inline: a region costs a fork and join of the thread pool).
    Scratch (scores, exps) is allocated once per pass, not per row and layer."""
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
    qkv_out = np.empty((num_rows, nq + 2 * hkv * d), np.float32)
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
    # rows grouped by block table (a request's rows): ``order[g_off[g]:g_off[g + 1]]``
    order = np.argsort(table_of, kind="mergesort")
    g_off = np.zeros(num_rows + 1, np.int64)
    groups = 0
    for i in range(num_rows):
        if i == 0 or table_of[order[i]] != table_of[order[i - 1]]:
            g_off[groups] = i
            groups += 1
    g_off[groups] = num_rows
    scores = np.empty((num_rows * num_heads, key_slots.shape[1]), np.float32)
    s_bits = np.empty((num_rows * num_heads, max(key_slots.shape[1], inter)), np.int32)
    vw = qkv.shape[-1] // 2  # the panels' vector width
    pv_acc = np.empty((num_rows * num_heads, d), np.float32)
    q_tiles = np.empty((groups * hkv, (d + KEY_TILE) * vw), np.float32)  # an item's score tile
    s_p = np.empty((num_rows, inter), np.float32)
    for r in range(num_rows):
        h[r] = embed[ids[r]]
    for layer in range(num_layers):
        kc, vc = k_cache[layer], v_cache[layer]
        _rms_rows_c(h, input_norm[layer], eps, x)
        _LINEAR(x, qkv[layer], qkv_bias[layer], qkv_out, False, threads)
        qn, kn = q_norm[layer], k_norm[layer]
        if num_rows > 1:
            for r in prange(num_rows):
                _rope_row_c(r, qkv_out, pos, slots, cos, sin, qn, kn, eps, num_heads, q, kc, vc)
        else:
            _rope_row_c(0, qkv_out, pos, slots, cos, sin, qn, kn, eps, num_heads, q, kc, vc)
        kf = kc.reshape(kc.shape[0] * bs, hkv, d)
        vf = vc.reshape(kc.shape[0] * bs, hkv, d)
        for i in prange(groups * hkv):  # every row's K/V is in the cache by now
            g, kh = i // hkv, i % hkv
            m0, m1 = g_off[g], g_off[g + 1]
            s0 = m0 * num_heads + kh * (m1 - m0) * group  # the item's rows of scores
            _attend_rows_c(
                order[m0:m1], kh, group, q, key_slots, ctx_len, nks, kf, vf, scale, attn,
                scores[s0 : s0 + (m1 - m0) * group], s_bits[m0 * num_heads + kh], bs, vw,
                pv_acc[m0 * num_heads + kh], q_tiles[i],
            )  # fmt: skip
        _LINEAR(attn, o[layer], o_bias[layer], h, True, threads)
        _rms_rows_c(h, post_norm[layer], eps, x)
        _LINEAR(x, gate_up[layer], qkv_bias[layer, :0], gu, False, threads)
        if num_rows > 1:
            for r in prange(num_rows):
                silu_mul_row(gu, r, act, s_p[r], s_bits[r])
        else:
            silu_mul_row(gu, 0, act, s_p[0], s_bits[0])
        _LINEAR(act, down[layer], qkv_bias[layer, :0], h, True, threads)
    sel = out_rows.shape[0]
    hs = np.empty((sel, hidden), np.float32)
    for i in range(sel):
        hs[i] = h[out_rows[i]]
    xs = np.empty((sel, hidden), np.float32)
    _rms_rows_c(hs, final_norm, eps, xs)
    _LINEAR(xs, lm_head, final_norm[:0], logits, False, threads)
    if sel > 1:
        for i in prange(sel):
            argmax[i] = first_argmax(logits[i])
    elif sel == 1:
        argmax[0] = first_argmax(logits[0])


def head_width(weights):  # pragma: no cover - compiled
    """The logits' width of FMA panels (``weights``: :func:`_weight_tuple`): the lm_head's
    rows, the vocabulary at most (its panels' last columns are padding)."""
    lm_head = weights[1]
    return min(weights[0].shape[0], lm_head.shape[0] * lm_head.shape[2])


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
    vocab = _head_width_c(weights)
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

    def _split(chains: int) -> int:
        """Phases of k for a tile of ``chains`` accumulators: at least 8 chains in all (two
        FMA ports, four cycles of latency)."""
        return max(1, -(-8 // chains))

    def _panel_tile_source() -> tuple[str, dict]:
        """``_panel_tile(vw, rows, x, x_off, ldx, w, w_off, count, acc)``: the tile of ``rows``
        token rows (``count`` of k, added to ``acc``) at vector width ``vw`` (every width, so the tests run each one the host can);
        ``_panel_tile_pf(..., pf_off, pf_step)``, the same prefetching where its caller says,
        and ``_value_tile(vw, vectors, ...)``, attention's one-row tile over ``vectors``
        vectors of a head's values, as if-chains over the compiled tiles. A tile of few rows
        splits k into phases (``_split``) where the count of k allows it."""
        tiles: dict = {}
        lines: list[str] = []

        def case(
            name, rows, vw, vectors, prefetch, call, count, stream=False, paired=False, kpair=False
        ):
            split = _split(rows * vectors)
            tiles[name] = make_tile(rows, vw, vectors, prefetch, 1, True, stream, paired, kpair)
            if split > 1:
                tiles[name + "_s"] = make_tile(
                    rows, vw, vectors, prefetch, split, True, stream, paired, kpair
                )
                lines.append(f"        if {count} % {split * (2 if kpair else 1)} == 0:")
                lines.append(f"            {name}_s({call})")
                lines.append("        else:")
                lines.append(f"            {name}({call})")
            else:
                lines.append(f"        {name}({call})")

        # the panel tiles: prefetching PREFETCH_BYTES ahead, or where the caller says
        for suffix, pf_args, stream in (("", "", False), ("_pf", ", pf_off, pf_step", True)):
            lines.append(
                f"def _panel_tile{suffix}(vw, rows, x, x_off, ldx, w, w_off, count, acc{pf_args}):"
            )
            for vw in TILE_WIDTHS:
                for r in range(1, panel_rows(vw) + 1):
                    first = lines[-1].startswith("def ")
                    lines.append(f"    {'if' if first else 'elif'} vw == {vw} and rows == {r}:")
                    call = f"x, x_off, ldx, w, w_off, {2 * vw}, count, acc{pf_args}"
                    ahead = 0 if stream else PREFETCH_BYTES
                    name = f"_tile_{vw}_{r}{suffix}"
                    case(name, r, vw, 2, ahead, call, "count", stream, paired=True)
        # the same over AMX panels (width 16 only: every AMX host has AVX-512)
        for suffix, pf_args, stream in (("", "", False), ("_pf", ", pf_off, pf_step", True)):
            lines.append(
                f"def _panel_tile_kp{suffix}(vw, rows, x, x_off, ldx, w, w_off, count, acc{pf_args}):"
            )
            for r in range(1, panel_rows(16) + 1):
                first = lines[-1].startswith("def ")
                lines.append(f"    {'if' if first else 'elif'} rows == {r}:")
                call = f"x, x_off, ldx, w, w_off, 32, count, acc{pf_args}"
                ahead = 0 if stream else PREFETCH_BYTES
                case(f"_tile_kp_{r}{suffix}", r, 16, 2, ahead, call, "count", stream, kpair=True)
        # attention's score tile: KEY_TILE keys (broadcast) x a vector of queries, written (not
        # added) to ``acc``: KEY_TILE FMA chains
        lines.append("def _score_tile(vw, k, k_off, ldk, qt, ldq, count, acc):")
        for vw in SCORE_TILE_WIDTHS:
            first = lines[-1].startswith("def ")
            lines.append(f"    {'if' if first else 'elif'} vw == {vw}:")
            tiles[f"_score_{vw}"] = make_tile(KEY_TILE, vw, 1)
            lines.append(f"        _score_{vw}(k, k_off, ldk, qt, 0, ldq, count, acc)")
        lines.append("def _value_tile(vw, vectors, p, p_off, v, v_off, ld, count, acc):")
        for vw in TILE_WIDTHS:
            for vec in (4, 1):
                first = lines[-1].startswith("def ")
                lines.append(f"    {'if' if first else 'elif'} vw == {vw} and vectors == {vec}:")
                call = "p, p_off, 0, v, v_off, ld, count, acc"
                case(f"_value_{vw}_{vec}", 1, vw, vec, 0, call, "count")
        return "\n".join(lines) + "\n", tiles

    _source, _scope = _panel_tile_source()
    exec(compile(_source, "<fused_forward._panel_tile>", "exec"), _scope)  # noqa: S102

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
    def _jit(fn, **flags):
        """``fn`` compiled with ``_opts`` (and ``flags``), cached against ``DEPENDS`` too (a
        cached kernel holds the code of what it calls and inlines)."""
        return depends_on(*DEPENDS)(njit(**_opts, **flags)(fn))

    _rms_rows_c = _jit(_rms_rows)
    _head_norm_c = _jit(_head_norm)
    _rotate_c = _jit(_rotate)
    _rope_row_c = _jit(_rope_row)
    _dot = njit(inline="always", fastmath=True)(_dot)
    _axpy = njit(inline="always", fastmath=True)(_axpy)
    _attend_rows_c = _jit(_attend_rows)
    _panel_tile = njit(inline="always")(_scope["_panel_tile"])
    _panel_tile_pf = njit(inline="always")(_scope["_panel_tile_pf"])
    _value_tile = njit(inline="always")(_scope["_value_tile"])
    _score_tile = njit(inline="always")(_scope["_score_tile"])
    _prefetch_lines = make_prefetch(4)
    _prefetch_key = njit(inline="always")(_prefetch_key)
    _panel_rows_c = njit(inline="always")(panel_rows)
    _panel_job_c = _jit(_panel_job)
    _linear_c = _jit(_linear)
    _linear_c_par = _jit(_bound(_linear, "_par"), parallel=True)
    _serial = _serial_c = _jit(_bound(_forward, _LINEAR=_linear_c))
    _parallel = _jit(_bound(_forward, "_par", _LINEAR=_linear_c_par), parallel=True)
    # over AMX panels (``PackedWeights.amx``): the FMA tiles that read them, AMX's linear, and
    # the passes that call them
    _kp_tiles = {
        "_panel_tile": njit(inline="always")(_scope["_panel_tile_kp"]),
        "_panel_tile_pf": njit(inline="always")(_scope["_panel_tile_kp_pf"]),
    }
    _panel_job_kp_c = _jit(_bound(_panel_job, "_kp", **_kp_tiles))
    _linear_kp_c = _jit(_bound(_linear, "_kp", _panel_job_c=_panel_job_kp_c))
    _linear_kp_par = _jit(_bound(_linear, "_kp_par", _panel_job_c=_panel_job_kp_c), parallel=True)
    _amx_linear_c = _jit(amx.linear)
    _amx_linear_par = _jit(_bound(amx.linear, "_par"), parallel=True)
    _linear_amx_c = _jit(_bound(_linear_amx, _AMX=_amx_linear_c, _KP=_linear_kp_c))
    _linear_amx_par = _jit(_bound(_linear_amx, "_par", _AMX=_amx_linear_par, _KP=_linear_kp_par))
    _serial_amx = _jit(_bound(_forward, "_amx", _LINEAR=_linear_amx_c))
    _parallel_amx = _jit(_bound(_forward, "_par_amx", _LINEAR=_linear_amx_par), parallel=True)
    _head_width_c = njit(inline="always")(head_width)
    _greedy_chains_c = _jit(_greedy_chains)


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
    cache). ``parallel`` runs the parallel compilation on ``threads`` (torch's intra-op count
    when None), one thread included: the linear layers split their output columns across them
    whatever the number of rows, so one row streams its weights on every thread. Every count
    runs that one compilation, so the count changes the speed, never the bits (the engine picks
    it call by call). Two compilations of the code need not agree to the bit: numba's LLVM
    optimizes each with the callees it links, and a callee loaded from numba's cache optimizes
    otherwise than one compiled in the process. Without ``parallel`` it runs the serial
    compilation (no fork and join of the thread pool per region: the draft's passes)."""
    sel = rows.out_rows.shape[0]
    logits = np.empty((sel, w.head_rows), np.float32)
    argmax = np.empty(sel, np.int64)
    if parallel:
        n = use_cpu_threads(threads)
        fn = _parallel_amx if w.amx else _parallel
    else:
        n = 1
        fn = _serial_amx if w.amx else _serial
    fn(_row_tuple(rows), _weight_tuple(w), k_cache, v_cache, w.num_heads, w.eps, logits, argmax, n)
    return logits, argmax


def greedy_chains(
    w: PackedWeights, k_cache: np.ndarray, v_cache: np.ndarray, rows: Rows, steps: np.ndarray
) -> np.ndarray:
    """Greedy proposals in one call: ``steps[i]`` (>= 1) tokens for output row ``i``'s request,
    the first from ``rows``' pass, each next one a single-thread pass over the token before,
    as :func:`forward` would give them one pass at a time. Output row ``i`` must be a causal
    row (its table sees it) whose table already holds the slots of the next ``steps[i] - 1``
    positions. Returns [S, max(steps)] token ids (entries past a row's steps are unset)."""
    if w.amx:
        raise ValueError("greedy chains run the serial pass over FMA panels: pack without AMX")
    sel = rows.out_rows.shape[0]
    tokens = np.zeros((sel, int(steps.max(initial=1))), np.int64)
    _greedy_chains_c(
        _row_tuple(rows), steps, _weight_tuple(w), k_cache, v_cache, w.num_heads, w.eps,
        tokens,
    )  # fmt: skip
    return tokens

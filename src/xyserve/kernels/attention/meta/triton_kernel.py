"""Triton Meta-Attention: one launch per layer runs the whole attention task table.

A persistent grid of W programs; program w walks its snake-dealt list of units (tile, KV head)
from the task table. Each unit packs the G query heads of its KV group into the tile's rows
(``BLOCK_M = rows * G``), reads K/V page by page straight from the paged cache through the
stage's block table, and keeps an online softmax, so any kv length runs in registers. Masks come
from positions (causal with prefix offset, decode, verify) or from the stage's tree mask, loaded
row by row. Runs on CPU tensors under ``TRITON_INTERPRET=1`` for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xyserve.kernels.triton_precision import dot_precision
from xyserve.plan.triton_attention import TritonAttentionPlan, pow2


@triton.jit
def _meta_attn_kernel(
    Q,
    K,
    V,
    Out,
    BT,
    TREE,
    W_OFF,
    U_QSTART,
    U_ROWS,
    U_ROWOFF,
    U_CTX,
    U_KVLEN,
    U_EXT,
    U_KVH,
    U_STAGE,
    U_TREE_OFF,
    U_TREE_N,
    scale,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_ot,
    stride_oh,
    bt_stride,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    wid = tl.program_id(0)
    u_begin = tl.load(W_OFF + wid)
    u_end = tl.load(W_OFF + wid + 1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    r = offs_m // GROUP  # tile row
    g = offs_m % GROUP  # head within the KV group
    d_ok = offs_d < HEAD_DIM
    for u in range(u_begin, u_end):
        q_start = tl.load(U_QSTART + u)
        rows = tl.load(U_ROWS + u)
        row_off = tl.load(U_ROWOFF + u)
        ctx = tl.load(U_CTX + u)
        kv_len = tl.load(U_KVLEN + u)
        ext = tl.load(U_EXT + u)
        kvh = tl.load(U_KVH + u)
        stage = tl.load(U_STAGE + u)
        tree_off = tl.load(U_TREE_OFF + u)
        tree_n = tl.load(U_TREE_N + u)
        is_tree = tree_off >= 0
        row_ok = r < rows
        head = kvh * GROUP + g
        q_ptr = Q + (q_start + r)[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptr, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        qpos = ctx + row_off + r  # position of each row's token
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start_n in range(0, ext, BLOCK_N):
            kpos = start_n + offs_n
            k_ok = kpos < ext
            blk = tl.load(BT + stage * bt_stride + kpos // PAGE, mask=k_ok, other=0)
            kv_off = blk.to(tl.int64) * stride_kb + (kpos % PAGE) * stride_ks + kvh * stride_kh
            kv_mask = k_ok[:, None] & d_ok[None, :]
            k = tl.load(K + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + kv_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale
            allowed = (kpos[None, :] <= qpos[:, None]) & k_ok[None, :]
            # Tree rows: history is visible; new key j is visible where tree[row, j] is set.
            rel = kpos - ctx
            t_mask = (
                row_ok[:, None] & (rel >= 0)[None, :] & (rel < tree_n)[None, :]
            )  # tree_n=0: none
            t_ptr = TREE + tree_off + (row_off + r)[:, None] * tree_n + rel[None, :]
            tv = tl.load(t_ptr, mask=t_mask, other=0) != 0
            tree_allowed = ((kpos < ctx)[None, :] | tv) & (kpos < kv_len)[None, :]
            allowed = tl.where(is_tree, tree_allowed, allowed)
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        o_ptr = (
            Out + (q_start + r)[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        )
        tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def check_launch(
    plan: TritonAttentionPlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor | None,
) -> None:
    """Refuse tensors that disagree with the plan or with each other, before the launch.

    The kernel takes its head counts and head size from the tensors and its tile rows from the
    plan, and trusts both: a plan built for other heads cuts tiles of more rows than its
    ``BLOCK_M`` holds (rows past it are never computed), a query head count that is not a
    multiple of the KV heads leaves the last heads unread, and a ``q`` or ``out`` with fewer
    rows than the plan's tokens is read and written out of bounds. Host-side shape checks
    only: no device synchronisation."""
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"q must be [T, Hq, D] and the caches equal [blocks, page, Hkv, D]; got "
            f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    t, hq, d = q.shape
    heads = (hq, k_cache.shape[2], d)
    planned = (plan.num_q_heads, plan.num_kv_heads, plan.head_dim)
    if heads != planned or k_cache.shape[3] != d:
        raise ValueError(
            f"tensors with (q heads, KV heads, head dim) = {heads} and cache head dim "
            f"{k_cache.shape[3]}, but the plan was built for {planned}"
        )
    if t < plan.meta.table.num_tokens:
        raise ValueError(f"q has {t} rows; the plan covers {plan.meta.table.num_tokens} tokens")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(
            f"q, K and V must share a dtype; got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1):
        raise ValueError(
            f"out must be like q, {tuple(q.shape)} {q.dtype} unit-stride in D; got "
            f"{tuple(out.shape)} {out.dtype} strides {out.stride()}"
        )
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError(
            "K and V caches must share strides, and q and the caches be unit-stride in D"
        )


def triton_meta_attention(
    plan: TritonAttentionPlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One launch over the whole task table; rows of empty stages are zero. With ``out`` given,
    only the plan's rows are written into it (a plan may cover part of a step)."""
    check_launch(plan, q, k_cache, v_cache, out)
    t, hq, d = q.shape
    _, page, hkv, _ = k_cache.shape
    out = torch.zeros_like(q) if out is None else out
    a = plan.arrays
    w = int(a["w_off"].numel()) - 1
    if t == 0 or int(a["qstart"].numel()) == 0:
        return out
    _meta_attn_kernel[(w,)](
        q,
        k_cache,
        v_cache,
        out,
        a["bt"],
        a["tree"],
        a["w_off"],
        a["qstart"],
        a["rows"],
        a["rowoff"],
        a["ctx"],
        a["kvlen"],
        a["ext"],
        a["kvh"],
        a["stage"],
        a["toff"],
        a["tn"],
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        out.stride(0),
        out.stride(1),
        a["bt"].stride(0),
        HEAD_DIM=d,
        GROUP=hq // hkv,
        PAGE=page,
        BLOCK_M=plan.block_m,
        BLOCK_N=pow2(page),
        BLOCK_D=pow2(d),
        INPUT_PRECISION=dot_precision(q.dtype, plan.allow_tf32),
    )
    return out

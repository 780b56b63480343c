"""Triton baselines of ``bench kernels``'s GPU section: what a user writes without meta-kernels.

* :func:`per_stage_triton_attention` -- the Triton fused-attention tutorial's forward kernel
  (constexpr ``BLOCK_M``/``BLOCK_N``/``HEAD_DIM``, online softmax in base 2, grid over
  (query block, head)), launched once per stage on K/V that are first gathered contiguous from
  the paged cache. The gather is part of the baseline's cost, as in the CPU per-stage baseline;
  the gather indices and tree masks are put on the device once per step by
  :func:`plan_per_stage`, so host-to-device copies are not charged to it. Masks: causal with a
  prefix offset (prefill, chunked prefill, prefix reuse, decode, chain verify) from positions;
  GQA by mapping the query head to its KV head (``head // GROUP``), never by repeating K/V.
  Tree-verify stages fall back to a dense ``[n, kv_len]`` mask loaded by the same kernel
  (``HAS_MASK``), which is what a tutorial-style kernel needs for an arbitrary mask.
* :func:`padded_tutorial_matmul` -- the Triton matmul tutorial's kernel (grouped program ids,
  constexpr ``BLOCK_SIZE_M/N/K``) on an A physically padded to the bucket's M: allocate a
  zero-padded copy, run, slice. That is SmoothGEMM's baseline: same tiles, real padding.

Both run on CPU tensors under ``TRITON_INTERPRET=1`` for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from xyserve.kernels.attention.gather import gather_kv
from xyserve.kernels.triton_precision import dot_precision
from xyserve.plan.attention_metadata import AttentionMetadata
from xyserve.plan.gemm_table import GemmConfig, padded_m


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    Out,
    Mask,
    scale,
    n_q,
    kv_len,
    stride_qm,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_om,
    stride_oh,
    stride_mask,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One (query block, head) of one stage: the tutorial's forward, with a prefix offset."""
    start_m = tl.program_id(0)
    head = tl.program_id(1)
    kvh = head // GROUP  # GQA by index mapping
    ctx = kv_len - n_q  # history keys: query i sits at position ctx + i
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < n_q
    d_ok = offs_d < HEAD_DIM
    q = tl.load(
        Q + offs_m[:, None] * stride_qm + head * stride_qh + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    qk_scale = scale * 1.4426950408889634  # exp2 domain, as in the tutorial
    qpos = ctx + offs_m
    # Finite start: a row with no visible key in a block keeps weight 0, never NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_MASK:
        hi = kv_len
    else:
        hi = tl.minimum(kv_len, ctx + (start_m + 1) * BLOCK_M)  # skip blocks above the diagonal
    for start_n in range(0, hi, BLOCK_N):
        kpos = start_n + offs_n
        k_ok = kpos < kv_len
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(
            K + kpos[:, None] * stride_kn + kvh * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            V + kpos[:, None] * stride_kn + kvh * stride_kh + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        if HAS_MASK:
            allowed = (
                tl.load(
                    Mask + offs_m[:, None] * stride_mask + kpos[None, :],
                    mask=m_ok[:, None] & k_ok[None, :],
                    other=0,
                )
                != 0
            )
        else:
            allowed = (kpos[None, :] <= qpos[:, None]) & k_ok[None, :]
        qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        Out + offs_m[:, None] * stride_om + head * stride_oh + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )


@dataclass
class PerStagePlan:
    """Per stage: (start, num tokens, kv len, block ids on device, dense tree mask or None)."""

    stages: list[tuple[int, int, int, torch.Tensor, torch.Tensor | None]]


def plan_per_stage(meta: AttentionMetadata) -> PerStagePlan:
    """Once per step: each stage's gather indices (and tree mask, as int8) on the device."""
    device = meta.slot_mapping.device
    bs = meta.table.block_size
    stages = []
    for row, tree in zip(meta.table.rows, meta.tree_masks):
        if row.num_tokens == 0:
            continue
        nblk = (row.kv_len + bs - 1) // bs
        ids = torch.tensor(row.block_table[:nblk], dtype=torch.long, device=device)
        dense = None
        if tree is not None:
            ctx = row.kv_len - row.num_tokens
            dense = torch.ones((row.num_tokens, row.kv_len), dtype=torch.int8, device=device)
            dense[:, ctx:] = tree.to(device=device, dtype=torch.int8)
        stages.append((row.start, row.num_tokens, row.kv_len, ids, dense))
    return PerStagePlan(stages)


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def stage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    allow_tf32: bool = False,
) -> None:
    """One launch: q/out [n, Hq, D] (views), k/v [kv_len, Hkv, D] contiguous; writes ``out``."""
    n, hq, d = q.shape
    kv_len, hkv, _ = k.shape
    bm = min(block_m, _pow2(n))  # a decode does not pay a 64-row tile
    extra = {} if q.device.type == "cpu" else {"num_warps": num_warps, "num_stages": num_stages}
    _attn_fwd[(triton.cdiv(n, bm), hq)](
        q,
        k,
        v,
        out,
        mask if mask is not None else k,
        scale,
        n,
        kv_len,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        out.stride(0),
        out.stride(1),
        mask.stride(0) if mask is not None else 0,
        GROUP=hq // hkv,
        HEAD_DIM=d,
        BLOCK_D=_pow2(d),
        BLOCK_M=bm,
        BLOCK_N=block_n,
        HAS_MASK=mask is not None,
        INPUT_PRECISION=dot_precision(q.dtype, allow_tf32),
        **extra,
    )


def per_stage_triton_attention(
    plan: PerStagePlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: float,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """A whole step the per-stage way: gather each stage's K/V contiguous, one launch each."""
    out = torch.zeros_like(q)
    for start, n, kv_len, ids, dense in plan.stages:
        k = gather_kv(k_cache, ids, kv_len)
        v = gather_kv(v_cache, ids, kv_len)
        stage_attention(
            q[start : start + n], k, v, out[start : start + n], scale, dense, block_m, block_n
        )
    return out


@triton.jit
def _matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_SIZE_M: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """The Triton matmul tutorial's kernel: C[M, N] = A[M, K] @ B[K, N], grouped program ids."""
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    offs_am = (pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)) % M
    offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + (offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
    accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_SIZE_K, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_SIZE_K, other=0.0)
        accumulator = tl.dot(a, b, accumulator, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
    c = accumulator.to(c_ptr.dtype.element_ty)
    offs_cm = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + stride_cm * offs_cm[:, None] + stride_cn * offs_cn[None, :]
    tl.store(c_ptrs, c, mask=(offs_cm[:, None] < M) & (offs_cn[None, :] < N))


def tutorial_matmul(
    a: torch.Tensor, weight: torch.Tensor, cfg: GemmConfig, allow_tf32: bool = False
) -> torch.Tensor:
    """``a @ weight.T`` with the tutorial kernel; B is the [N, K] weight read transposed."""
    m, k = a.shape
    n = weight.shape[0]
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    if m == 0:
        return c
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    extra = (
        {} if a.device.type == "cpu" else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    )
    _matmul_kernel[grid](
        a,
        weight,
        c,
        m,
        n,
        k,
        a.stride(0),
        a.stride(1),
        weight.stride(1),
        weight.stride(0),
        c.stride(0),
        c.stride(1),
        BLOCK_SIZE_M=cfg.block_m,
        BLOCK_SIZE_N=cfg.block_n,
        BLOCK_SIZE_K=cfg.block_k,
        GROUP_SIZE_M=cfg.group_m,
        INPUT_PRECISION=dot_precision(a.dtype, allow_tf32),
        **extra,
    )
    return c


def padded_tutorial_matmul(
    x: torch.Tensor, weight: torch.Tensor, cfg: GemmConfig, pm: int | None = None
) -> torch.Tensor:
    """Physical pad-to-bucket: zero-padded copy of x to ``pm`` rows, tutorial matmul, slice."""
    m, k = x.shape
    pm = padded_m(m) if pm is None else pm
    xp = x.new_zeros((pm, k))
    xp[:m] = x
    return tutorial_matmul(xp, weight, cfg)[:m]

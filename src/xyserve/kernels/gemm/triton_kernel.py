"""Triton SmoothGEMM: ``y = x @ w.T (+ b)`` with M padded only virtually (paper §6.1).

The grid covers ``ceil(M / BLOCK_M)`` whole M-tiles -- the bucket's padded M -- but loads of x
and stores of y are masked to the real rows, so no padded copy of the activations is made and
padding rows never touch memory. Tile shape, swizzle group and launch knobs come from the GEMM
table's config for (op, padded M), which may also pick split-K or the vendor GEMM (cuBLAS)
for a bucket. Runs on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from xyserve.kernels.triton_precision import dot_precision
from xyserve.plan.gemm_table import GemmConfig


@triton.jit
def _smooth_gemm_kernel(
    X,
    W,
    B,
    Y,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)  # which K range (split-K); 0 when SPLIT_K == 1
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped (swizzled) order: GROUP_M M-tiles walk the N-tiles together, for L2 reuse of W.
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M  # selective read/write: the virtual padding rows are never touched
    n_ok = rn < N
    # Split-K: each of the SPLIT_K programs of an output tile sums a whole number of K-tiles.
    k_per = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = split * k_per
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_lo, tl.minimum(K, k_lo + k_per), BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        x = tl.load(
            X + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
            mask=m_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        w = tl.load(
            W + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
            mask=n_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        acc += tl.dot(x, w, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        if split == 0:
            acc += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptr = Y + rm[:, None] * stride_ym + rn[None, :] * stride_yn
    y_mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=y_mask)
    else:  # partial sums meet in a zeroed float32 output
        tl.atomic_add(y_ptr, acc, mask=y_mask)


def smooth_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: GemmConfig,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """[M, K] x [N, K]^T -> [M, N], one launch, M-tiles masked to the real rows.

    ``cfg.gpu_impl == "cublas"`` (a bucket where the tuner found the vendor GEMM faster) runs
    ``F.linear``. With ``cfg.split_k > 1`` the K dimension is cut into that many ranges whose
    partial sums are added atomically into a float32 output (then cast to x's dtype): more
    programs for the few M-tiles of a decode step, at the price of a reduction order that
    varies from run to run.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        # The kernel reads K from x alone: a wider weight was read as its first K columns.
        raise ValueError(f"x {tuple(x.shape)} @ weight {tuple(weight.shape)}.T: K differs")
    if x.dtype != weight.dtype or (bias is not None and bias.shape != (weight.shape[0],)):
        raise ValueError(
            f"x {x.dtype}, weight {weight.dtype} and bias "
            f"{None if bias is None else tuple(bias.shape)}: one dtype and a bias of [N] needed"
        )
    if cfg.gpu_impl == "cublas":
        return F.linear(x, weight, bias)
    m, k = x.shape
    n = weight.shape[0]
    split = max(1, cfg.split_k)
    out_dtype = torch.float32 if split > 1 else x.dtype
    alloc = torch.zeros if split > 1 else torch.empty
    y = alloc((m, n), dtype=out_dtype, device=x.device)
    if m == 0:
        return y.to(x.dtype)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
    extra = (
        {} if x.device.type == "cpu" else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    )
    _smooth_gemm_kernel[grid](
        x,
        weight,
        bias if bias is not None else y,
        y,
        m,
        n,
        k,
        x.stride(0),
        x.stride(1),
        weight.stride(0),
        weight.stride(1),
        y.stride(0),
        y.stride(1),
        HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        SPLIT_K=split,
        INPUT_PRECISION=dot_precision(x.dtype, allow_tf32),
        **extra,
    )
    return y if out_dtype == x.dtype else y.to(x.dtype)

"""SmoothGEMM: linear layers run through the GEMM table (paper §6.1, §6.3).

``plan(num_tokens)`` once per step picks the bucket (virtually padded M); ``linear`` looks up the
tuned config of (op, bucket). On CUDA the Triton kernel computes whole M-tiles but loads and
stores only real rows (masked), so no padded copy of the activations exists. On CPU the real
rows go to the vendor GEMM (oneDNN/MKL via ``F.linear``): measured on the dev box, physical
padding only costs and ``torch.compile`` per bucket did not pay (see ``xyserve bench kernels``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from xyserve.plan.gemm_table import GemmConfig, GemmTable, find_table, padded_m


@dataclass
class SmoothPlan:
    """The step's bucket, and the configs already looked up this step (one lookup per op)."""

    num_tokens: int
    padded_m: int
    configs: dict[tuple[str, int, int, int], GemmConfig] = field(default_factory=dict)


CPU_IMPLS = ("linear", "addmm", "swap")


def cpu_linear(
    cfg: GemmConfig, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ weight.T + bias`` through the vendor GEMM entry point the table chose.

    ``swap`` computes ``(weight @ x.T).T``: the weight rows become the GEMM's M, so the vendor
    GEMM's threads split the weight instead of the few token rows (each thread then streams
    only its share of the weight). The result is a transposed (column-major) view, which the
    next GEMM reads as its contiguous ``x.T`` at no cost. ``xyserve tune`` picks per bucket;
    ``xyserve bench kernels --only gemm --threads 2`` shows the tuned result against torch.
    """
    if x.dim() != 2 or cfg.cpu_impl == "linear":
        return F.linear(x, weight, bias)
    if cfg.cpu_impl == "swap":
        if bias is None:
            return torch.mm(weight, x.t()).t()
        return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()
    if bias is None:
        return torch.mm(x, weight.t())
    return torch.addmm(bias, x, weight.t())


class SmoothGemm:
    """The ``smooth`` GEMM backend."""

    name = "smooth"

    def __init__(
        self,
        table: GemmTable | None = None,
        table_path: str | os.PathLike | None = None,
        model_path: str | os.PathLike | None = None,
        device: str = "cpu",
    ) -> None:
        if table is None and table_path is not None:
            table = GemmTable.load(table_path)
        if table is None and model_path is not None:
            table = find_table(model_path, device)
        self.table = table or GemmTable(device=device)

    def plan(self, num_tokens: int) -> SmoothPlan:
        return SmoothPlan(num_tokens, padded_m(num_tokens))

    def linear(
        self,
        plan: SmoothPlan | None,
        op: str,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        m = x.shape[0] if x.dim() == 2 else x.numel() // x.shape[-1]
        if m == 0:
            return x.new_zeros((*x.shape[:-1], weight.shape[0]))
        key = (op, m, weight.shape[0], weight.shape[1])
        cfg = plan.configs.get(key) if plan is not None else None
        if cfg is None:
            cfg = self.table.lookup(op, m, weight.shape[0], weight.shape[1])
            if plan is not None:
                plan.configs[key] = cfg
        if x.is_cuda:
            from xyserve.kernels.triton.smooth_gemm import smooth_matmul

            y = smooth_matmul(x.reshape(m, x.shape[-1]), weight, bias, cfg)
            return y.view(*x.shape[:-1], weight.shape[0])
        return cpu_linear(cfg, x, weight, bias)

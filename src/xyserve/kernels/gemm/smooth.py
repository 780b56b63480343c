"""SmoothGEMM: linear layers run through the GEMM table (paper §6.1, §6.3).

``plan(num_tokens)`` once per step picks the bucket (virtually padded M); ``linear`` looks up the
tuned config of (op, bucket). On CUDA the Triton kernel computes whole M-tiles but loads and
stores only real rows (masked), so no padded copy of the activations exists. On CPU the real
rows go to the vendor GEMM (oneDNN/MKL via ``F.linear`` and its swapped forms) or, for the few
rows of decode steps, to ``kernels.cpu.gemm``'s numba kernel. CPU rows are never padded
physically: the vendor GEMM takes any M (what was tried instead: docs/perf.md).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from xyserve.kernels.cpu import gemm as cpu_gemm
from xyserve.kernels.cpu import prepacked
from xyserve.plan.gemm_table import (
    GemmConfig,
    GemmTable,
    Precision,
    SmoothPlan,
    find_table,
    load_checked,
)
from xyserve.plan.machine import machine_signature

# What a first start does on a (model, machine) pair without a table: "quick" tunes the decode
# buckets (tqdm bar, a few seconds to a minute) into the cache folder, "off" runs the defaults.
AUTOTUNE_ENV = "XYSERVE_GEMM_AUTOTUNE"
AUTOTUNE_MODES = ("quick", "off")
QUICK_DTYPES = ("float32", "bfloat16")  # the CPU dtypes a first start may tune (float16: none)


def autotune_mode() -> str:
    # Off by default: a quick tune times each GEMM alone, so it can pick an entry point whose
    # output layout slows the next op (docs/perf.md, issue 18); `xyserve tune` or
    # XYSERVE_GEMM_AUTOTUNE=quick opt in.
    mode = os.environ.get(AUTOTUNE_ENV, "off").strip().lower() or "off"
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"{AUTOTUNE_ENV}={mode!r}: choose one of {AUTOTUNE_MODES}")
    return mode


SWAPPED_IMPLS = ("swap", "swap8")  # these return a column-major view (see cpu_linear)
# What `xyserve tune` profiles: `swap` only differs from `swap8` at widths that are not a
# multiple of 8, where its time is erratic (docs/perf.md), so it is not offered; tables naming
# it still run.
CPU_CANDIDATES = ("linear", "addmm", "swap8", "numba", "dnnl")


def _padded_xt(x: torch.Tensor, m8: int) -> torch.Tensor:
    """``x.T`` ([K, M]) with zero columns up to ``m8``, copied in x's own layout."""
    m, k = x.shape
    if x.stride(-1) == 1:  # row-major x: pad rows, hand over the transposed view
        xp = x.new_empty((m8, k))
        xp[:m].copy_(x)
        xp[m:].zero_()
        return xp.t()
    xt = x.new_empty((k, m8))
    xt[:, :m].copy_(x.t())
    xt[:, m:].zero_()
    return xt


def cpu_linear(
    cfg: GemmConfig, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ weight.T + bias`` through the vendor GEMM entry point the table chose.

    ``swap`` computes ``(weight @ x.T).T``: the weight rows become the GEMM's M, so the vendor
    GEMM's threads split the weight instead of the few token rows (each thread then streams
    only its share of the weight). The result is a transposed (column-major) view, which the
    next GEMM reads as its contiguous ``x.T`` at no cost. ``swap8`` also pads the token count
    to a multiple of 8 with a physical copy of the (small) activations: MKL's swapped GEMM is
    erratic at other widths (docs/perf.md), and the copy is O(M K) against the GEMM's O(M N K).
    The result is then a column-major view with a row stride of the padded width. ``numba``
    is ``kernels.cpu.gemm``'s register-blocked kernel (row-major result; ``F.linear`` where numba is
    missing or the dtype is not float32). ``dnnl`` is oneDNN on the weight prepacked once
    (``kernels.cpu.prepacked``; one more copy of that weight in memory).
    ``xyserve tune`` picks per bucket; ``xyserve bench kernels --only gemm --threads 2``
    shows the tuned result against torch.
    """
    if x.dim() != 2 or cfg.cpu_impl == "linear":
        return F.linear(x, weight, bias)
    if cfg.cpu_impl == "numba":
        if cpu_gemm.available(x.dtype) and x.device.type == "cpu":
            return cpu_gemm.linear(x, weight, bias)
        return F.linear(x, weight, bias)
    if cfg.cpu_impl == "dnnl":
        return prepacked.linear(x, weight, bias)
    if cfg.cpu_impl in SWAPPED_IMPLS:
        m = x.shape[0]
        m8 = -(-m // 8) * 8
        xt = _padded_xt(x, m8) if cfg.cpu_impl == "swap8" and m8 != m else x.t()
        if bias is None:
            y = torch.mm(weight, xt)
        else:
            y = torch.addmm(bias.unsqueeze(1), weight, xt)
        return y[:, :m].t()
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
        allow_tf32: bool = False,
        dtype: str = "float32",
    ) -> None:
        self.allow_tf32 = allow_tf32  # Triton path: float32 dots in TF32 when set
        precision = Precision(dtype, allow_tf32)  # a table applies only at its own precision
        if table is None and table_path is not None:
            table = load_checked(table_path, device, precision)
        if table is None and model_path is not None:
            table = find_table(model_path, device, precision) or self._first_start(
                model_path, device, precision
            )
        self.table = table or GemmTable(device=device)

    @staticmethod
    def _first_start(
        model_path: str | os.PathLike, device: str, precision: Precision
    ) -> GemmTable | None:
        """No table for this (model, machine): a quick tune of the decode buckets on CPU
        (``XYSERVE_GEMM_AUTOTUNE=quick``), else (the default) ``F.linear``, said once here
        rather than once per shape. CUDA tables come from ``xyserve tune`` only."""
        if device == "cpu" and precision.dtype in QUICK_DTYPES and autotune_mode() == "quick":
            from xyserve.tools.tune import quick_tune

            return quick_tune(model_path, device, precision=precision)
        warnings.warn(
            f"SmoothGEMM: no GEMM table for {model_path} on this machine "
            f"({machine_signature(device).describe()}) in {precision.tag(device)}; running the "
            f"defaults "
            f"(run `xyserve tune --model PATH`)",
            stacklevel=3,
        )
        return None

    def warmup(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Build the numba GEMM at engine start when the table names it (not in a step)."""
        uses = any(
            c.cpu_impl == "numba" for per in self.table.entries.values() for c in per.values()
        )
        if uses and torch.device(device).type == "cpu" and cpu_gemm.available(dtype):
            cpu_gemm.warmup()

    def plan(self, num_tokens: int) -> SmoothPlan:
        return SmoothPlan.build(num_tokens)

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
            from xyserve.kernels.gemm.triton_kernel import smooth_matmul

            y = smooth_matmul(x.reshape(m, x.shape[-1]), weight, bias, cfg, self.allow_tf32)
            return y.view(*x.shape[:-1], weight.shape[0])
        return cpu_linear(cfg, x, weight, bias)

"""The small ops the model and the sampler call: one function per op, whatever the device.

Each op picks its implementation here -- a numba kernel (``kernels.cpu``) where the inputs fit
it (CPU, float32, a layout it reads), the torch expression otherwise -- and owns the memory
layouts that choice implies, so the model's forward reads as the math:

* A GEMM backend may return a column-major (token-minor) result: SmoothGEMM's ``swap`` entry
  points compute ``(W @ x.T).T``. The residual stream then takes that layout, because the model
  adds the residual into the fresh GEMM output in place. ``rms_norm`` and ``silu_mul`` run the
  torch path on it, and ``rope_and_cache`` rotates it in memory order with cos/sin tables laid
  out to match (``StepRotary``).
* ``greedy_ids`` reads logits row- or column-major (the lm_head's ``swap`` output) in one pass.

Every numba path is tested against the torch path here (``tests/xyserve/test_ops.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from xyserve.kernels.cpu import act as _act
from xyserve.kernels.cpu import argmax as _argmax
from xyserve.kernels.cpu import fused_forward as fused_forward  # engine.runner_fused's call
from xyserve.kernels.cpu import memory as memory  # the CPU K/V caches' allocation
from xyserve.kernels.cpu import norm as _norm
from xyserve.kernels.cpu import rope as _rope
from xyserve.kernels.cpu.views import as_numpy as as_numpy  # runner_fused's views of them


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x * rsqrt(mean(x^2) + eps)`` over the last dim, in float32, cast back to x's
    dtype before the weight (as HF). The result keeps x's layout."""
    if _norm.applies(x, weight):
        return _norm.rms_norm(x, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` of a ``[T, 2I]`` gate_up projection, as a ``[T, I]`` tensor."""
    return _act.silu_mul(gate_up)


def _token_minor(x: torch.Tensor) -> bool:
    """Whether x's tokens (dim 0) are adjacent in memory: a swapped GEMM's output (maybe with a
    padded stride), or a view of it."""
    return x.shape[0] > 1 and x.stride(0) == 1


@dataclass
class StepRotary:
    """A step's RoPE cos/sin rows (``RotaryEmbedding.tables``: ``[T, 1, D/2]``), shared by every
    layer, with a token-minor copy of each made once, on first use by a token-minor qkv, and
    the numba kernel's [T, D/2] arrays of them made once, on first use by the kernel."""

    cos: torch.Tensor
    sin: torch.Tensor
    _minor: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _rows: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """cos/sin as the contiguous float32 [T, D/2] arrays ``kernels.cpu.rope`` reads."""
        if self._rows is None:
            t, half = self.cos.shape[0], self.cos.shape[-1]
            self._rows = (
                _rope.rotary_rows(self.cos, t, half),
                _rope.rotary_rows(self.sin, t, half),
            )
        return self._rows

    def like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin laid out like ``x``, so that the rotation runs in x's memory order."""
        if not _token_minor(x) or self.cos.stride(0) == 1:
            return self.cos, self.sin
        if self._minor is None:
            self._minor = tuple(  # type: ignore[assignment]
                t.squeeze(1).t().contiguous().t().unsqueeze(1) for t in (self.cos, self.sin)
            )
        return self._minor  # type: ignore[return-value]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]`` on ``[T, H, D]`` (non-interleaved
    halves, as HF), written half by half into a tensor of x's layout: four elementwise passes,
    no rotated copy."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if _token_minor(x):
        out = x.new_empty((x.shape[1], x.shape[2], x.shape[0])).permute(2, 0, 1)
    else:
        out = torch.empty_like(x)
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)
    return out


def rope_and_cache(
    qkv: torch.Tensor,
    rotary: StepRotary,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qk_norm: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One attention layer's input side: split ``qkv`` ([T, (Hq + 2 Hkv) D]) into heads, RMSNorm
    q and k per head with ``qk_norm``'s weights when given (Qwen3), rotate them, write k and v
    into their cache slots (``slot_mapping``: [T] flat slots of the [blocks, block_size, Hkv, D]
    caches, which give Hkv and D), and return q ([T, Hq, D])."""
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    hq = qkv.shape[-1] // d - 2 * hkv
    if qk_norm is None and qkv.device.type == "cpu" and qkv.dtype == torch.float32:
        arrays = _rope.kernel_inputs(qkv, slot_mapping, hq, hkv, k_cache, v_cache)
        if arrays is not None:
            return _rope.run(arrays, *rotary.rows(), hq)
    t = qkv.shape[0]
    qk, v = qkv.split([(hq + hkv) * d, hkv * d], dim=-1)
    v = v.reshape(t, hkv, d)
    qk = qk.reshape(t, hq + hkv, d)
    if qk_norm is not None:
        q, k = qk.split([hq, hkv], dim=1)
        qk = torch.cat([rms_norm(q, qk_norm[0], eps), rms_norm(k, qk_norm[1], eps)], dim=1)
    cos, sin = rotary.like(qk)
    q, k = _rotate(qk, cos, sin).split([hq, hkv], dim=1)  # q and k at once
    k_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, v)
    return q


def greedy_ids(logits: torch.Tensor) -> list[int]:
    """``logits.argmax(dim=-1).tolist()`` for ``[R, V]`` logits of any layout (ties and NaN
    as ``torch.argmax``)."""
    return _argmax.greedy_ids(logits)


def warmup(device: torch.device | str, dtype: torch.dtype) -> None:
    """Compile (or load from numba's cache) the kernels these ops will use, at engine start
    rather than inside the first step. The greedy argmax always: sampling runs on CPU float32
    logits whatever the model's device."""
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        for kernel in (_norm, _act, _rope):
            kernel.warmup()
    _argmax.warmup()

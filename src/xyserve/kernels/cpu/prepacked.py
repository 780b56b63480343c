"""Linear layers on oneDNN with the weight prepacked once into oneDNN's blocked layout.

``F.linear`` hands MKL/oneDNN a plain row-major weight on every call, and the library packs
(reorders) it into its own blocked layout inside the call. For the few to few dozen rows of
decode and verify steps that repacking is a large share of the call. Here the weight is
reordered once (``torch.ops.mkldnn._reorder_linear_weight``, the op torch's own compiler uses
for CPU weight prepacking) and every call runs ``torch.ops.mkldnn._linear_pointwise`` on it.
One packed copy serves every M; the batch-size hint only guides oneDNN's choice of layout.

The packed copy is kept on the weight tensor (like ``views.as_numpy``) while the tensor keeps
its storage, shape, strides, dtype and contents: unlike ``as_numpy``'s view it is a copy, so an
in-place write to the weight (``copy_``, a weight update) must repack, which the tensor's
version counter tells (an inference-mode tensor has none; it cannot be written in place
outside inference mode, and a write inside it is not seen). It costs one more copy of that
weight's memory, which is why only the ops whose tuned table entry names ``dnnl`` get one
(``xyserve tune`` decides per op and bucket; figures: docs/perf.md, "Prepacked weights"). Results differ from ``F.linear``'s
in float32 rounding only (another summation order), as the other tuned entry points' do.

A bfloat16 model's weights are packed the same way where the CPU has native bfloat16: oneDNN
then runs them on AMX tiles or AVX-512 BF16 dot products, accumulating in float32 like
``F.linear`` on bfloat16 (figures: docs/perf.md, "bfloat16 on AMX").
"""

from __future__ import annotations

import torch

_ATTR = "_xyserve_dnnl_packed"
PACK_BATCH_HINT = 32  # a decode batch; any M runs on the result


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN runs prepacked linears of ``dtype`` here: float32, and bfloat16 where the
    CPU has native bfloat16 (AVX-512 BF16 or AMX; elsewhere oneDNN would emulate it slowly)."""
    if not (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def packed(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ([N, K], float32 or bfloat16, CPU) in oneDNN's layout; made once, cached on ``weight``."""
    key = (weight.data_ptr(), weight.shape, weight.stride(), weight.dtype, _version(weight))
    cached = getattr(weight, _ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    p = _reorder(weight.detach().contiguous())
    setattr(weight, _ATTR, (key, p))
    return p


def _version(t: torch.Tensor) -> int | None:
    """``t``'s in-place write counter (None for an inference-mode tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` on the prepacked weight (``F.linear`` where oneDNN cannot run
    it: another dtype or device, or no oneDNN in this torch build)."""
    if not (available(x.dtype) and x.device.type == "cpu" and weight.dtype == x.dtype):
        return torch.nn.functional.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed(weight), bias, "none", [], "")

"""The input precision of every Triton ``tl.dot``: what the caller's dtype promises.

On NVIDIA GPUs Triton's default for float32 ``tl.dot`` operands is TF32 (10-bit mantissa),
while the interpreter (``TRITON_INTERPRET=1``, the CPU tests) computes exact float32 products:
a user who asks for float32 would get TF32 silently, and the tests would not notice. So each
kernel takes its dot precision as a constexpr chosen here: ``"ieee"`` for float32 operands
unless the engine was configured with ``allow_tf32=True`` (torch's ``allow_tf32`` convention,
off by default), and Triton's default ``"tf32"`` otherwise, which only matters for float32
operands: float16/bfloat16 dots run on tensor cores either way.
"""

from __future__ import annotations

import torch

IEEE = "ieee"
TF32 = "tf32"


def dot_precision(dtype: torch.dtype, allow_tf32: bool = False) -> str:
    """The ``input_precision`` for ``tl.dot`` on operands of ``dtype``."""
    if dtype == torch.float32 and not allow_tf32:
        return IEEE
    return TF32

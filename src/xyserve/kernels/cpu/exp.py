"""A vectorizable float32 ``exp`` for numba kernels (softmax in the decode kernel, SiLU).

numba's ``np.exp`` compiles to a scalar libm call per element (its LLVM has no vector math
library). ``exp_parts`` is a Cody-Waite range reduction and a degree-7 polynomial, and leaves
``2**n`` to the caller, who builds it from float bits in a second pass, so that both passes
vectorize (figures against ``np.exp``: docs/perf.md).

The kernels that inline ``exp_parts`` (``decode``, ``act``) are declared
``cache.depends_on(exp)``, so an edit here invalidates their numba cache too.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is absent
    njit = None

if njit is not None:

    @njit(inline="always", fastmath=True)
    def exp_parts(x):  # pragma: no cover - compiled
        """``exp(x) = p * 2**n`` for ``x <= 0`` (clamped at -87, where exp is ~1.6e-38).

        NaN is not propagated as np.exp would (a model that produces it is already broken).
        ``2**n`` as float bits is ``(n + 127) << 23``.
        """
        x = max(x, np.float32(-87.0))
        n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        f = x - n * np.float32(0.693145751953125) - n * np.float32(1.428606765330187e-06)
        p = np.float32(1.0 / 5040) * f + np.float32(1.0 / 720)  # Taylor, Horner form
        p = p * f + np.float32(1.0 / 120)
        p = p * f + np.float32(1.0 / 24)
        p = p * f + np.float32(1.0 / 6)
        p = p * f + np.float32(0.5)
        p = p * f + np.float32(1.0)
        p = p * f + np.float32(1.0)
        return p, np.int32(n)

    @njit(inline="always", fastmath=True)
    def softmax_(sc, bits):  # pragma: no cover - compiled
        """``sc`` (1-D float32) replaced by its softmax, the exps in two vectorizable passes
        (``exp_parts``, then ``2**n`` from float bits); ``bits``: int32 scratch of at least
        ``sc``'s length."""
        count = sc.shape[0]
        pow2 = bits[:count].view(np.float32)
        m = sc[0]
        for j in range(1, count):
            m = max(m, sc[j])
        for j in range(count):
            p, n = exp_parts(sc[j] - m)
            sc[j] = p
            bits[j] = (n + 127) << 23
        tot = np.float32(0.0)
        for j in range(count):
            p = sc[j] * pow2[j]
            sc[j] = p
            tot += p
        inv = np.float32(1.0) / tot
        for j in range(count):
            sc[j] *= inv
else:  # pragma: no cover - exercised only where numba is absent
    exp_parts = softmax_ = None

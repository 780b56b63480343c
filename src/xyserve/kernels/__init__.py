"""Kernels execute a plan; no scheduling logic lives here.

``ops`` is the facade the model calls; ``backend`` names the attention and GEMM backends;
``attention/``, ``gemm/`` and ``cpu/`` (the numba kernels) hold the implementations.
"""

"""GEMM backends: SmoothGEMM (virtual padding, paper §6.1) and its Triton kernel."""

"""Meta-Attention (paper §4.2.1): the backend, its CPU path and its Triton kernel."""

"""The token counts steps are padded to and captured at (CUDA graphs): vLLM's list by default."""

from __future__ import annotations


def default_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """vLLM's default list, capped at twice ``max_num_seqs``, 512 and the token budget."""
    cap = min(2 * max_num_seqs, 512, max_num_batched_tokens)
    sizes = [1, 2, 4, *range(8, 257, 8), *range(272, 513, 16)]
    return [s for s in sizes if s <= cap]


def check_capture_sizes(sizes: list[int]) -> list[int]:
    """``sizes`` sorted, or a ValueError saying what is wrong with them."""
    if not isinstance(sizes, list | tuple):
        raise ValueError(f"cudagraph_capture_sizes must be a list of token counts, got {sizes!r}")
    if not sizes:
        raise ValueError("cudagraph_capture_sizes must name at least one size (or be unset)")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"cudagraph_capture_sizes must be positive integers, got {sizes!r}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"cudagraph_capture_sizes has duplicates: {sizes!r}")
    return sorted(sizes)

"""Attention backends: the protocol pieces, the reference, per-stage SDPA and Meta-Attention."""

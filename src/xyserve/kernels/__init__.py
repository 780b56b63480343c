"""Kernels execute a plan; no scheduling logic lives here."""

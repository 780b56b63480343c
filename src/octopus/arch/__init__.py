"""Architectures: cluster grid, PEAs, mesh and dies, reconfiguration and control-plane costs."""

from octopus.arch.config import Arch, load_arch

__all__ = ["Arch", "load_arch"]

"""Deterministic discrete-event execution of workflow instances on an architecture."""

from octopus.sim.engine import Simulator, simulate

__all__ = ["Simulator", "simulate"]

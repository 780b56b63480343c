"""Octopus: simulation and scheduling of orchestrated AI workflows on scale-out spatial architectures."""

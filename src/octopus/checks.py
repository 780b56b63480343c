"""Small input checks shared by the file formats and the command line.

A leaf module: it imports nothing from octopus, so `owg`, `arch`, the grid and the
command line can all use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable


def refuse_repeats(values: Iterable, where: str) -> None:
    """Raise a ValueError naming the first value that repeats an earlier one (by ==, so
    a rate of 2 repeats 2.0): a repeated scheduler, workflow or rate would run, and count
    in every mean, twice. `where` names the file or option and the key."""
    seen: list = []  # a list, not a set: values need not be hashable
    for x in values:
        if x in seen:
            raise ValueError(f"{where}: repeated {x!r}")
        seen.append(x)

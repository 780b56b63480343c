"""Small input checks shared by the file formats and the command line.

A leaf module: it imports nothing from octopus, so `owg`, `arch`, the grid and the
command line can all use it without an import cycle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from numbers import Integral
from pathlib import Path

import yaml


def read_document(path: Path, what: str) -> object:
    """The document in a workflow, architecture or grid file (JSON for a `.json` file, else
    YAML), or a ValueError naming `what` and the file: one reader, so that a syntax error
    in any of them is a message the command line prints, not a yaml traceback (a grid's
    was, where the workflow and architecture loaders caught it)."""
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:  # a syntax error, a folder, ...
        raise ValueError(f"{what} {str(path)!r}: cannot be read: {e}") from e


def refuse_repeats(values: Iterable, where: str) -> None:
    """Raise a ValueError naming the first value that repeats an earlier one (by ==, so
    a rate of 2 repeats 2.0): a repeated scheduler, workflow or rate would run, and count
    in every mean, twice. `where` names the file or option and the key."""
    seen: list = []  # a list, not a set: values need not be hashable
    for x in values:
        if x in seen:
            raise ValueError(f"{where}: repeated {x!r}")
        seen.append(x)


def check_seed(seed, where: str) -> int:
    """Return `seed` as an int if it is an integer >= 0; otherwise raise a ValueError that
    names `where` (the option, grid field or function). `random.Random` seeds with the
    absolute value of an integer, so a negative seed silently repeated a positive one's
    draws (`--seed -1` gave the run of `--seed 1`); a float or a bool is not a seed (a float
    was hashed, so 1.0 and 1 agreed but 0.5 ran too). Every place a seed enters checks it
    before anything runs: the command line, the grid file, and the Python entry points
    (`make_arrivals`, `arrival_times`, `Simulator`, `CompiledWorkflow.instance_rng`, and
    those that run many points first)."""
    at = f"{where}: " if where else ""
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ValueError(f"{at}a seed must be an integer >= 0, got {shown(seed)}")
    if seed < 0:
        raise ValueError(
            f"{at}a seed must be >= 0, got {seed} (random.Random ignores the sign, so a "
            "negative seed repeats the draws of a positive one)"
        )
    return int(seed)


def positive_finite(v) -> bool:
    """Whether `v` is a number > 0 that is finite: a rate or a fraction of one. NaN fails
    every comparison and an infinite rate draws every arrival at t = 0 (a batch, reported
    as "inf of bound"); a bool is not a number."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def number(v, where: str, probs: list[str], *, integer: bool = False, positive: bool = False):
    """Check the value `v` of a number field: a finite int or float (a bool is not one),
    >= 0 (> 0 when `positive`: it divides), and whole when `integer`. Returns it as an int
    or a float; otherwise appends to `probs` one message that names `where` (the node or
    file, and the field), what was expected and what it got, and returns None. `None`
    means the field is missing. The workflow (`owg.schema`) and architecture
    (`arch.config`) formats both check their number fields with it."""
    kind = "an integer" if integer else "a number"
    expected = f"expected {kind} {'> 0' if positive else '>= 0'}"
    if v is None:
        probs.append(f"{where}: missing ({expected})")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        why = f"got {shown(v)}"
    elif not math.isfinite(v):  # NaN passes every comparison below; inf has no int()
        why = f"got {v} (not finite)"
    elif integer and v != int(v):
        why = f"got {v} (not whole)"
    elif v < 0:
        why = f"got {v} (a negative size/value)"
    elif positive and v == 0:
        why = "got 0"
    else:
        return int(v) if integer else float(v)
    probs.append(f"{where}: {expected}, {why}")
    return None


def shown(v) -> str:
    """`repr(v)` for a message about a number field, with a hint where `v` is text that
    reads as a number: PyYAML follows YAML 1.1, which reads `1e9` (no dot in the
    mantissa) as the text '1e9', so `count: 1e9` would otherwise be refused with no clue."""
    if isinstance(v, str):
        try:
            as_number = math.isfinite(float(v))
        except ValueError:
            as_number = False
        if as_number:
            return f"the text {v!r} (YAML reads an exponent without a dot as text: write 1.0e9)"
    return repr(v)

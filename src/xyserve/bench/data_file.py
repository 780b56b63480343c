"""The check every versioned bench data file gets before its own fields are read.

Bench inputs (step, spec and serve workloads, QPS traces) are JSON objects that carry
``"schema": "<kind>/<version>"``. A loader that read its fields straight away accepted a
file of another kind or version (a serve workload given to ``bench kernels``) and failed
later with a KeyError or a traceback far from the file; this one helper keeps the
refusal, and its wording (the file, then the field), the same for every kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path, error: type[ValueError] = ValueError) -> Any:
    """The JSON in ``path``; ``error`` naming the file where it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON: {e}") from None


def check_versioned(
    data: Any, where: str, schema: str, error: type[ValueError] = ValueError
) -> dict[str, Any]:
    """``data`` (decoded JSON from ``where``) if it is an object whose ``schema`` field is
    exactly ``schema``, else ``error`` naming ``where`` and what is wrong (not an object, a
    missing or other schema). A version is part of the schema name, so an unknown one is
    refused too: no file is read under rules it was not written for."""
    if not isinstance(data, dict):
        raise error(f"{where}: must be a JSON object, got a JSON {type(data).__name__}")
    if data.get("schema") != schema:
        raise error(f"{where}: field 'schema' must be {schema!r}, got {data.get('schema')!r}")
    return data


def read_versioned(path: Path, schema: str, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path`` of kind and version ``schema`` (``check_versioned``)."""
    return check_versioned(read_json(path, error), str(path), schema, error)

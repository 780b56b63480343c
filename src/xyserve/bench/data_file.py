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


def read_versioned(path: Path, schema: str, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path`` whose ``schema`` field is exactly ``schema``, else
    ``error`` naming the file and what is wrong (unreadable JSON, not an object, a missing
    or other schema). A version is part of the schema name, so an unknown one is refused
    too: no file is read under rules it was not written for."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: must be a JSON object, got a JSON {type(data).__name__}")
    if data.get("schema") != schema:
        raise error(f"{path}: field 'schema' must be {schema!r}, got {data.get('schema')!r}")
    return data

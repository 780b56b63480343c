"""Imports point one way along a step's data: engine -> plan -> (nothing of ours but plan);
kernels run plans (they may import plan's types); the model calls only the ops facade and the
backend registry. Scanned from the sources, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import xyserve

SRC = Path(xyserve.__file__).parent


def _imports(package: str) -> dict[str, set[str]]:
    """Module path -> every ``xyserve...`` name it imports (``from m import x`` as ``m.x``), at
    any depth of its code."""
    out: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[str(path.relative_to(SRC))] = {n for n in names if n.startswith("xyserve.")}
    return out


def _offenders(package: str, allowed) -> list[str]:
    return [
        f"{mod} imports {name}"
        for mod, names in _imports(package).items()
        for name in sorted(names)
        if not allowed(name)
    ]


def test_the_scan_sees_imports():
    assert "xyserve.kernels.ops" in _imports("model")["model/llama.py"]


def test_plan_imports_only_plan():
    assert _offenders("plan", lambda n: n.startswith("xyserve.plan.")) == []


def test_kernels_do_not_import_the_engine_or_the_model():
    banned = ("xyserve.engine", "xyserve.model", "xyserve.server", "xyserve.spec")
    assert _offenders("kernels", lambda n: not n.startswith(banned)) == []


def test_model_calls_only_the_ops_facade_and_the_backends():
    ok = ("xyserve.model.", "xyserve.kernels.ops", "xyserve.kernels.backend")
    assert _offenders("model", lambda n: n.startswith(ok)) == []


def test_engine_reaches_kernels_only_through_the_facade_and_the_backends():
    ok = ("xyserve.kernels.ops", "xyserve.kernels.backend")

    def allowed(name: str) -> bool:
        return not name.startswith("xyserve.kernels") or name.startswith(ok)

    assert _offenders("engine", allowed) == []

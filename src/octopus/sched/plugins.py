"""User schedulers: `package.module:Class` or `path/to/file.py:Class`, and a registry.

A plugin class is checked against the interface (`octopus.sched.api`) when it is loaded, so
a class that lacks a hook fails at once with the names of what it lacks, not mid-run.
Installed packages can also register schedulers under the entry-point group
`octopus.schedulers` (name = "package.module:Class").
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from octopus.sched.api import missing_hooks

ENTRY_POINT_GROUP = "octopus.schedulers"
_REGISTERED: dict[str, Callable] = {}


def is_spec(name: str) -> bool:
    """Whether `name` names a plugin class rather than a registered scheduler."""
    return ":" in name


def load_class(spec: str) -> type:
    """The scheduler class named by `module:Class` or `file.py:Class`, checked."""
    where, sep, cls_name = spec.rpartition(":")
    if not sep or not where or not cls_name:
        raise ValueError(f"scheduler {spec!r}: expected package.module:Class or file.py:Class")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"scheduler {spec!r}: no file {path}")
        mod_name = f"octopus_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
        mod = sys.modules.get(mod_name)
        if mod is None:
            ps = importlib.util.spec_from_file_location(mod_name, path)
            mod = importlib.util.module_from_spec(ps)
            sys.modules[mod_name] = mod  # dataclasses and pickling look the module up
            try:
                ps.loader.exec_module(mod)
            except BaseException:
                del sys.modules[mod_name]
                raise
    else:
        try:
            mod = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"scheduler {spec!r}: cannot import {where!r}: {e}") from e
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise ValueError(f"scheduler {spec!r}: {where} has no {cls_name!r}")
    if not isinstance(cls, type):
        raise ValueError(f"scheduler {spec!r}: {cls_name!r} is not a class")
    missing = missing_hooks(cls)
    if missing:
        raise ValueError(
            f"scheduler {spec!r}: class {cls_name} lacks {', '.join(missing)} "
            "(a scheduler needs attach(api), on_ready(k, t) and on_free(peas, t); "
            "see octopus.sched.api)"
        )
    return cls


def source_file(name: str) -> Path | None:
    """The file that defines the plugin scheduler `name` (a spec, or a name registered
    through an entry point): `file.py` itself, or the module's file, found without running
    it. None for a built-in (part of octopus's own code) or a factory registered at run
    time (no file to name). A grid row's fingerprint hashes it (`grid.fingerprint`)."""
    if not is_spec(name):
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if name in _REGISTERED or not eps:
            return None
        name = eps[0].value
    where = name.rpartition(":")[0]
    if where.endswith(".py"):
        return Path(where)
    try:
        spec = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.has_location else None


def instantiate(spec: str, **kw):
    cls = load_class(spec)
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"scheduler {spec!r}: cannot build it with {sorted(kw)}: {e}") from e


def register(name: str, factory: Callable) -> None:
    """Make `name` a scheduler name (for run, compare, sweep, load and the invariant tests);
    `factory(**kw)` builds one; a spec string registers that plugin class. A built-in's
    name is refused: the built-in is looked up first, so the registration was ignored."""
    from octopus.sched import NAMES  # here: the package imports this module

    if name in NAMES:
        raise ValueError(f"scheduler {name!r} is a built-in; register it under another name")
    if name in _REGISTERED:
        raise ValueError(f"scheduler {name!r} is already registered")
    if isinstance(factory, str):
        spec = factory
        load_class(spec)

        def factory(**kw):
            return instantiate(spec, **kw)

    _REGISTERED[name] = factory


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def registered() -> dict[str, Callable]:
    """Schedulers registered at run time and through entry points (name -> factory)."""
    out = dict(_REGISTERED)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in out:
            out[ep.name] = lambda _v=ep.value, **kw: instantiate(_v, **kw)
    return out

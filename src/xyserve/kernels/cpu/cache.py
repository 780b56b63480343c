"""numba's on-disk cache, made aware of the helpers a kernel inlines from other modules.

numba keys a cached kernel on its own source file's stamp only, so a kernel that inlines a
helper from another module (``exp.exp_parts``) would keep running the old helper from its
cache after the helper's source changed. ``depends_on(*modules)`` adds a digest of those
modules' sources to the kernel's cache stamp: a change there invalidates the kernel's cached
code as an edit of its own file does. Where numba's cache internals are not the ones this was
written against, the kernel is compiled afresh at each start instead (never stale).
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from types import ModuleType


def source_digest(*modules: ModuleType) -> str:
    """sha256 over the source files of ``modules``, in order."""
    h = hashlib.sha256()
    for m in modules:
        with open(inspect.getsourcefile(m) or m.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def depends_on(*modules: ModuleType):
    """Decorator for a ``njit(cache=True)`` dispatcher: its cache entries are valid only for
    the current sources of ``modules`` (the helpers it inlines) as well as its own."""
    digest = source_digest(*modules)

    def bind(dispatcher):
        cache = getattr(dispatcher, "_cache", None)
        cache_file = getattr(cache, "_cache_file", None)
        if cache_file is not None and hasattr(cache_file, "_source_stamp"):
            cache_file._source_stamp = (cache_file._source_stamp, digest)
        elif cache is not None and type(cache).__name__ != "NullCache":
            from numba.core.caching import NullCache

            warnings.warn(
                f"numba's cache layout is not the expected one: {dispatcher.__name__} is "
                "compiled at each start",
                stacklevel=2,
            )
            dispatcher._cache = NullCache()
        return dispatcher

    return bind

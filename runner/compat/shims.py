"""The old runners' import paths (``apisix.runner.*``), made importable in the
runner process and holding the compatibility classes.

The modules go straight into ``sys.modules``, which the import system asks
before any path. Where ``apisix`` is this distribution's own namespace package
(it ships ``apisix.plugin``, the guide's API), the old paths are hung under
it, so both kinds of plugin import side by side. Where a real ``apisix``
distribution is installed (the old runner itself: its ``apisix.runner``
exists on disk), nothing is installed and its modules are used as they are:
they need the old runner's socket server, so its plugins then fail with that
distribution's own errors, and a warning says why.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("runner.compat")

MARK = "__apisix_runner_compat__"
ROOT = "apisix"
_DOC = "apisix-runner compatibility layer (runner.compat); see docs/migration.md"


def _module(name: str, package: bool) -> types.ModuleType:
    mod = types.ModuleType(name, _DOC)
    if package:
        mod.__path__ = []  # a package, but nothing else is importable under it
    setattr(mod, MARK, True)
    return mod


def _real_old_runner() -> bool:
    try:
        return importlib.util.find_spec("apisix.runner") is not None
    except (ImportError, ValueError):
        return False


def _is_namespace(module: types.ModuleType) -> bool:
    # A namespace package (PEP 420): no __init__.py, its __path__ a _NamespacePath.
    path = getattr(module, "__path__", None)
    return getattr(module, "__file__", None) is None and type(path).__name__ == "_NamespacePath"


def _root() -> types.ModuleType | None:
    """The ``apisix`` module to hang the shims under, or None to stand back."""
    existing = sys.modules.get(ROOT)
    if existing is not None and getattr(existing, MARK, False):
        return existing
    if existing is None:
        try:
            existing = importlib.import_module(ROOT)  # our namespace package, if on the path
        except ImportError:
            root = _module(ROOT, True)
            sys.modules[ROOT] = root
            return root
    if _is_namespace(existing) and not _real_old_runner():
        setattr(existing, MARK, True)  # the namespace package of apisix.plugin
        return existing
    log.warning(
        "a module named 'apisix' (%s) is installed; not installing the old runners' "
        "import paths (docs/migration.md)",
        getattr(existing, "__file__", None) or "namespace",
    )
    return None


def install(modules: Mapping[str, Mapping[str, Any]]) -> bool:
    """Make each dotted module name importable, holding the given attributes
    (packages along the way are made as needed). Idempotent; returns whether
    the shims are in place."""
    root = _root()
    if root is None:
        return False
    for dotted, attrs in modules.items():
        parent = root
        parts = dotted.split(".")
        for depth in range(1, len(parts)):
            name = ".".join(parts[: depth + 1])
            mod = sys.modules.get(name)
            if mod is None:
                mod = _module(name, package=depth < len(parts) - 1)
                sys.modules[name] = mod
                setattr(parent, parts[depth], mod)
            parent = mod
        for key, value in attrs.items():
            setattr(parent, key, value)
    return True

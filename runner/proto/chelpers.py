"""Where the compiled build's hand-written C helpers are found.

``C_HELPERS`` in runner/hotpath.py lists them; the install builds them beside
the mypyc modules, all or nothing. The pure build has none, and each module
that uses one falls back to its Python twin.
"""

from __future__ import annotations

import importlib
from typing import Any


def c_function(module: str, name: str) -> Any:
    """``name`` of the C helper ``module`` where the install built it, else None."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None

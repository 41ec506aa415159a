"""The per-call path that the install compiles with mypyc, and how this process runs it.

``pip install .`` (or ``-e .``) compiles these modules to C extensions when
it can (setup.py): a C compiler and the Python headers are there, and
``APISIX_RUNNER_PURE_PYTHON`` is not set. The ``.py`` files stay the source
of truth and the fallback: where no compiler is found the install goes on
and the same modules run as plain Python, with the same behaviour (the test
suite runs on both builds). Plugins are never compiled.

setup.py reads this file with ``runpy`` before anything is installed, so it
imports nothing at module level.
"""

from __future__ import annotations

#: Compiled together, in this order, as one extension group.
MODULES = (
    "runner.proto.fb",
    "runner.proto.frame",
    "runner.proto.messages",
    "runner.proto.replymemo",
    "runner.api.multidict",
    "runner.api.http",
    "runner.api.chain",
    "runner.api.calltask",
    "runner.api.dispatch",
    "runner.conf.confstore",
    "runner.server.conn",
)

#: Hand-written C helpers built beside them, each from ``<module path>.c``;
#: the pure build runs their Python twins (``frame.cut_payload``, ``fb.text_vector``,
#: ``stepping.step_in_py``).
C_HELPERS = ("runner.proto._cutframe", "runner.proto._textvec", "runner.api._coro")

#: Setting this variable to anything but "" or "0" installs the pure-Python build.
PURE_ENV = "APISIX_RUNNER_PURE_PYTHON"


def module_paths() -> list[str]:
    """The source files of :data:`MODULES`, relative to the project root."""
    return [name.replace(".", "/") + ".py" for name in MODULES]


def helper_paths() -> list[str]:
    """The C sources of :data:`C_HELPERS`, relative to the project root."""
    return [name.replace(".", "/") + ".c" for name in C_HELPERS]


def compiled_modules() -> list[str]:
    """The modules of :data:`MODULES` this process imported as extensions,
    and the :data:`C_HELPERS` it can import."""
    import importlib
    import importlib.machinery
    import importlib.util

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = [
        name
        for name in MODULES
        if (getattr(importlib.import_module(name), "__file__", None) or "").endswith(suffixes)
    ]
    return compiled + [name for name in C_HELPERS if importlib.util.find_spec(name) is not None]


def build(compiled: list[str] | None = None) -> str:
    """``compiled``, ``pure`` or ``partial`` (some modules compiled, some
    not: a broken install, named so in the start-up log and ``--version``).
    ``compiled``: compiled_modules(), where the caller has it already."""
    count = len(compiled_modules() if compiled is None else compiled)
    if count == len(MODULES) + len(C_HELPERS):
        return "compiled"
    return "pure" if count == 0 else "partial"


def describe() -> str:
    """One line for ``--version`` and the start-up log."""
    compiled = compiled_modules()
    kind = build(compiled)
    if kind == "compiled":
        return f"hot path compiled with mypyc ({len(MODULES)} modules) and C ({len(C_HELPERS)})"
    if kind == "pure":
        return "hot path in pure Python (no compiled build installed)"
    missing = sorted({*MODULES, *C_HELPERS} - set(compiled))
    return f"hot path partly compiled: {', '.join(missing)} not compiled; reinstall the runner"

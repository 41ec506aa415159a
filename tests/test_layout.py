"""The rooms of ``runner/`` and who may import whom (docs/architecture.md).

Read from the source with ``ast``, lazy imports inside functions and
``TYPE_CHECKING`` blocks included: a dependency is a dependency wherever the
import statement sits.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import runner

ROOT = Path(runner.__file__).parent
GENERATED = ROOT / "testing" / "_a6"

# Room -> the rooms its modules may import. A room is a sub-package, or one of
# the top-level modules.
_BASE = {"proto", "ops", "settings", "hotpath"}
ALLOWED: dict[str, set[str]] = {
    "proto": {"proto"},
    "settings": {"settings"},
    "hotpath": {"hotpath"},  # imports nothing at module level (setup.py runs it)
    "ops": {"ops", "settings"},
    "api": {"api"} | _BASE,
    "conf": {"conf", "api"} | _BASE,
    "compat": {"compat", "api"} | _BASE,
    "testing": {"testing", "api", "conf", "compat"} | _BASE,
    "server": {"server", "api", "conf", "compat"} | _BASE,
    "cli": {"cli", "server", "api", "conf", "compat"} | _BASE,
    "__main__": {"cli"},
    "__init__": {"api"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if GENERATED not in path.parents:
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours an imported name means, or None for a third-party one
    (the generated flatc code counts as third-party)."""
    if name.startswith("runner.testing._a6"):
        return None
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from runner.api import dispatch` imports the module runner.api.dispatch.
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                yield resolved


GRAPH = {m: set(_imported(m, p)) for m, p in MODULES.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_the_rooms_exist_and_say_what_they_are_for() -> None:
    for room in ("proto", "api", "conf", "ops", "server", "testing", "compat"):
        init = ROOT / room / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_lower_rooms_never_import_higher_ones(module: str) -> None:
    room = _room(module)
    allowed = ALLOWED[room]
    wrong = sorted(m for m in GRAPH[module] if _room(m) not in allowed)
    assert not wrong, f"{module} ({room}) imports {wrong}; {room} may import only {allowed}"


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, trail = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return [*trail, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*trail, nxt]))
    return None


def test_no_import_circles() -> None:
    cycles = [c for m in sorted(MODULES) if (c := _cycle_from(m))]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_circle() -> None:
    # The graph is real: discovery is imported by the server and the test kit.
    assert "runner.api.discovery" in GRAPH["runner.server.supervisor"]
    assert "runner.api.discovery" in GRAPH["runner.testing.plugintest"]
    GRAPH["runner.api.plugin"].add("runner.api.discovery")
    try:
        assert _cycle_from("runner.api.plugin") is not None
    finally:
        GRAPH["runner.api.plugin"].discard("runner.api.discovery")


def test_public_imports_keep_working() -> None:
    from runner import Plugin, Request, Response, UpstreamResponse
    from runner.testing import Client, HTTPRequest, PluginTester, Stop

    assert all((Plugin, Request, Response, UpstreamResponse, Client, HTTPRequest, Stop))
    assert PluginTester.__module__ == "runner.testing.plugintest"

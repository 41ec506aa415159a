"""runner.proto stays sans-IO: no asyncio, socket or uvloop anywhere in it."""

from __future__ import annotations

import ast
from pathlib import Path

import runner.proto

FORBIDDEN = {"asyncio", "socket", "uvloop", "selectors", "ssl"}


def test_proto_imports_no_io_module() -> None:
    root = Path(runner.proto.__file__).parent
    files = sorted(root.glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from runner.api.discovery import load_plugins
from runner.api.plugin import Plugin, PluginError

GOOD = """
from runner import Plugin

class A(Plugin):
    name = "a"
    def filter(self, conf, request, response):
        pass

class B(Plugin):
    name = "b"
    async def response_filter(self, conf, response):
        pass

class Helper(Plugin):   # no name: a base class, not a plugin
    pass
"""


def plugin_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_plugins_are_found_in_directories(tmp_path: Path) -> None:
    d = plugin_dir(tmp_path, {"good.py": GOOD, "_private.py": "raise SystemExit"})
    plugins = load_plugins([d], entry_points=False)
    assert sorted(plugins) == ["a", "b"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"broken.py": "import no_such_module"}, r"broken.py failed to import: .*no_such_module"),
        ({"x.py": GOOD, "y.py": GOOD}, r"two plugins are named 'a': \S*/x.py and \S*/y.py"),
        # file:line:col: message, as compilers say it, not a SyntaxError(...) repr
        ({"bad.py": "x = 1\ndef f(:\n"}, r"^\S*/bad.py:2:7: invalid syntax$"),
        (
            {"z.py": "from runner import Plugin\nclass Z(Plugin):\n    name = 'z'\n"},
            "defines neither filter nor response_filter",
        ),
    ],
)
def test_broken_plugins_stop_loading(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_plugins([plugin_dir(tmp_path, files)], entry_points=False)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins([tmp_path / "nope"], entry_points=False)


class FromPackage(Plugin):
    name = "from-package"

    def filter(self, conf: object, request: object, response: object) -> None:
        pass


def test_entry_point_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = importlib.metadata.EntryPoint(
        name="from-package", value=f"{__name__}:FromPackage", group="apisix_runner.plugins"
    )

    def fake_entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
        return [ep] if group == "apisix_runner.plugins" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    assert list(load_plugins([], entry_points=True)) == ["from-package"]

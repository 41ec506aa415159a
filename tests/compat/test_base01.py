"""Plugins written for the 0.1 runner's ``Base`` API run unchanged (plugins in
base01_plugins/, in the shape of that release's examples)."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

from runner.compat.base01 import Base, Base01Plugin
from runner.testing import HTTPRequest, PluginTester, Rewrite, Stop
from runner.testing.pytest_plugin import RunnerFactory

BASE01_PLUGINS = str(Path(__file__).resolve().parent / "base01_plugins")
REQUEST = HTTPRequest(path="/get", args=[("q", "1")], headers=[("x-drop", "1"), ("accept", "*/*")])


def check_stop(action: object) -> None:
    assert isinstance(action, Stop)
    assert (action.status, action.body) == (201, b"Hello, Python Runner of APISIX")
    assert sorted(action.headers) == [("X-Config", "v"), ("X-Resp-A6-Runner", "Python")]


def check_rewrite(action: object) -> None:
    assert isinstance(action, Rewrite)
    assert action.path == "/rewritten/get"
    # Only what changed goes upstream: x-drop and accept are left alone.
    assert [(k.lower(), v) for k, v in action.headers] == [("x-resp-a6-runner", "Python")]
    assert action.args == [("a6_runner", "Python")]  # only what changed


def test_named_by_class_and_run_through_the_test_kit() -> None:
    with PluginTester(plugin_dirs=[BASE01_PLUGINS]) as t:
        assert sorted(t.plugins) == ["rewrite", "stop"]
        assert all(isinstance(p, Base01Plugin) for p in t.plugins.values())
        check_stop(t.call([("stop", '{"k": "v"}')], REQUEST).action)
        check_rewrite(t.call([("rewrite", "")], REQUEST).action)
    base = importlib.import_module("apisix.runner.plugin.base")
    assert base.Base is Base


def test_stop_is_per_request_not_sticky(tmp_path: Path) -> None:
    # 0.1 kept one instance per route, so one stop() stopped every later request.
    (tmp_path / "sometimes.py").write_text(
        "from apisix.runner.plugin.base import Base\n"
        "class Sometimes(Base):\n"
        "    def __init__(self):\n"
        "        super().__init__('sometimes')\n"
        "    def filter(self, request, response):\n"
        "        if request.path == '/stop':\n"
        "            response.status_code = 403\n"
        "            self.stop()\n"
    )
    with PluginTester(plugin_dirs=[str(tmp_path)]) as t:
        stopped = t.call([("sometimes", "")], HTTPRequest(path="/stop"))
        assert isinstance(stopped.action, Stop) and stopped.action.status == 403
        later = t.call([("sometimes", "")], HTTPRequest(path="/go"))
        assert not isinstance(later.action, Stop)


def test_base01_plugins_through_the_runner(runner_factory: RunnerFactory) -> None:
    runner = runner_factory(
        plugins_dir=BASE01_PLUGINS, workers=2, config={"bundled_plugins": False}
    )

    async def scenario() -> None:
        async with await runner.client() as c:
            stop = await c.call(await c.prepare_conf([("stop", '{"k": "v"}')]), REQUEST)
            check_stop(stop.action)
            rewrite = await c.call(await c.prepare_conf([("rewrite", "")]), REQUEST)
            check_rewrite(rewrite.action)

    asyncio.run(scenario())

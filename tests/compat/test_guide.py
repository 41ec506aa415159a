"""Plugins written in the guide's ``apisix.plugin.*`` style run unchanged: in
the guide's own unit-test style, through the test kit, and through the real
runner with two workers (plugins in guide_plugins/, written in its shape)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from runner.api.plugin import PluginError
from runner.compat.guide import GuidePlugin
from runner.testing import Client, HTTPRequest, PluginTester, Rewrite, Stop
from runner.testing.pytest_plugin import RunnerFactory, accepts, runner_env
from tests.plugins.guideauth import guide_auth_service

GUIDE_PLUGINS = str(Path(__file__).resolve().parent / "guide_plugins")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _importable() -> Iterator[None]:
    # The guide's tests import the plugin module by its file name.
    sys.path.insert(0, GUIDE_PLUGINS)
    yield
    sys.path.remove(GUIDE_PLUGINS)


# --------------------------------------------------------------------------- the guide's unit tests


def test_the_guides_unit_test_style() -> None:
    from header_rewrite import HeaderRewritePlugin

    from apisix.plugin.request import Request
    from apisix.plugin.response import Response

    plugin = HeaderRewritePlugin()
    plugin.set_config('{"add_headers": {"X-Test": "value"}, "remove_headers": ["User-Agent"]}')
    request = Request()
    request.headers = {"User-Agent": "curl", "Accept": "text/plain"}
    response = Response()
    result = plugin.filter(request, response)
    assert result is True
    assert request.headers.get("X-Test") == "value"
    assert "User-Agent" not in request.headers
    assert request.headers.get("accept") == "text/plain"  # names are case-insensitive


def test_an_aiohttp_session_in_init_outside_a_loop() -> None:
    from token_check import TokenCheckPlugin

    plugin = TokenCheckPlugin()  # aiohttp refuses a ClientSession outside a running loop
    assert plugin.name == "guide-async-auth" and plugin.session.closed


# --------------------------------------------------------------------------- through the test kit


def test_plugins_load_from_a_directory_under_their_names() -> None:
    with PluginTester(plugin_dirs=[GUIDE_PLUGINS]) as t:
        assert sorted(t.plugins) == [
            "guide-async-auth", "guide-body-check", "guide-header-rewrite",
            "guide-route-tag", "hello-world",
        ]  # fmt: skip
        assert all(isinstance(p, GuidePlugin) for p in t.plugins.values())
        hello = t.call([("hello-world", "")], HTTPRequest(path="/hello"))
        assert isinstance(hello.action, Stop)
        assert (hello.action.status, hello.action.body) == (200, b"Hello from Python plugin!")
        other = t.call([("hello-world", "")], HTTPRequest(path="/else"))
        assert isinstance(other.action, Rewrite)
        assert other.action.resp_headers == [("X-Python-Plugin", "hello-world")]


def test_a_plain_filter_reads_the_body_and_stops_by_returning_false() -> None:
    conf = [("guide-body-check", {"required": ["name"]})]
    with PluginTester(plugin_dirs=[GUIDE_PLUGINS]) as t:
        bad = t.call(conf, HTTPRequest(method="POST", body=b'{"x": 1}'))
        assert isinstance(bad.action, Stop) and bad.action.status == 400
        assert bad.action.body == b"missing: name"
        assert bad.extra_info == [("req_body", None)]  # fetched before the filter ran
        good = t.call(conf, HTTPRequest(method="POST", body=b'{"name": "a"}'))
        assert not isinstance(good.action, Stop)
        get = t.call(conf, HTTPRequest(method="GET"))
        assert not isinstance(get.action, Stop)


def test_set_config_raising_rejects_the_route() -> None:
    with (
        PluginTester(plugin_dirs=[GUIDE_PLUGINS]) as t,
        pytest.raises(Exception, match="Missing required config: required"),
    ):
        t.call([("guide-body-check", {})], HTTPRequest())


def test_a_plugin_without_a_name_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "nameless.py").write_text(
        "from apisix.plugin.runner import Plugin\n"
        "class Nameless(Plugin):\n"
        "    def filter(self, request, response):\n"
        "        return True\n"
    )
    with pytest.raises(PluginError, match="Nameless has no name"):
        PluginTester(plugin_dirs=[str(tmp_path)])


def test_an_api_we_do_not_provide_points_to_the_migration_page(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text("from apisix.runner.server.handle import RPCHandler\n")
    with pytest.raises(PluginError, match=r"imports apisix\.runner\.server.*docs/migration\.md"):
        PluginTester(plugin_dirs=[str(tmp_path)])


# --------------------------------------------------------------------------- the real runner


@pytest.fixture
def auth_url() -> Iterator[str]:
    with guide_auth_service() as url:
        yield url


def test_guide_plugins_through_the_runner(runner_factory: RunnerFactory, auth_url: str) -> None:
    runner = runner_factory(plugins_dir=GUIDE_PLUGINS, workers=2, config={"bundled_plugins": False})

    async def scenario() -> None:
        async with await runner.client() as c:
            hello = await c.call(
                await c.prepare_conf([("hello-world", "")]), HTTPRequest(path="/hello")
            )
            assert (
                isinstance(hello.action, Stop) and hello.action.body == b"Hello from Python plugin!"
            )

            rewrite_conf = {
                "add_headers": {"X-Company": "Apache"},
                "remove_headers": ["User-Agent"],
            }
            token = await c.prepare_conf([("guide-header-rewrite", json.dumps(rewrite_conf))])
            result = await c.call(
                token, HTTPRequest(headers=[("user-agent", "curl"), ("accept", "*/*")])
            )
            assert isinstance(result.action, Rewrite)
            changed = sorted((name.lower(), value) for name, value in result.action.headers)
            assert changed == [("user-agent", None), ("x-company", "Apache")]

            token = await c.prepare_conf([("guide-async-auth", json.dumps({"auth_url": auth_url}))])
            ok = await c.call(token, HTTPRequest(headers=[("authorization", "Bearer good")]))
            assert not isinstance(ok.action, Stop)
            bad = await c.call(token, HTTPRequest(headers=[("authorization", "Bearer bad")]))
            assert isinstance(bad.action, Stop) and (bad.action.status, bad.action.body) == (
                403, b"Invalid token",
            )  # fmt: skip
            none = await c.call(token, HTTPRequest())
            assert isinstance(none.action, Stop) and none.action.status == 401

    asyncio.run(scenario())


def test_each_route_has_its_own_instance_under_concurrent_calls(
    runner_factory: RunnerFactory,
) -> None:
    runner = runner_factory(plugins_dir=GUIDE_PLUGINS, workers=2, config={"bundled_plugins": False})

    async def one_connection(tokens: dict[str, int]) -> list[tuple[str, bytes]]:
        seen = []
        async with await runner.client() as c:
            for n in range(40):
                tag = "a" if n % 2 else "b"
                result = await c.call(tokens[tag], HTTPRequest(path=f"/{n}"))
                assert isinstance(result.action, Stop)
                seen.append((tag, result.action.body))
        return seen

    async def scenario() -> list[tuple[str, bytes]]:
        async with await runner.client() as c:
            tokens = {
                tag: await c.prepare_conf([("guide-route-tag", json.dumps({"tag": tag}))], key=tag)
                for tag in ("a", "b")
            }
        runs = await asyncio.gather(*(one_connection(tokens) for _ in range(8)))
        return [pair for run in runs for pair in run]

    seen = asyncio.run(scenario())
    assert len(seen) == 320
    assert all(body == f"{tag}:{tag}".encode() for tag, body in seen), seen[:10]


def _serve(argv: list[str], sock: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        argv, env=runner_env(sock), cwd=str(ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not accepts(sock):
        assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
        time.sleep(0.05)
    return proc


async def _hello(sock: str) -> Stop:
    async with await Client.connect(sock) as c:
        result = await c.call(
            await c.prepare_conf([("hello-world", "")]), HTTPRequest(path="/hello")
        )
    assert isinstance(result.action, Stop)
    return result.action


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "apisix.plugin.runner", "start", "--workers", "2"],
        [sys.executable, str(Path(GUIDE_PLUGINS, "hello_world.py")), "--workers", "2"],
    ],
    ids=["python -m apisix.plugin.runner", "python hello_world.py"],
)
def test_the_guides_command_lines_serve(argv: list[str], tmp_path: Path) -> None:
    sock = f"/tmp/ar-guide-{os.getpid()}.sock"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({}))
    proc = _serve(argv, sock)
    try:
        stop = asyncio.run(_hello(sock))
        if "hello_world.py" in argv[1]:  # the file's own plugin replaced the bundled one
            assert stop.body == b"Hello from Python plugin!"
        else:
            assert stop.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_a_dropped_route_closes_the_sessions_of_its_instance(tmp_path: Path) -> None:
    from runner.conf.confstore import ConfStore
    from runner.conf.sharedstore import SqliteBackend

    path = str(tmp_path / "confs.sqlite3")
    SqliteBackend.create(path, 60.0, 100)

    async def scenario() -> tuple[bool, bool]:
        async with PluginTester(plugin_dirs=[GUIDE_PLUGINS]) as t:
            store = ConfStore(t.plugins, SqliteBackend(path, 60.0, 100), cache_size=1)
            first = store.prepare("a", [("guide-async-auth", '{"auth_url": "http://x/"}')])
            instance = store.get(first).req[0].conf  # type: ignore[union-attr]
            again = store.prepare("a", [("guide-async-auth", '{"auth_url": "http://x/"}')])
            assert again == first and store.get(first).req[0].conf is instance  # type: ignore[union-attr]
            store.prepare("b", [("guide-async-auth", '{"auth_url": "http://y/"}')])  # evicts "a"
            await asyncio.sleep(0.01)
            gone = first not in store._lru
            store.close()  # as the worker does when it stops
            await asyncio.sleep(0.01)
            return instance.session.closed, gone

    closed, gone = asyncio.run(scenario())
    assert closed and gone

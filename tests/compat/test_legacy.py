"""runner.compat: plugins written for apache/apisix-python-plugin-runner run unchanged.

The plugins under test live in ``legacy_plugins/``, written against the old
runner's API (``PluginBase`` with ``name()``, ``config(conf)`` and
``filter(conf, request, response)``), and are loaded from that directory as the
runner loads any plugin directory.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.api.discovery import load_plugins
from runner.api.plugin import ConfError, PluginError, is_async
from runner.compat import ADAPTERS
from runner.compat.legacy import (
    LegacyPlugin,
    LegacyRequest,
    LegacyResponse,
    PluginBase,
    install,
    wrap,
)
from runner.testing import (
    Client,
    HTTPRequest,
    PluginTester,
    Rewrite,
    RunnerError,
    Stop,
    apply_rewrite,
)
from runner.testing.pytest_plugin import RunnerFactory

COMPAT_PLUGINS = str(Path(__file__).resolve().parent / "legacy_plugins")


@pytest.fixture
def tester() -> Iterator[PluginTester]:
    with PluginTester(plugin_dirs=[COMPAT_PLUGINS]) as t:
        yield t


def rewrite_of(action: Stop | Rewrite | None) -> Rewrite:
    assert isinstance(action, Rewrite), action
    return action


def stop_of(action: Stop | Rewrite | None) -> Stop:
    assert isinstance(action, Stop), action
    return action


# --------------------------------------------------------------------------- loading


def test_old_style_files_load_as_plugins(tester: PluginTester) -> None:
    # JsonConfigPlugin, a base class without a name, is not a plugin.
    assert sorted(tester.plugins) == [
        "body-guard", "boom", "dict-style", "echo-body", "header-stop", "inspect",
        "instance-state", "rewrite", "stop", "token-auth",
    ]  # fmt: skip
    assert all(isinstance(p, LegacyPlugin) for p in tester.plugins.values())


def test_only_plugins_that_ask_apisix_run_in_a_thread(tester: PluginTester) -> None:
    threaded = {name for name, p in tester.plugins.items() if is_async(p.filter)}
    assert threaded == {"body-guard", "echo-body"}  # they call get_body / get_var


def test_old_import_paths_resolve_to_the_compat_layer() -> None:
    assert install()
    assert install()  # idempotent
    core = importlib.import_module("apisix.runner.plugin.core")
    request = importlib.import_module("apisix.runner.http.request")
    response = importlib.import_module("apisix.runner.http.response")
    assert core.PluginBase is PluginBase
    assert request.Request is LegacyRequest
    assert response.Response is LegacyResponse
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("apisix.runner.server.handle")  # not provided


def test_a_foreign_apisix_module_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "apisix" or n.startswith("apisix.")]:
        monkeypatch.delitem(sys.modules, name)
    foreign = type(sys)("apisix")
    monkeypatch.setitem(sys.modules, "apisix", foreign)
    assert not install()
    assert sys.modules["apisix"] is foreign


def test_a_plugin_can_be_wrapped_without_a_directory() -> None:
    class Hello(PluginBase):
        def name(self) -> str:
            return "hello"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            response.set_body(f"hello {conf}")

    with PluginTester(wrap(Hello)) as t:
        result = t.call([("hello", "world")], HTTPRequest())
    assert stop_of(result.action).body == b"hello world"  # config() passes the string through


def test_name_errors_are_reported(tmp_path: Path) -> None:
    class Nameless(PluginBase):
        pass

    with pytest.raises(PluginError, match="name\\(\\) returned nothing"):
        wrap(Nameless)

    (tmp_path / "bad.py").write_text(
        "from apisix.runner.plugin.core import PluginBase\n"
        "class Bad(PluginBase):\n"
        "    def name(self):\n"
        "        return 42\n"
    )
    with pytest.raises(PluginError, match="returned 42, not a str"):
        load_plugins([tmp_path], entry_points=False, adapters=ADAPTERS)


def test_name_clash_with_a_native_plugin_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "native.py").write_text(
        "from runner import Plugin\n"
        "class Native(Plugin):\n"
        "    name = 'stop'\n"
        "    def filter(self, conf, request, response):\n"
        "        pass\n"
    )
    with pytest.raises(PluginError, match="two plugins are named 'stop'"):
        load_plugins([tmp_path, Path(COMPAT_PLUGINS)], entry_points=False, adapters=ADAPTERS)


# --------------------------------------------------------------------------- the old examples


def test_stop_example_answers_the_client(tester: PluginTester) -> None:
    stop = stop_of(tester.call([("stop", "")], HTTPRequest()).action)
    assert stop.status == 201
    assert stop.headers == [("X-Resp-A6-Runner", "Python")]
    assert stop.body == b"Hello, Python Runner of APISIX"


def test_rewrite_example_sends_only_its_changes(tester: PluginTester) -> None:
    req = HTTPRequest(
        path="/hello",
        headers=[("host", "example.com"), ("cookie", "a=1"), ("cookie", "b=2")],
        args=[("flag", None), ("tag", "x"), ("tag", "y")],
    )
    rw = rewrite_of(tester.call([("rewrite", "")], req).action)
    assert rw.path == "/a6/python/runner"
    assert rw.headers == [("x-resp-a6-runner", "Python")]
    assert rw.args == [("a6_runner", "Python")]
    upstream = apply_rewrite(req, rw)
    # What the old runner collapsed or choked on passes through untouched.
    assert [v for n, v in upstream.headers if n == "cookie"] == ["a=1", "b=2"]
    assert ("flag", None) in upstream.args
    assert [v for n, v in upstream.args if n == "tag"] == ["x", "y"]


def test_a_path_set_to_itself_is_not_sent(tester: PluginTester) -> None:
    req = HTTPRequest(path="/a6/python/runner", headers=[("x-other", "1")])
    rw = rewrite_of(tester.call([("rewrite", "")], req).action)
    assert rw.path is None
    # What the plugin set explicitly goes out (as from a native plugin), nothing else.
    assert rw.headers == [("x-resp-a6-runner", "Python")]
    assert rw.args == [("a6_runner", "Python")]


# --------------------------------------------------------------------------- getters


def test_request_getters(tester: PluginTester) -> None:
    req = HTTPRequest(
        method="POST",
        path="/p",
        headers=[("host", "h.example"), ("cookie", "a"), ("cookie", "b")],
        args=[("flag", None), ("page", "1"), ("page", "3")],
        src_ip="2001:db8::1",
        id=7,
    )
    report = json.loads(stop_of(tester.call([("inspect", "raw conf")], req).action).body)
    assert report == {
        "uri": "/p",
        "method": "POST",
        "remote_addr": "2001:db8::1",
        "conf_token": 1,
        "id": 7,
        "headers": {"host": "h.example", "cookie": "a"},  # one value per name: the first
        "args": {"flag": "", "page": "1"},  # an arg without '=' reads as ""
        "host": "h.example",
        "Host": "h.example",  # header names are case-insensitive
        "missing_header": None,
        "page": "1",
        "flag": "",
        "missing_arg": None,
        "conf": "raw conf",  # config() gets the raw string
    }


def test_get_var_and_get_body_ask_apisix_from_a_thread(tester: PluginTester) -> None:
    body = "grüße, 世界".encode()
    req = HTTPRequest(body=body, vars={"remote_addr": "10.0.0.9"})
    result = tester.call([("body-guard", '{"deny": "forbidden"}')], req)
    rw = rewrite_of(result.action)
    assert rw.headers == [("x-body-chars", "9"), ("x-client", "10.0.0.9")]  # characters, UTF-8
    assert result.extra_info == [("req_body", None), ("var", "remote_addr")]


def test_get_body_text_goes_back_out_as_utf8(tester: PluginTester) -> None:
    req = HTTPRequest(body="forbidden: ünïcode".encode(), vars={"remote_addr": "10.0.0.9"})
    stop = stop_of(tester.call([("body-guard", '{"deny": "forbidden"}')], req).action)
    assert stop.status == 403
    assert stop.body == "10.0.0.9 sent a forbidden word: forbidden: ünïcode".encode()


def test_an_unset_var_reads_as_empty_text(tester: PluginTester) -> None:
    result = tester.call([("body-guard", '{"deny": "x", "var": "nope"}')], HTTPRequest())
    assert ("x-client", "unknown") in rewrite_of(result.action).headers
    assert result.extra_info == [("req_body", None), ("var", "nope")]


def test_binary_body_round_trips(tester: PluginTester) -> None:
    body = bytes(range(256))
    stop = stop_of(tester.call([("echo-body", "")], HTTPRequest(body=body)).action)
    assert stop.body == body  # not one chr() per byte, and not "replace"d


def test_an_inline_plugin_that_asks_apisix_gets_a_clear_error() -> None:
    class Sneaky(PluginBase):
        run_in_thread = False  # as if the source scan had missed the call

        def name(self) -> str:
            return "sneaky"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            request.get_var("remote_addr")

    with (
        PluginTester(wrap(Sneaky)) as t,
        pytest.raises(RuntimeError, match="set `run_in_thread = True`"),
    ):
        t.call([("sneaky", "")], HTTPRequest())


def test_run_in_thread_overrides_the_guess() -> None:
    class Blocking(PluginBase):
        run_in_thread = True  # e.g. it makes blocking HTTP calls
        seen_thread = ""

        def name(self) -> str:
            return "blocking"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            type(self).seen_thread = threading.current_thread().name
            request.set_header("X-A", "1")

    plugin = wrap(Blocking)
    assert plugin.run_in_thread and is_async(plugin().filter)
    with PluginTester(plugin) as t:
        rw = rewrite_of(t.call([("blocking", "")], HTTPRequest()).action)
    assert rw.headers == [("x-a", "1")]
    assert Blocking.seen_thread != threading.main_thread().name


# --------------------------------------------------------------------------- setters


def test_in_place_edits_of_the_handed_out_dicts_go_upstream(tester: PluginTester) -> None:
    req = HTTPRequest(
        headers=[("cookie", "a"), ("cookie", "b"), ("host", "h")],
        args=[("flag", None), ("page", "1")],
    )
    rw = rewrite_of(tester.call([("dict-style", "")], req).action)
    # set_args(get_args()) re-sent "flag" and "page" unchanged: only page changed.
    assert rw.headers == [("x-added", "1")]
    assert rw.args == [("page", "2")]
    upstream = apply_rewrite(req, rw)
    assert ("flag", None) in upstream.args
    assert [v for n, v in upstream.headers if n == "cookie"] == ["a", "b"]


def test_same_plugin_twice_in_a_route_runs_twice(tester: PluginTester) -> None:
    conf = [
        ("dict-style", '{"header": "x-first", "page": "5"}'),
        ("dict-style", '{"header": "x-second", "value": "2"}'),
    ]
    rw = rewrite_of(tester.call(conf, HTTPRequest()).action)
    assert rw.headers == [("x-first", "1"), ("x-second", "2")]
    assert rw.args == [("page", "2")]  # the second one set it back


def test_request_setters_follow_the_old_rules() -> None:
    calls: list[Any] = []

    class Setters(PluginBase):
        def name(self) -> str:
            return "setters"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            calls.extend(
                [
                    request.set_header("", "x"),  # no name
                    request.set_header("x-empty", ""),  # no value: the old API cannot delete
                    request.set_header("X-Num", 5),  # type: ignore[arg-type]  # str()-ed
                    request.set_arg("q", "1"),
                    request.set_uri("relative"),  # must start with '/'
                    request.set_uri("/a?b=1"),  # the query belongs in set_arg
                    request.set_uri("/new"),
                    request.get_uri(),
                    request.set_headers({}),
                    request.set_headers({"X-Num": "5", "X-B": "2", "x-none": None}),  # type: ignore[dict-item]
                    request.get_header("x-b"),
                    request.get_headers()["X-Num"],
                    request.set_method("BREW"),
                    request.set_method("put"),
                    request.get_method(),
                    request.set_remote_addr("1.1.1.1"),
                    request.get_remote_addr(),
                    request.set_id(99),
                    request.get_id(),
                    request.set_conf_token(5),
                    request.get_conf_token(),
                    request.set_var("answer", "42"),
                    request.get_var("answer"),  # cached locally: no ExtraInfo
                    request.set_config("k", "v"),
                    request.get_config("k"),
                    request.get_configs(),
                    request.set_body("new body"),
                    request.get_body(),  # what was set, no ExtraInfo
                ]
            )

    with PluginTester(wrap(Setters)) as t:
        result = t.call([("setters", "")], HTTPRequest(path="/old", id=3))
    assert calls == [
        False, False, True, True, False, False, True, "/new", False, True, "2", "5",
        False, True, "put", True, "1.1.1.1", True, 99, True, 5, True, "42", True, "v",
        {"k": "v"}, True, "new body",
    ]  # fmt: skip
    assert result.extra_info == []
    assert result.id == 3  # the local set_id never reaches the reply
    rw = rewrite_of(result.action)
    assert rw.path == "/new"
    assert rw.headers == [("x-num", "5"), ("x-b", "2")]
    assert rw.args == [("q", "1")]
    assert rw.body == b"new body"  # sent upstream (APISIX >= 3.6)


def test_set_uri_with_a_query_is_refused_with_a_log_line(
    tester: PluginTester, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    class QueryInPath(PluginBase):
        def name(self) -> str:
            return "query-in-path"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            request.set_uri("/x?y=1")

    from runner.compat import legacy
    from runner.ops.logs import LogLimiter

    # A fresh limiter: an earlier test may have logged this kind already.
    monkeypatch.setattr(legacy, "_limited", LogLimiter(legacy.log))
    with caplog.at_level(logging.WARNING, "runner.compat"), PluginTester(wrap(QueryInPath)) as t:
        for _ in range(3):
            assert t.call([("query-in-path", "")], HTTPRequest()).action is None
    # Once, not once per request: repeats are summed up later.
    assert caplog.text.count("put the query in set_arg()") == 1


# --------------------------------------------------------------------------- response and Stop


def test_a_response_header_alone_stops_with_200(tester: PluginTester) -> None:
    stop = stop_of(tester.call([("header-stop", "")], HTTPRequest()).action)
    assert (stop.status, stop.headers, stop.body) == (200, [("X-Blocked", "yes")], b"")


def test_a_stop_ends_the_chain(tester: PluginTester) -> None:
    result = tester.call([("header-stop", ""), ("rewrite", "")], HTTPRequest())
    assert stop_of(result.action).headers == [("X-Blocked", "yes")]
    # A plugin that does not stop lets the next one run; its rewrite is dropped
    # when a later plugin answers (as in the old runner).
    result = tester.call([("rewrite", ""), ("stop", "")], HTTPRequest())
    assert stop_of(result.action).status == 201


def test_response_setters_follow_the_old_rules() -> None:
    seen: list[Any] = []

    class Answer(PluginBase):
        def name(self) -> str:
            return "answer"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            seen.extend(
                [
                    response.changed(),
                    response.get_status_code(),  # 200 when unset
                    response.get_body(),
                    response.get_req_id(),
                    response.set_status_code(0),
                    response.set_status_code(99),
                    response.set_status_code(600),  # the old check let these through
                    response.set_header("X-A", ""),
                    response.set_body(""),
                    response.changed(),
                    response.set_status_code(418),
                    response.set_headers({"X-A": "1"}),
                    response.get_header("X-A"),
                    response.set_body("short and stout"),
                    response.get_body(),
                    response.changed(),
                ]
            )
            response.get_headers()["X-B"] = "2"  # an in-place edit counts too

    with PluginTester(wrap(Answer)) as t:
        stop = stop_of(t.call([("answer", "")], HTTPRequest(id=12)).action)
    assert seen == [
        False, 200, "", 12, False, False, False, False, False, False, True, True, "1", True,
        "short and stout", True,
    ]  # fmt: skip
    assert (stop.status, stop.body) == (418, b"short and stout")
    assert stop.headers == [("X-A", "1"), ("X-B", "2")]


def test_native_response_headers_before_a_legacy_plugin_do_not_stop_it() -> None:
    from runner import Plugin, Request, Response

    class Native(Plugin):
        name = "native"

        def filter(self, conf: str, request: Request, response: Response) -> None:
            response.headers["X-Served-By"] = "py"  # rides along with the upstream's answer

    class Quiet(PluginBase):
        def name(self) -> str:
            return "quiet"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            request.set_header("X-Q", "1")

    with PluginTester(Native, wrap(Quiet)) as t:
        rw = rewrite_of(t.call([("native", ""), ("quiet", "")], HTTPRequest()).action)
    assert rw.headers == [("x-q", "1")]
    assert rw.resp_headers == [("X-Served-By", "py")]


# --------------------------------------------------------------------------- config and instances


def test_config_runs_once_per_route_and_its_state_stays_with_the_route(
    tester: PluginTester,
) -> None:
    legacy = tester.plugins["token-auth"]
    assert isinstance(legacy, LegacyPlugin)
    cls = legacy.legacy_class
    cls.config_calls = 0
    alice = tester.prepare([("token-auth", '{"token": "a", "user": "alice"}')], key="r1")
    bob = tester.prepare([("token-auth", '{"token": "b", "user": "bob"}')], key="r2")
    for _ in range(3):
        ok = tester.call(alice, HTTPRequest(headers=[("authorization", "Bearer a")]))
        assert rewrite_of(ok.action).headers == [("x-user", "alice")]
        denied = tester.call(bob, HTTPRequest(headers=[("authorization", "Bearer a")]))
        stop = stop_of(denied.action)
        assert (stop.status, json.loads(stop.body)) == (401, {"error": "bad token"})
        assert stop.headers == [("WWW-Authenticate", "Bearer")]
    assert cls.config_calls == 2  # the old runner called it on every request


def test_a_config_error_fails_prepare_conf(tester: PluginTester) -> None:
    with pytest.raises(ConfError, match=r"conf\[0\] plugin 'token-auth': config\(\) raised"):
        tester.prepare([("token-auth", "not json")])


def test_state_set_in_filter_is_per_request(tester: PluginTester) -> None:
    chain = tester.prepare([("instance-state", "")])
    for _ in range(3):
        rw = rewrite_of(tester.call(chain, HTTPRequest()).action)
        assert rw.headers == [("x-calls", "1")]


def test_a_raising_filter_raises_in_tests(tester: PluginTester) -> None:
    with pytest.raises(ValueError, match="broken old-style plugin"):
        tester.call([("boom", "")], HTTPRequest())


# --------------------------------------------------------------------------- the thread bridge


def test_a_cancelled_call_releases_the_waiting_thread() -> None:
    class Waits(PluginBase):
        def name(self) -> str:
            return "waits"

        def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> None:
            request.get_var("never_answered")

    outcome: list[BaseException] = []

    async def never(info_type: int, name: str | None) -> bytes | None:
        await asyncio.Event().wait()  # APISIX never answers
        return None

    async def scenario() -> None:
        from runner import Request, Response
        from runner.proto import ReqCallView
        from runner.testing import build_req_call

        plugin = wrap(Waits)()
        conf = plugin.parse_conf("")
        request = Request(ReqCallView(memoryview(build_req_call(1, HTTPRequest()))), never)
        original_run = plugin.run

        def run(*args: Any) -> None:
            try:
                original_run(*args)
            except BaseException as exc:
                outcome.append(exc)
                raise

        plugin.run = run  # type: ignore[method-assign,assignment]
        task = asyncio.ensure_future(plugin.filter(conf, request, Response()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the thread notices the cancellation
            if outcome:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert outcome and type(outcome[0]).__name__ == "CancelledError"


# --------------------------------------------------------------------------- a real runner


def test_old_plugins_in_a_real_runner(runner_factory: RunnerFactory) -> None:
    # The old examples are named like the bundled stop/rewrite plugins.
    running = runner_factory(plugins_dir=COMPAT_PLUGINS, config={"bundled_plugins": False})

    async def scenario() -> None:
        async with await running.client() as apisix:
            await check_old_plugins(apisix)

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def check_old_plugins(apisix: Client) -> None:
    stop = await apisix.prepare_conf([("stop", "")], key="route#stop")
    result = await apisix.call(stop, HTTPRequest(id=0))
    assert stop_of(result.action).status == 201
    assert result.id == 0  # the old runner could not answer request id 0

    rewrite = await apisix.prepare_conf([("rewrite", ""), ("dict-style", "")], key="route#rw")
    req = HTTPRequest(id=5, headers=[("cookie", "a"), ("cookie", "b")], args=[("flag", None)])
    rw = rewrite_of((await apisix.call(rewrite, req)).action)
    assert rw.path == "/a6/python/runner"
    assert rw.headers == [("x-resp-a6-runner", "Python"), ("x-added", "1")]
    assert rw.args == [("a6_runner", "Python"), ("page", "2")]

    # ExtraInfo from a sync filter, over the real connection.
    guard = await apisix.prepare_conf([("body-guard", '{"deny": "nope"}')], key="route#g")
    req = HTTPRequest(id=6, body="héllo".encode(), vars={"remote_addr": "192.0.2.1"})
    result = await apisix.call(guard, req)
    assert rewrite_of(result.action).headers == [("x-body-chars", "5"), ("x-client", "192.0.2.1")]
    assert result.extra_info == [("req_body", None), ("var", "remote_addr")]

    # A raising plugin is a type-0 error frame, and the connection carries on.
    boom = await apisix.prepare_conf([("boom", "")], key="route#boom")
    with pytest.raises(RunnerError) as err:
        await apisix.call(boom, HTTPRequest(id=7))
    assert err.value.name == "SERVICE_UNAVAILABLE"

    # An unknown token is CONF_TOKEN_NOT_FOUND (APISIX re-prepares), not a pass.
    with pytest.raises(RunnerError) as err:
        await apisix.call(stop + 1_000_000, HTTPRequest(id=8))
    assert err.value.name == "CONF_TOKEN_NOT_FOUND"

    result = await apisix.call(stop, HTTPRequest(id=9))
    assert stop_of(result.action).body == b"Hello, Python Runner of APISIX"

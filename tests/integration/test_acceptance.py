"""Issue acceptance: the bundled stop / rewrite / hello-world plugins, unknown
tokens, and PrepareConf rejections, against a real runner process."""

from __future__ import annotations

import json

import pytest

from runner.testing import HTTPRequest, Rewrite, RunnerError, Stop, apply_rewrite
from runner.testing.pytest_plugin import RunningRunner

from .conftest import arun, log_since, normalized, wait_for_log

CONF_TOKEN_NOT_FOUND = 2
BAD_REQUEST = 0


def test_stop_with_body(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("stop", '{"body":"hello"}')])
            result = await client.call(token, HTTPRequest(path="/any"))
            assert result.action == Stop(status=200, headers=[], body=b"hello")
            assert result.extra_info == []

    arun(scenario())


def test_stop_with_status_and_headers(shared_runner: RunningRunner) -> None:
    conf = json.dumps({"status": 405, "headers": {"X-Resp": "cat", "X-Req": "dog"}, "body": "cat"})

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("stop", conf)])
            result = await client.call(token, HTTPRequest(id=7))
            assert isinstance(result.action, Stop)
            assert result.id == 7
            assert result.action.status == 405
            assert result.action.body == b"cat"
            assert normalized(result.action.headers) == [("x-req", "dog"), ("x-resp", "cat")]

    arun(scenario())


def test_rewrite_exact_changes(shared_runner: RunningRunner) -> None:
    conf = json.dumps(
        {
            "path": "/uri",
            "headers": {"X-Change": "bar", "X-Add": "new", "X-Delete": None},
            "args": {"a": "1", "d": None},
            "resp_headers": {"X-Resp": "r"},
        }
    )
    request = HTTPRequest(
        method="GET",
        path="/hello",
        args=[("a", "0"), ("c", "keep"), ("d", "gone")],
        headers=[("host", "localhost"), ("x-change", "foo"), ("x-delete", "x"), ("x-keep", "k")],
    )

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("rewrite", conf)])
            result = await client.call(token, request)
            rw = result.action
            assert isinstance(rw, Rewrite)
            assert rw.path == "/uri"
            assert rw.body is None
            assert normalized(rw.headers) == [
                ("x-add", "new"),
                ("x-change", "bar"),
                ("x-delete", None),
            ]
            assert rw.args == [("a", "1"), ("d", None)]
            assert normalized(rw.resp_headers) == [("x-resp", "r")]
            assert result.extra_info == []

            upstream = apply_rewrite(request, rw)
            assert upstream.path == "/uri"
            assert sorted(upstream.headers) == [
                ("host", "localhost"),
                ("x-add", "new"),
                ("x-change", "bar"),
                ("x-keep", "k"),
            ]
            assert sorted(upstream.args) == [("a", "1"), ("c", "keep")]

    arun(scenario())


def test_rewrite_headers_only_sends_nothing_else(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("rewrite", '{"headers": {"X-Api": "2"}}')])
            result = await client.call(
                token, HTTPRequest(path="/p", args=[("q", "1")], headers=[("x-other", "o")])
            )
            rw = result.action
            assert isinstance(rw, Rewrite)
            assert rw.path is None
            assert normalized(rw.headers) == [("x-api", "2")]
            assert rw.args == []
            assert rw.resp_headers == []
            assert rw.body is None

    arun(scenario())


def test_rewrite_path_only(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("rewrite", '{"path": "/v2/users"}')])
            result = await client.call(token, HTTPRequest(path="/users", args=[("c", "foo")]))
            assert result.action == Rewrite(
                path="/v2/users", headers=[], args=[], resp_headers=[], body=None
            )

    arun(scenario())


def test_rewrite_empty_config_is_no_action(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("rewrite", "{}")])
            result = await client.call(token, HTTPRequest(path="/p", headers=[("x-a", "1")]))
            assert result.action is None

    arun(scenario())


def test_unknown_token_then_connection_still_works(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("stop", '{"body":"ok"}')])
            unknown = token + 1_000_003 if token < 0x7FFFFFFF else 12345
            with pytest.raises(RunnerError) as err:
                await client.call(unknown, HTTPRequest())
            assert err.value.code == CONF_TOKEN_NOT_FOUND
            with pytest.raises(RunnerError) as err:
                await client.resp_call(unknown, 200, [("Content-Type", "text/plain")])
            assert err.value.code == CONF_TOKEN_NOT_FOUND
            # Same connection, next call served normally.
            result = await client.call(token, HTTPRequest())
            assert result.action == Stop(status=200, headers=[], body=b"ok")

    arun(scenario())


def test_unknown_plugin_is_bad_request_and_logged(shared_runner: RunningRunner) -> None:
    key = "route#4711#ext-plugin-pre-req#unknown-plugin"
    offset = len(shared_runner.log_text())

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            with pytest.raises(RunnerError) as err:
                await client.prepare_conf([("stop", "{}"), ("no-such-plugin", "{}")], key=key)
            assert err.value.code == BAD_REQUEST
            # The connection keeps working.
            token = await client.prepare_conf([("stop", '{"body":"x"}')])
            assert token != 0

    arun(scenario())
    text = wait_for_log(shared_runner, key, offset)
    lines = [line for line in text.splitlines() if key in line]
    assert len(lines) == 1, text
    assert "no-such-plugin" in lines[0]


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ('{"status": "x"}', "status"),
        ('{"status": 99}', "status"),
        ('{"body": 5}', "body"),
        ('{"bogus": 1}', "bogus"),
    ],
)
def test_bad_stop_config_is_bad_request_and_logged(
    shared_runner: RunningRunner, conf: str, field: str
) -> None:
    key = f"route#bad-{field}-{len(conf)}#ext-plugin-pre-req#1"
    offset = len(shared_runner.log_text())

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            with pytest.raises(RunnerError) as err:
                await client.prepare_conf([("stop", conf)], key=key)
            assert err.value.code == BAD_REQUEST

    arun(scenario())
    text = wait_for_log(shared_runner, key, offset)
    lines = [line for line in text.splitlines() if key in line]
    assert len(lines) == 1, text
    assert "'stop'" in lines[0] or '"stop"' in lines[0], lines[0]
    assert field in lines[0], lines[0]


def test_bad_json_config_is_bad_request(shared_runner: RunningRunner) -> None:
    key = "route#bad-json#ext-plugin-pre-req#1"
    offset = len(shared_runner.log_text())

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            with pytest.raises(RunnerError) as err:
                await client.prepare_conf([("rewrite", "{not json")], key=key)
            assert err.value.code == BAD_REQUEST

    arun(scenario())
    text = wait_for_log(shared_runner, key, offset)
    assert "rewrite" in text
    assert log_since(shared_runner, offset).count(key) == 1


def test_hello_world(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("hello-world", "{}")])
            hello = await client.call(token, HTTPRequest(path="/hello"))
            assert isinstance(hello.action, Stop)
            assert hello.action.status == 200
            assert hello.action.body == b"Hello from Python plugin!"
            assert normalized(hello.action.headers) == [("x-python-plugin", "hello-world")]

            other = await client.call(token, HTTPRequest(path="/other", args=[("a", "b")]))
            rw = other.action
            assert isinstance(rw, Rewrite)
            assert rw.path is None
            assert rw.headers == []
            assert rw.args == []
            assert rw.body is None
            assert normalized(rw.resp_headers) == [("x-python-plugin", "hello-world")]

    arun(scenario())


def test_request_body_rewrite(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("set-body", "abc\n")])
            request = HTTPRequest(method="POST", path="/echo", body=b"original")
            result = await client.call(token, request)
            assert result.action == Rewrite(
                path=None, headers=[], args=[], resp_headers=[], body=b"abc\n"
            )
            # Setting the body does not ask APISIX for the old one.
            assert result.extra_info == []
            assert apply_rewrite(request, result.action).body == b"abc\n"

    arun(scenario())


def test_resp_headers_while_proxying(shared_runner: RunningRunner) -> None:
    conf = json.dumps({"resp_headers": {"X-Resp": "cat", "X-Req": "dog"}})

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("rewrite", conf)])
            result = await client.call(token, HTTPRequest(path="/hello"))
            rw = result.action
            assert isinstance(rw, Rewrite)
            assert rw.path is None
            assert rw.headers == []
            assert rw.args == []
            assert rw.body is None
            assert normalized(rw.resp_headers) == [("x-req", "dog"), ("x-resp", "cat")]

    arun(scenario())


def test_duplicate_resp_headers_are_multi_valued(shared_runner: RunningRunner) -> None:
    """http-req-call.t TEST 25: duplicate resp_headers reach the client as two values."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("append-header", "one"), ("append-header", "two")])
            result = await client.call(token, HTTPRequest())
            rw = result.action
            assert isinstance(rw, Rewrite)
            assert normalized(rw.resp_headers) == [("x-order", "one"), ("x-order", "two")]
            assert (rw.path, rw.headers, rw.args, rw.body) == (None, [], [], None)

    arun(scenario())

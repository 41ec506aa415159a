"""header-rewrite: unit level (PluginTester) and against a real runner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from runner import ConfError, Request, Response
from runner.bundled_plugins.header_rewrite import HeaderRewrite
from runner.testing import HTTPRequest, Rewrite, RunnerError, apply_rewrite
from runner.testing.plugintest import PluginTester
from runner.testing.pytest_plugin import RunnerFactory

NAME = "header-rewrite"


@pytest.fixture(scope="module")
def tester() -> Iterator[PluginTester]:
    with PluginTester(HeaderRewrite) as t:
        yield t


def upstream_of(tester: PluginTester, conf: dict[str, Any], request: HTTPRequest) -> HTTPRequest:
    result = tester.call([(NAME, conf)], request)
    assert isinstance(result.action, Rewrite), result.action
    assert result.extra_info == []
    return apply_rewrite(request, result.action)


def test_add_replaces_every_value_and_remove_deletes_ignoring_case(tester: PluginTester) -> None:
    request = HTTPRequest(
        headers=[("x-a", "old1"), ("x-a", "old2"), ("x-debug", "1"), ("cookie", "c"), ("k", "v")]
    )
    conf = {"add_headers": {"X-A": "new", "X-New": "n"}, "remove_headers": ["X-Debug", "COOKIE"]}
    upstream = upstream_of(tester, conf, request)
    assert sorted(upstream.headers) == [("k", "v"), ("x-a", "new"), ("x-new", "n")]


def test_removing_an_absent_header_is_harmless(tester: PluginTester) -> None:
    upstream = upstream_of(
        tester, {"remove_headers": ["x-none"]}, HTTPRequest(headers=[("a", "1")])
    )
    assert upstream.headers == [("a", "1")]


def test_empty_config_changes_nothing(tester: PluginTester) -> None:
    for conf in ("", "{}"):
        assert tester.call([(NAME, conf)], HTTPRequest(headers=[("a", "1")])).action is None


class ExplodingSource:
    """A request whose headers fail the test if anything decodes them."""

    def __init__(self) -> None:
        self.id = 7
        self.src_ip = b"\x7f\x00\x00\x01"
        self.method = "GET"
        self.path = "/"
        self.args: list[tuple[str, str | None]] = []

    @property
    def headers(self) -> list[tuple[str, str | None]]:
        raise AssertionError("header-rewrite decoded the request's headers")


def test_filter_never_decodes_the_request_headers() -> None:
    async def never_asked(info_type: int, name: str | None) -> bytes | None:
        raise AssertionError("no ExtraInfo expected")

    plugin = HeaderRewrite()
    conf = plugin.parse_conf('{"add_headers": {"X-A": "1"}, "remove_headers": ["X-B"]}')
    request = Request(ExplodingSource(), never_asked)
    plugin.filter(conf, request, Response())
    assert request.headers.rewrite_entries() == [("x-b", None), ("x-a", "1")]


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"add_headers": {"bad name": "1"}}, "add_headers"),
        ({"add_headers": {"X-A": "a\r\nX-Injected: 1"}}, "add_headers"),
        ({"add_headers": {"X-A": "1", "x-a": "2"}}, "add_headers"),
        ({"remove_headers": ["ok", "bad:name"]}, "remove_headers"),
        ({"add_headers": {"X-A": "1"}, "remove_headers": ["x-a"]}, "remove_headers"),
        ({"add_headers": {"X-A": 1}}, "add_headers"),
        ({"remove_headers": "X-A"}, "remove_headers"),
        ({"add_header": {}}, "add_header"),
    ],
)
def test_bad_config_fails_naming_the_field(
    tester: PluginTester, conf: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfError, match=field):
        tester.prepare([(NAME, conf)])


def test_real_runner_rewrites_and_rejects_bad_config(runner_factory: RunnerFactory) -> None:
    running = runner_factory()
    request = HTTPRequest(headers=[("x-debug", "1"), ("x-a", "old")])

    async def scenario() -> None:
        async with await running.client() as apisix:
            conf = '{"add_headers": {"X-A": "new"}, "remove_headers": ["X-Debug"]}'
            token = await apisix.prepare_conf([(NAME, conf)])
            result = await apisix.call(token, request)
            assert isinstance(result.action, Rewrite)
            assert apply_rewrite(request, result.action).headers == [("x-a", "new")]
            with pytest.raises(RunnerError):
                await apisix.prepare_conf([(NAME, '{"add_headers": {"a b": "1"}}')])

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert "add_headers: 'a b' is not a valid header name" in running.log_text()


def test_each_call_gets_its_own_id_when_the_rewrite_repeats(
    runner_factory: RunnerFactory,
) -> None:
    # The route's Rewrite is the same on every call, so the runner answers it
    # from the route's last one (runner/proto/replymemo.py): each reply must
    # still carry its own call's id, on each of two routes taken in turn.
    running = runner_factory()
    confs = {
        "a": '{"add_headers": {"X-Route": "a"}, "remove_headers": ["X-Debug"]}',
        "b": '{"add_headers": {"X-Route": "b", "X-B": "1"}}',
    }

    async def scenario() -> None:
        async with await running.client() as apisix:
            tokens = {
                name: await apisix.prepare_conf([(NAME, conf)], key=f"route#{name}")
                for name, conf in confs.items()
            }
            for req_id in range(1, 41):
                name = "ab"[req_id % 3 == 0]
                request = HTTPRequest(id=req_id * 7919, headers=[("x-debug", "1")])
                result = await apisix.call(tokens[name], request)
                assert result.id == req_id * 7919
                assert isinstance(result.action, Rewrite)
                upstream = dict(apply_rewrite(request, result.action).headers)
                expected = (
                    {"x-route": "a"}
                    if name == "a"
                    else {"x-debug": "1", "x-route": "b", "x-b": "1"}
                )
                assert upstream == expected, (req_id, upstream)

    asyncio.run(asyncio.wait_for(scenario(), 20))

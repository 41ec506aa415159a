"""docs/protocol.md §12: the runner-side halves of APISIX's own conformance
scenarios (http-req-call.t, sanity.t), plus the PrepareConf rules of §4.1."""

from __future__ import annotations

import json
from typing import Any

from runner.testing import HTTPRequest, Rewrite, Stop
from runner.testing.pytest_plugin import RunningRunner

from .conftest import arun, normalized

TEST3_ARGS: list[tuple[str, str | None]] = [("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)]
TEST3_HEADERS = [
    ("connection", "close"),
    ("host", "localhost"),
    ("x-req", "foo"),
    ("x-req", "bar"),
    ("x-resp", "cat"),
]


def echo_of(result_action: Stop | Rewrite | None) -> dict[str, Any]:
    assert isinstance(result_action, Stop), result_action
    assert result_action.status == 200
    seen: dict[str, Any] = json.loads(result_action.body)
    return seen


def test_http_req_call_test3_input(shared_runner: RunningRunner) -> None:
    """http-req-call.t TEST 3: PUT /hello?xx=y&xx=z&&y=&&z, repeated X-Req, id 0."""
    request = HTTPRequest(
        method="PUT",
        path="/hello",
        args=TEST3_ARGS,
        headers=TEST3_HEADERS,
        src_ip="127.0.0.1",
        id=0,
    )

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("echo", "bar")])
            result = await client.call(token, request)
            assert result.id == 0
            assert result.extra_info == []
            seen = echo_of(result.action)
            assert seen == {
                "conf": "bar",
                "id": 0,
                "conf_token": token,
                "method": "PUT",
                "path": "/hello",
                "src_ip": "127.0.0.1",
                "args": [["xx", "y"], ["xx", "z"], ["y", ""], ["z", None]],
                "headers": [list(h) for h in TEST3_HEADERS],
            }

    arun(scenario())


def test_every_method_and_large_id(shared_runner: RunningRunner) -> None:
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "OPTIONS"]
    methods += ["PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE"]

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("echo", "")])
            for i, method in enumerate(methods):
                req_id = (7 << 22) + (1 << 22) - 1 - i  # worker 7, counter near the wrap
                result = await client.call(token, HTTPRequest(method=method, id=req_id))
                assert result.id == req_id
                seen = echo_of(result.action)
                assert seen["method"] == method
                assert seen["id"] == req_id

    arun(scenario())


def test_ipv6_src_ip(shared_runner: RunningRunner) -> None:
    """http-req-call.t TEST 4: a 16-byte src_ip is ::1."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("echo", "")])
            seen = echo_of((await client.call(token, HTTPRequest(src_ip="::1"))).action)
            assert seen["src_ip"] == "::1"
            seen = echo_of((await client.call(token, HTTPRequest(src_ip="2001:db8::7"))).action)
            assert seen["src_ip"] == "2001:db8::7"
            seen = echo_of((await client.call(token, HTTPRequest(src_ip="10.0.0.255"))).action)
            assert seen["src_ip"] == "10.0.0.255"

    arun(scenario())


def test_no_args_no_headers(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("echo", "")])
            seen = echo_of((await client.call(token, HTTPRequest(path="/"))).action)
            assert seen["args"] == []
            assert seen["headers"] == []
            assert seen["path"] == "/"
            assert seen["method"] == "GET"

    arun(scenario())


def test_non_ascii_path_args_headers(shared_runner: RunningRunner) -> None:
    request = HTTPRequest(
        path="/caf\u00e9/\u6f22\u5b57",
        args=[("q", "\u00fcber"), ("empty", "")],
        headers=[("x-name", "J\u00fcrgen")],
    )

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("echo", "")])
            seen = echo_of((await client.call(token, request)).action)
            assert seen["path"] == "/caf\u00e9/\u6f22\u5b57"
            assert seen["args"] == [["q", "\u00fcber"], ["empty", ""]]
            assert seen["headers"] == [["x-name", "J\u00fcrgen"]]

    arun(scenario())


def test_empty_conf_gives_token_and_no_action(shared_runner: RunningRunner) -> None:
    """sanity.t TESTs 1-2: a route without conf (absent) or with an empty list."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            absent = await client.prepare_conf(None, key="route#1#ext-plugin-pre-req#empty-a")
            empty = await client.prepare_conf([], key="route#1#ext-plugin-pre-req#empty-b")
            assert absent != 0
            assert empty != 0
            assert absent != empty
            for token in (absent, empty):
                result = await client.call(token, HTTPRequest(path="/hello", id=3))
                assert result.action is None
                assert result.id == 3
                assert result.extra_info == []
                resp = await client.resp_call(
                    token, 200, [("Content-Type", "text/plain"), ("X-A", "1")], id=4
                )
                assert resp.id == 4
                assert resp.status == 0
                assert resp.body is None
                assert normalized(resp.headers) == [("content-type", "text/plain"), ("x-a", "1")]

    arun(scenario())


def test_conf_order_kept_and_duplicates_kept(shared_runner: RunningRunner) -> None:
    """sanity.t TESTs 9-10: confs arrive in order; a plugin may appear twice."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                [("append-header", "first"), ("append-header", "second"), ("append-header", "3")]
            )
            rw = (await client.call(token, HTTPRequest())).action
            assert isinstance(rw, Rewrite)
            assert normalized(rw.resp_headers) == [
                ("x-order", "first"),
                ("x-order", "second"),
                ("x-order", "3"),
            ]

            reversed_token = await client.prepare_conf(
                [("append-header", "b"), ("append-header", "a")],
                key="route#2#ext-plugin-pre-req#1",
            )
            rw = (await client.call(reversed_token, HTTPRequest())).action
            assert isinstance(rw, Rewrite)
            assert normalized(rw.resp_headers) == [("x-order", "b"), ("x-order", "a")]

    arun(scenario())


def test_stop_ends_the_chain(shared_runner: RunningRunner) -> None:
    """Plugins run in conf order; a Stop skips the rest and keeps earlier headers."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                [
                    ("append-header", "1"),
                    ("stop", '{"status": 403, "body": "no"}'),
                    ("append-header", "2"),
                ],
                key="route#stop-chain#ext-plugin-pre-req#1",
            )
            result = await client.call(token, HTTPRequest())
            assert isinstance(result.action, Stop)
            assert result.action.status == 403
            assert result.action.body == b"no"
            assert normalized(result.action.headers) == [("x-order", "1")]

    arun(scenario())


def test_same_key_same_token_different_keys_different_tokens(
    shared_runner: RunningRunner,
) -> None:
    conf = [("stop", '{"body": "k"}')]

    async def scenario() -> None:
        async with await shared_runner.client() as a, await shared_runner.client() as b:
            first = await a.prepare_conf(conf, key="route#10#ext-plugin-pre-req#1")
            again = await a.prepare_conf(conf, key="route#10#ext-plugin-pre-req#1")
            other_conn = await b.prepare_conf(conf, key="route#10#ext-plugin-pre-req#1")
            assert first == again == other_conn

            tokens = {first}
            for i in range(50):
                token = await b.prepare_conf(conf, key=f"route#10#ext-plugin-pre-req#v{i}")
                tokens.add(token)
            phases = ("ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp")
            for phase in phases:
                tokens.add(await a.prepare_conf(None, key=f"route#11#{phase}#1"))
            assert len(tokens) == 1 + 50 + len(phases)
            assert 0 not in tokens
            assert all(0 < t <= 0xFFFFFFFF for t in tokens)
            # Every token is live and carries its own conf.
            for token in tokens:
                result = await a.call(token, HTTPRequest())
                assert result.action in (Stop(status=200, headers=[], body=b"k"), None)

    arun(scenario())


def test_pipelined_calls_on_one_connection(shared_runner: RunningRunner) -> None:
    """Many sequential RPCs over one pooled connection, different tokens interleaved."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            stop = await client.prepare_conf([("stop", '{"body": "s"}')])
            echo = await client.prepare_conf([("echo", "e")], key="route#echo#pipeline#1")
            for i in range(200):
                if i % 2:
                    result = await client.call(stop, HTTPRequest(id=i))
                    assert result.action == Stop(status=200, headers=[], body=b"s")
                else:
                    result = await client.call(echo, HTTPRequest(id=i, path=f"/{i}"))
                    assert echo_of(result.action)["path"] == f"/{i}"
                assert result.id == i

    arun(scenario())

"""Post-resp (HTTPRespCall, type 4): response.t scenarios and docs/protocol.md §7.3
(a runner that changes anything must send the complete header set)."""

from __future__ import annotations

import hashlib
import json

from runner.testing import HTTPRequest
from runner.testing.pytest_plugin import RunningRunner

from .conftest import arun, normalized

UPSTREAM_HEADERS = [
    ("Content-Type", "text/plain"),
    ("Content-Length", "12"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
    ("X-Up", "u"),
    ("Location", "/elsewhere"),
    ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"),
]


def rewrite_conf(**conf: object) -> list[tuple[str, str]]:
    return [("response-rewrite", json.dumps(conf))]


def test_resp_call_input_echoed_unchanged(shared_runner: RunningRunner) -> None:
    """response.t TEST 2: id 0, status 200, upstream headers; no change asked."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(rewrite_conf(), key="route#1#ext-plugin-post-resp#0")
            result = await client.resp_call(token, 200, UPSTREAM_HEADERS, id=0)
            assert result.id == 0
            assert result.status == 0
            assert result.body is None
            assert result.extra_info == []
            # With no headers APISIX would drop Content-Type and Location (docs/protocol.md §7.3):
            # the complete set must come back.
            assert normalized(result.headers) == normalized(UPSTREAM_HEADERS)

    arun(scenario())


def test_header_change_keeps_all_upstream_headers(shared_runner: RunningRunner) -> None:
    """response.t TEST 4: X-Runner and Content-Type set, all other headers kept."""
    conf = rewrite_conf(headers={"X-Runner": "Test-Runner", "Content-Type": "application/json"})

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(conf, key="route#1#ext-plugin-post-resp#hdr")
            result = await client.resp_call(token, 200, UPSTREAM_HEADERS, id=9)
            assert result.id == 9
            assert result.status == 0
            assert result.body is None
            expected = [
                ("Content-Type", "application/json"),
                ("Content-Length", "12"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("X-Up", "u"),
                ("Location", "/elsewhere"),
                ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("X-Runner", "Test-Runner"),
            ]
            assert normalized(result.headers) == normalized(expected)

    arun(scenario())


def test_header_delete_keeps_the_others(shared_runner: RunningRunner) -> None:
    conf = rewrite_conf(headers={"X-Up": None, "Set-Cookie": None})

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(conf, key="route#1#ext-plugin-post-resp#del")
            result = await client.resp_call(token, 200, UPSTREAM_HEADERS)
            assert result.status == 0
            assert result.body is None
            expected = [
                (n, v) for n, v in UPSTREAM_HEADERS if n.lower() not in ("x-up", "set-cookie")
            ]
            assert normalized(result.headers) == normalized(expected)

    arun(scenario())


def test_hop_by_hop_headers_not_sent_back(shared_runner: RunningRunner) -> None:
    upstream = [
        ("Content-Type", "text/html"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("X-Up", "u"),
    ]

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                rewrite_conf(headers={"X-Cache": "miss"}), key="route#1#ext-plugin-post-resp#hop"
            )
            result = await client.resp_call(token, 200, upstream)
            assert normalized(result.headers) == [
                ("content-type", "text/html"),
                ("x-cache", "miss"),
                ("x-up", "u"),
            ]

    arun(scenario())


def test_status_change(shared_runner: RunningRunner) -> None:
    """response.t TEST 6: 200 becomes 304; headers all kept."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                rewrite_conf(status=304), key="route#1#ext-plugin-post-resp#304"
            )
            result = await client.resp_call(token, 200, UPSTREAM_HEADERS)
            assert result.status == 304
            assert result.body is None
            assert normalized(result.headers) == normalized(UPSTREAM_HEADERS)

            # The same status as the upstream's is "unchanged" (0) or that status.
            same = await client.prepare_conf(
                rewrite_conf(status=200), key="route#1#ext-plugin-post-resp#200"
            )
            result = await client.resp_call(same, 200, UPSTREAM_HEADERS)
            assert result.status in (0, 200)

    arun(scenario())


def test_body_replacement_drops_content_length(shared_runner: RunningRunner) -> None:
    """response.t TEST 3: body replaced by "cat"; Content-Length must not survive."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                rewrite_conf(body="cat"), key="route#1#ext-plugin-post-resp#body"
            )
            result = await client.resp_call(token, 200, UPSTREAM_HEADERS)
            assert result.body == b"cat"
            assert result.status in (0, 200)
            expected = [(n, v) for n, v in UPSTREAM_HEADERS if n != "Content-Length"]
            assert normalized(result.headers) == normalized(expected)

    arun(scenario())


def test_status_header_and_body_together(shared_runner: RunningRunner) -> None:
    conf = rewrite_conf(status=418, headers={"X-Up": "changed"}, body="teapot")

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(conf, key="route#1#ext-plugin-post-resp#all")
            result = await client.resp_call(token, 502, UPSTREAM_HEADERS, id=77)
            assert result.id == 77
            assert result.status == 418
            assert result.body == b"teapot"
            expected = [
                (n, "changed" if n == "X-Up" else v)
                for n, v in UPSTREAM_HEADERS
                if n != "Content-Length"
            ]
            assert normalized(result.headers) == normalized(expected)

    arun(scenario())


def test_async_response_filter_reads_resp_body(shared_runner: RunningRunner) -> None:
    """extra-info.t TEST 8: RespBody inside a post-resp call."""
    upstream_body = b"hello world\n"

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                [("resp-body", "")], key="route#1#ext-plugin-post-resp#rb"
            )
            request = HTTPRequest(resp_body=upstream_body)
            result = await client.resp_call(
                token, 200, [("Content-Type", "text/plain"), ("Content-Length", "12")], request
            )
            assert result.extra_info == [("resp_body", None)]
            assert result.body == b"seen:" + upstream_body
            assert result.status in (0, 200)
            assert normalized(result.headers) == [
                ("content-type", "text/plain"),
                ("x-body-sha256", hashlib.sha256(upstream_body).hexdigest()),
            ]

            # No upstream body: nil result, seen as b"".
            result = await client.resp_call(token, 204, [], HTTPRequest(resp_body=None))
            assert result.extra_info == [("resp_body", None)]
            assert result.body == b"seen:"
            assert normalized(result.headers) == [
                ("x-body-sha256", hashlib.sha256(b"").hexdigest())
            ]

            # A large binary upstream body.
            big = bytes(range(256)) * 4096 * 4
            result = await client.resp_call(token, 200, [], HTTPRequest(resp_body=big))
            assert result.body == b"seen:" + big

    arun(scenario())


def test_request_only_plugins_do_not_touch_the_response(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                [("stop", '{"body": "x"}'), ("rewrite", '{"path": "/x"}')],
                key="route#1#ext-plugin-post-resp#reqonly",
            )
            result = await client.resp_call(token, 201, UPSTREAM_HEADERS)
            assert result.status == 0
            assert result.body is None
            assert result.extra_info == []
            assert normalized(result.headers) == normalized(UPSTREAM_HEADERS)

    arun(scenario())


def test_response_rewrite_ignored_in_request_phase(shared_runner: RunningRunner) -> None:
    """A response-only plugin in a pre-req token: the request goes on unchanged."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                rewrite_conf(status=500, body="x"), key="route#1#ext-plugin-pre-req#resp-only"
            )
            result = await client.call(token, HTTPRequest(path="/a"))
            assert result.action is None

    arun(scenario())


def test_vars_in_response_phase(shared_runner: RunningRunner) -> None:
    """extra-info.t TESTs 6-7: vars inside post-resp; unknown var is nil."""
    conf = json.dumps({"names": ["remote_addr", "route_id", "nope"]})

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                [("resp-vars", conf)], key="route#1#ext-plugin-post-resp#vars"
            )
            request = HTTPRequest(vars={"remote_addr": "10.0.0.9", "route_id": "1"})
            result = await client.resp_call(token, 200, [("X-Up", "u")], request)
            assert result.extra_info == [
                ("var", "remote_addr"),
                ("var", "route_id"),
                ("var", "nope"),
            ]
            assert result.status == 0
            assert result.body is None
            assert normalized(result.headers) == [
                ("x-up", "u"),
                ("x-var-nope", "<nil>"),
                ("x-var-remote_addr", "10.0.0.9"),
                ("x-var-route_id", "1"),
            ]

    arun(scenario())


def test_vars_cached_in_response_phase(shared_runner: RunningRunner) -> None:
    """docs/protocol.md §6.1: vars are cached per call, in post-resp too."""
    conf = json.dumps({"names": ["remote_addr", "nope"], "repeat": 3})

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf(
                [("resp-vars", conf)], key="route#1#ext-plugin-post-resp#vars-cached"
            )
            request = HTTPRequest(vars={"remote_addr": "10.0.0.9"})
            result = await client.resp_call(token, 200, [], request)
            assert normalized(result.headers) == [
                ("x-var-nope", "<nil>|<nil>|<nil>"),
                ("x-var-remote_addr", "10.0.0.9|10.0.0.9|10.0.0.9"),
            ]
            assert result.extra_info == [("var", "remote_addr"), ("var", "nope")]

    arun(scenario())

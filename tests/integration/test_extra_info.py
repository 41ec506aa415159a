"""ExtraInfo (type 3) round trips: vars and request bodies, asked by async plugins
(extra-info.t, request-body.t)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from runner.testing import (
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    Client,
    HTTPRequest,
    Stop,
    build_req_call,
)
from runner.testing import build_extra_info_resp as extra_info_resp
from runner.testing.pytest_plugin import RunningRunner

from .conftest import arun, stop_of_final

ALL_BYTES = bytes(range(256))


def stop_json(action: Stop | Any) -> dict[str, Any]:
    assert isinstance(action, Stop), action
    assert action.status == 200
    data: dict[str, Any] = json.loads(action.body)
    return data


def digest_of(body: bytes) -> dict[str, Any]:
    return {
        "type": "bytes",
        "len": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "same": True,
    }


async def read_vars_token(client: Client, names: list[str], **opts: Any) -> int:
    conf = json.dumps({"names": names, **opts})
    return await client.prepare_conf([("read-vars", conf)], key=f"route#vars#{conf}")


def test_var_remote_addr_and_unknown_var(shared_runner: RunningRunner) -> None:
    """extra-info.t TESTs 2-3."""
    request = HTTPRequest(
        vars={"remote_addr": "10.1.2.3", "route_id": "1", "arg_x": "", "server_addr": "127.0.0.1"}
    )
    names = ["remote_addr", "route_id", "arg_x", "server_addr", "no_such_var"]

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await read_vars_token(client, names)
            result = await client.call(token, request)
            assert stop_json(result.action) == {
                "remote_addr": ["10.1.2.3"],
                "route_id": ["1"],
                "arg_x": [""],
                "server_addr": ["127.0.0.1"],
                "no_such_var": [None],
            }
            assert result.extra_info == [("var", n) for n in names]

    arun(scenario())


def test_var_read_twice_asks_once(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await read_vars_token(client, ["remote_addr", "nope"], repeat=3)
            result = await client.call(token, HTTPRequest(vars={"remote_addr": "10.9.9.9"}))
            assert stop_json(result.action) == {
                "remote_addr": ["10.9.9.9"] * 3,
                "nope": [None] * 3,
            }
            # An unknown var (nil) is cached too: one question per name per request.
            assert result.extra_info == [("var", "remote_addr"), ("var", "nope")]

            # The cache is per request: the next request asks again, gets its own value.
            result = await client.call(token, HTTPRequest(vars={"remote_addr": "10.8.8.8"}))
            assert stop_json(result.action)["remote_addr"] == ["10.8.8.8"] * 3
            assert result.extra_info == [("var", "remote_addr"), ("var", "nope")]

    arun(scenario())


def test_vars_asked_concurrently_are_answered_in_order(shared_runner: RunningRunner) -> None:
    names = [f"v{i}" for i in range(20)]
    values = {name: f"value-{name}" for name in names}

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await read_vars_token(client, names, concurrent=True)
            result = await client.call(token, HTTPRequest(vars=values))
            assert stop_json(result.action) == {name: [values[name]] for name in names}
            assert result.extra_info == [("var", n) for n in names]

            token = await read_vars_token(client, ["a", "missing", "b"], concurrent=True, repeat=2)
            result = await client.call(token, HTTPRequest(vars={"a": "1", "b": "2"}))
            assert stop_json(result.action) == {
                "a": ["1", "1"],
                "missing": [None, None],
                "b": ["2", "2"],
            }
            assert result.extra_info == [("var", "a"), ("var", "missing"), ("var", "b")]

    arun(scenario())


def test_var_with_non_ascii_value(shared_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await read_vars_token(client, ["http_x_name"])
            result = await client.call(
                token, HTTPRequest(vars={"http_x_name": "J\u00fcrgen \u6f22"})
            )
            assert stop_json(result.action) == {"http_x_name": ["J\u00fcrgen \u6f22"]}

    arun(scenario())


@pytest.mark.parametrize(
    "body",
    [
        b"123",
        b"a=1&b=2",
        b'{"k": "v"}',
        ALL_BYTES,
        ALL_BYTES * 4096,  # 1 MiB
        ALL_BYTES * 4096 * 15,  # 15 MiB (the protocol limit is 16 MiB - 1)
    ],
    ids=["text", "form", "json", "256-bytes", "1MiB", "15MiB"],
)
def test_request_body(shared_runner: RunningRunner, body: bytes) -> None:
    """extra-info.t TEST 11, request-body.t, and large binary bodies."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("body-digest", "")])
            result = await client.call(token, HTTPRequest(method="POST", body=body))
            assert stop_json(result.action) == digest_of(body)
            assert result.extra_info == [("req_body", None)]

    arun(scenario())


def test_request_body_absent(shared_runner: RunningRunner) -> None:
    """extra-info.t TEST 10 / request-body.t: no body gives nil, seen as b""."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("body-digest", "")])
            result = await client.call(token, HTTPRequest(method="GET", body=None))
            assert stop_json(result.action) == digest_of(b"")
            assert result.extra_info == [("req_body", None)]

    arun(scenario())


def test_body_reply_arriving_in_small_pieces(shared_runner: RunningRunner) -> None:
    """The ExtraInfo reply trickles in (header split too): the runner reassembles it."""
    body = ALL_BYTES * 4096  # 1 MiB
    payload = extra_info_resp(body)
    frame = bytes((RPC_EXTRA_INFO,)) + len(payload).to_bytes(3, "big") + payload

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("body-digest", "")])
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=5)))
            rpc_type, _ = await client.read_frame()
            assert rpc_type == RPC_EXTRA_INFO
            pieces = [frame[:1], frame[1:3], frame[3:7], frame[7:100]]
            pieces += [frame[i : i + 65521] for i in range(100, len(frame), 65521)]
            assert b"".join(pieces) == frame
            for piece in pieces:
                await client.send_raw(piece)
                await asyncio.sleep(0.001)
            rpc_type, final = await client.read_frame()
            assert rpc_type == RPC_HTTP_REQ_CALL
            req_id, status, stop_body = stop_of_final(final)
            assert (req_id, status) == (5, 200)
            assert json.loads(stop_body) == digest_of(body)
            # The connection is back to idle and serves the next call.
            result = await client.call(token, HTTPRequest(body=b"next"))
            assert stop_json(result.action) == digest_of(b"next")

    arun(scenario())

"""Body sizes against the real runner: 0 B, 1 B, 1 MiB and 16,777,000 B in and
out of every body path, and replies at the 16,777,215-byte frame limit.

* in through ExtraInfo ``ReqBody`` and out as a Rewrite request body;
* in through ExtraInfo ``RespBody`` and out as an HTTPRespCall body;
* the largest ExtraInfo reply APISIX's flatbuffers builder can frame;
* replies of exactly 16,777,215 bytes (Stop, Rewrite, HTTPRespCall) pass
  whole; one byte more becomes a type-0 SERVICE_UNAVAILABLE with a log line
  naming the size, never a frame with a wrapped length: the next call on the
  same connection is answered normally.

Not repeated from test_extra_info.py / test_errors.py: ReqBody digests of 1 MiB
and 15 MiB, and a Stop body of 2**24 bytes refused.

The bodies are pseudo-random bytes (every byte value, no pattern), checked
end to end by length and SHA-256. The ExtraInfo answers are built once per
size with the flatc reference code (building 16 MiB takes it ~0.5 s).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.proto import (
    build_req_call_rewrite,
    build_req_call_stop,
    build_resp_call_resp,
)
from runner.testing import (
    MAX_PAYLOAD,
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    Client,
    HTTPRequest,
    Rewrite,
    Stop,
    build_extra_info_resp,
    build_req_call,
    build_resp_call,
    parse_req_call_resp,
    parse_resp_call_resp,
)
from runner.testing._a6.A6.ExtraInfo.Req import Req as ExtraInfoReq
from runner.testing.pytest_plugin import RunningRunner

from .conftest import PLUGINS_DIR, arun, err_code, start_runner, wait_for_log

HARDENING_DIR = str(Path(__file__).resolve().parent / "plugins_hardening")
CONFIG = {"plugin_dirs": [PLUGINS_DIR, HARDENING_DIR], "workers": 1}

SERVICE_UNAVAILABLE = 1
INFO_REQ_BODY, INFO_RESP_BODY = 2, 3
TIMEOUT = 60.0

SIZES = {"0B": 0, "1B": 1, "1MiB": 1 << 20, "16777000B": 16_777_000}
# ExtraInfo.Resp as flatc lays it out: 24 bytes + the body padded to 4.
EXTRA_MAX = MAX_PAYLOAD - 24 - (MAX_PAYLOAD - 24) % 4  # 16,777,188


@functools.cache
def body_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@functools.cache
def extra_info_answer(size: int) -> bytes:
    return build_extra_info_resp(body_of(size))


def digest_headers(size: int) -> list[tuple[str, str | None]]:
    return [("X-Len", str(size)), ("X-Sha256", hashlib.sha256(body_of(size)).hexdigest())]


@pytest.fixture(scope="module")
def sized() -> Iterator[RunningRunner]:
    running = start_runner(plugins_dir=None, config=CONFIG)
    yield running
    running.stop()


async def exchange(
    client: Client, rpc: int, payload: bytes, answer: bytes
) -> tuple[int, bytes, list[int]]:
    """Send one call; answer every ExtraInfo question with ``answer``.
    Returns (final type, final payload, the info types asked)."""
    await client.send_frame(rpc, payload)
    asked: list[int] = []
    while True:
        rpc_type, frame = await client.read_frame()
        if rpc_type != RPC_EXTRA_INFO:
            return rpc_type, frame, asked
        asked.append(int(ExtraInfoReq.GetRootAs(frame, 0).InfoType()))
        await client.send_frame(RPC_EXTRA_INFO, answer)


async def still_serves(client: Client, token: int) -> None:
    """A small call right after: the previous reply left nothing on the wire."""
    rpc_type, frame, asked = await exchange(
        client, RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=3)), b""
    )
    assert (rpc_type, asked) == (RPC_HTTP_REQ_CALL, [])
    assert parse_req_call_resp(frame, []).action == Stop(200, [], b"ok")


async def connect(runner: RunningRunner) -> tuple[Client, int]:
    client = await Client.connect(runner.socket_path, read_timeout=TIMEOUT)
    ok = await client.prepare_conf([("stop", '{"body": "ok"}')], "route#ok#1")
    return client, ok


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_request_body_in_and_rewritten_out(sized: RunningRunner, size: int) -> None:
    """ReqBody in, the same bytes out as the Rewrite's request body."""

    async def scenario() -> None:
        client, ok = await connect(sized)
        try:
            token = await client.prepare_conf([("h-req-body-echo", "")], "route#rq#1")
            call = build_req_call(token, HTTPRequest(method="POST", id=size & 0xFFFF))
            rpc_type, frame, asked = await exchange(
                client, RPC_HTTP_REQ_CALL, call, extra_info_answer(size)
            )
            assert rpc_type == RPC_HTTP_REQ_CALL, frame[:64]
            assert asked == [INFO_REQ_BODY]
            result = parse_req_call_resp(frame, [])
            assert result.id == size & 0xFFFF
            # An empty body cannot be sent (absent = unchanged), so 0 B has none.
            expected = Rewrite(None, [], [], [("X-Len", str(size))], body_of(size) or None)
            assert result.action == expected
            await still_serves(client, ok)
        finally:
            await client.close()

    arun(scenario(), timeout=TIMEOUT)


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_response_body_in_and_replaced_out(sized: RunningRunner, size: int) -> None:
    """RespBody in, the same bytes out as the HTTPRespCall body."""
    upstream = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]

    async def scenario() -> None:
        client, ok = await connect(sized)
        try:
            token = await client.prepare_conf([("h-resp-body-echo", "")], "route#rs#1")
            call = build_resp_call(token, 9, 200, upstream)
            rpc_type, frame, asked = await exchange(
                client, RPC_HTTP_RESP_CALL, call, extra_info_answer(size)
            )
            assert rpc_type == RPC_HTTP_RESP_CALL, frame[:64]
            assert asked == [INFO_RESP_BODY]
            result = parse_resp_call_resp(frame, [])
            assert (result.id, result.status) == (9, 0)
            assert result.body == (body_of(size) or None)
            # The full header set: the upstream's, less Content-Length (the
            # body was replaced), plus the plugin's.
            assert result.headers == [upstream[0], ("X-Len", str(size))]
            await still_serves(client, ok)
        finally:
            await client.close()

    arun(scenario(), timeout=TIMEOUT)


@pytest.mark.parametrize("phase", ["request", "response"])
def test_largest_extra_info_reply(sized: RunningRunner, phase: str) -> None:
    """The largest body an ExtraInfo reply can carry arrives whole."""
    answer = extra_info_answer(EXTRA_MAX)
    assert MAX_PAYLOAD - 4 < len(answer) <= MAX_PAYLOAD

    async def scenario() -> None:
        client, ok = await connect(sized)
        try:
            if phase == "request":
                token = await client.prepare_conf([("h-req-body-echo", "digest")], "route#rd#1")
                rpc, call = RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(method="PUT"))
            else:
                token = await client.prepare_conf([("h-resp-body-echo", "digest")], "route#sd#1")
                rpc, call = RPC_HTTP_RESP_CALL, build_resp_call(token, 1, 200, [])
            rpc_type, frame, asked = await exchange(client, rpc, call, answer)
            assert rpc_type == rpc, frame[:64]
            assert len(asked) == 1
            if phase == "request":
                action = parse_req_call_resp(frame, []).action
                assert action == Rewrite(None, [], [], digest_headers(EXTRA_MAX), None)
            else:
                result = parse_resp_call_resp(frame, [])
                assert (result.headers, result.body) == (digest_headers(EXTRA_MAX), None)
            await still_serves(client, ok)
        finally:
            await client.close()

    arun(scenario(), timeout=TIMEOUT)


# --------------------------------------------------------------------------- the frame limit


@pytest.mark.parametrize("phase", ["request", "response"])
def test_echo_of_the_largest_body_cannot_be_framed(sized: RunningRunner, phase: str) -> None:
    """The largest body APISIX can send, echoed back with two headers, makes
    a reply over the limit: a type-0 error and a log line, then business as usual."""
    answer = extra_info_answer(EXTRA_MAX)

    async def scenario() -> None:
        client, ok = await connect(sized)
        try:
            if phase == "request":
                token = await client.prepare_conf([("h-req-body-echo", "")], "route#rq#1")
                rpc, call = RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(method="PUT"))
            else:
                token = await client.prepare_conf([("h-resp-body-echo", "")], "route#rs#1")
                rpc, call = RPC_HTTP_RESP_CALL, build_resp_call(token, 1, 200, [])
            rpc_type, frame, asked = await exchange(client, rpc, call, answer)
            assert (rpc_type, len(asked)) == (RPC_ERROR, 1), frame[:64]
            assert err_code(frame) == SERVICE_UNAVAILABLE
            await still_serves(client, ok)
        finally:
            await client.close()

    offset = len(sized.log_text())
    arun(scenario(), timeout=TIMEOUT)
    log = wait_for_log(sized, str(MAX_PAYLOAD), offset)
    assert any("ERROR" in line and str(MAX_PAYLOAD) in line for line in log.splitlines()), log


def reply_overhead(kind: str) -> int:
    """Payload bytes of an h-sized reply besides its body (the runner's own
    builders, laid out as dispatch calls them); checked linear in the body."""

    def size(n: int) -> int:
        body = b"x" * n
        if kind == "stop":
            frame = build_req_call_stop(0, 200, [], body)
        elif kind == "rewrite":
            frame = build_req_call_rewrite(0, None, [], [], [], body)
        else:
            frame = build_resp_call_resp(0, 0, [], body)
        return len(frame) - 4

    assert size(13) - size(9) == 4 and size(10) - size(9) == 1
    return size(9) - 9


@pytest.mark.parametrize("over", [0, 1], ids=["exactly-16777215", "one-byte-over"])
@pytest.mark.parametrize("kind", ["stop", "rewrite", "resp"])
def test_reply_at_the_frame_limit(sized: RunningRunner, kind: str, over: int) -> None:
    body_size = MAX_PAYLOAD - reply_overhead(kind) + over

    async def scenario() -> None:
        client, ok = await connect(sized)
        try:
            conf = f'{{"kind": "{kind}", "size": {body_size}}}'
            token = await client.prepare_conf([("h-sized", conf)], f"route#sized#{kind}{over}")
            if kind == "resp":
                rpc, call = RPC_HTTP_RESP_CALL, build_resp_call(token, 2, 200, [])
            else:
                rpc, call = RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=2))
            rpc_type, frame, asked = await exchange(client, rpc, call, b"")
            assert asked == []
            if over:
                assert rpc_type == RPC_ERROR, (rpc_type, len(frame))
                assert err_code(frame) == SERVICE_UNAVAILABLE
            else:
                assert (rpc_type, len(frame)) == (rpc, MAX_PAYLOAD)
                if kind == "stop":
                    action = parse_req_call_resp(frame, []).action
                    assert isinstance(action, Stop) and action.body == b"x" * body_size
                elif kind == "rewrite":
                    action = parse_req_call_resp(frame, []).action
                    assert isinstance(action, Rewrite) and action.body == b"x" * body_size
                else:
                    assert parse_resp_call_resp(frame, []).body == b"x" * body_size
            await still_serves(client, ok)
        finally:
            await client.close()

    offset = len(sized.log_text())
    arun(scenario(), timeout=TIMEOUT)
    if over:
        # The log names the size that did not fit.
        log = wait_for_log(sized, str(MAX_PAYLOAD + 1), offset)
        assert any("ERROR" in line and str(MAX_PAYLOAD + 1) in line for line in log.splitlines())

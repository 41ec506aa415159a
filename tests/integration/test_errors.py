"""Failures: plugins that raise or hang, malformed frames, and connections that
must not block each other (docs/protocol.md §2.4, §8 and §9)."""

from __future__ import annotations

import asyncio
import time

import pytest

from runner.testing import (
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_PREPARE_CONF,
    HTTPRequest,
    ProtocolError,
    RunnerError,
    Stop,
    build_req_call,
)
from runner.testing import build_extra_info_resp as extra_info_resp
from runner.testing.pytest_plugin import RunnerFactory, RunningRunner

from .conftest import (
    PLUGINS_DIR,
    arun,
    err_code,
    stop_of_final,
    wait_for_log,
)

BAD_REQUEST = 0
SERVICE_UNAVAILABLE = 1
OK_STOP = Stop(status=200, headers=[], body=b"ok")


async def assert_serves(runner: RunningRunner) -> None:
    """A fresh connection gets a token and a Stop: the runner is alive and free."""
    async with await runner.client() as client:
        token = await client.prepare_conf([("stop", '{"body": "ok"}')])
        result = await client.call(token, HTTPRequest())
        assert result.action == OK_STOP


@pytest.mark.parametrize(
    ("plugin", "marker"),
    [("failing-plugin", "kaboom-sync-marker"), ("failing-async-plugin", "kaboom-async-marker")],
)
def test_plugin_raises(fresh_runner: RunningRunner, plugin: str, marker: str) -> None:
    offset = len(fresh_runner.log_text())

    async def scenario() -> None:
        async with await fresh_runner.client() as client:
            token = await client.prepare_conf([(plugin, "")], key=f"route#raise#{plugin}#1")
            ok = await client.prepare_conf([("stop", '{"body": "ok"}')])
            with pytest.raises(RunnerError) as err:
                await client.call(token, HTTPRequest(id=42))
            assert err.value.code == SERVICE_UNAVAILABLE
            # The same connection serves the next call.
            assert (await client.call(ok, HTTPRequest())).action == OK_STOP

    arun(scenario())
    text = wait_for_log(fresh_runner, marker, offset)
    assert "Traceback (most recent call last)" in text, text
    assert f"RuntimeError: {marker}" in text, text
    assert text.count(f"RuntimeError: {marker}") == 1, text
    assert text.count(plugin) == 1, text


def test_plugin_raises_in_response_phase(fresh_runner: RunningRunner) -> None:
    plugin, marker = "failing-resp-plugin", "kaboom-resp-marker"
    offset = len(fresh_runner.log_text())

    async def scenario() -> None:
        async with await fresh_runner.client() as client:
            token = await client.prepare_conf(
                [(plugin, "")], key="route#1#ext-plugin-post-resp#raise"
            )
            with pytest.raises(RunnerError) as err:
                await client.resp_call(token, 200, [("X-A", "1")], id=5)
            assert err.value.code == SERVICE_UNAVAILABLE
            # No request-phase filter: the request phase goes on untouched.
            assert (await client.call(token, HTTPRequest())).action is None
            # The connection still serves response calls.
            ok = await client.prepare_conf(
                [("response-rewrite", '{"status": 201}')], key="route#1#ext-plugin-post-resp#ok"
            )
            result = await client.resp_call(ok, 200, [("X-A", "1")])
            assert result.status == 201
            assert result.headers == [("X-A", "1")]

    arun(scenario())
    text = wait_for_log(fresh_runner, marker, offset)
    assert "Traceback (most recent call last)" in text, text
    assert text.count(f"RuntimeError: {marker}") == 1, text
    assert text.count(plugin) == 1, text


def test_call_timeout(runner_factory: RunnerFactory) -> None:
    runner = runner_factory(plugins_dir=PLUGINS_DIR, config={"call_timeout": 0.5})

    async def scenario() -> None:
        async with await runner.client() as hung, await runner.client() as other:
            hang = await hung.prepare_conf([("hang", "")], key="route#hang#ext-plugin-pre-req#1")
            stop = await other.prepare_conf([("stop", '{"body": "ok"}')])
            vars_token = await other.prepare_conf([("read-vars", '{"names": ["remote_addr"]}')])

            started = time.monotonic()
            hung_call = asyncio.ensure_future(hung.call(hang, HTTPRequest(id=1)))
            await asyncio.sleep(0.05)
            # Meanwhile another connection is served, sync and async chains alike.
            for _ in range(10):
                assert (await other.call(stop, HTTPRequest())).action == OK_STOP
                result = await other.call(vars_token, HTTPRequest(vars={"remote_addr": "1.2.3.4"}))
                assert isinstance(result.action, Stop)
                assert result.action.body == b'{"remote_addr": ["1.2.3.4"]}'
            assert not hung_call.done()

            with pytest.raises(RunnerError) as err:
                await hung_call
            elapsed = time.monotonic() - started
            assert err.value.code == SERVICE_UNAVAILABLE
            assert 0.45 <= elapsed <= 1.0, elapsed

            # The timed-out connection is usable again.
            assert (await hung.call(stop, HTTPRequest())).action == OK_STOP

    arun(scenario())


@pytest.mark.parametrize("rpc_type", [9, 0, 3, 5, 255])
def test_unknown_rpc_type_is_bad_request(shared_runner: RunningRunner, rpc_type: int) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            await client.send_frame(rpc_type, b"\x08\x00\x00\x00\x04\x00\x04\x00\x04\x00\x00\x00")
            answer_type, payload = await client.read_frame()
            assert answer_type == RPC_ERROR
            assert err_code(payload) == BAD_REQUEST
            # The frame was consumed whole: the connection carries on.
            token = await client.prepare_conf([("stop", '{"body": "ok"}')])
            assert (await client.call(token, HTTPRequest())).action == OK_STOP

    arun(scenario())
    arun(assert_serves(shared_runner))


@pytest.mark.parametrize(
    "payload",
    [b"\xff" * 16, b"\x01\x02\x03", b"", b"\x04\x00\x00\x00" + b"\xff" * 12],
    ids=["ff16", "short", "empty", "bad-vtable"],
)
@pytest.mark.parametrize(
    "rpc_type",
    [RPC_HTTP_REQ_CALL, RPC_PREPARE_CONF, RPC_HTTP_RESP_CALL],
    ids=["req", "conf", "resp"],
)
def test_garbage_payload_is_bad_request(
    shared_runner: RunningRunner, rpc_type: int, payload: bytes
) -> None:
    async def scenario() -> None:
        async with await shared_runner.client() as client:
            await client.send_frame(rpc_type, payload)
            answer_type, answer = await client.read_frame()
            assert answer_type == RPC_ERROR
            assert err_code(answer) == BAD_REQUEST

    arun(scenario())
    arun(assert_serves(shared_runner))


def test_header_too_short_then_close(shared_runner: RunningRunner) -> None:
    """sanity.t TEST 3's frame shape, sent to the runner: 2 bytes, then close."""

    async def scenario() -> None:
        async with await shared_runner.client() as other:
            token = await other.prepare_conf([("stop", '{"body": "ok"}')])
            for _ in range(3):
                async with await shared_runner.client() as broken:
                    await broken.send_raw(b"\x02\x00")
                await asyncio.sleep(0.02)
                assert (await other.call(token, HTTPRequest())).action == OK_STOP
        await assert_serves(shared_runner)

    arun(scenario())
    assert shared_runner.proc.poll() is None


def test_data_too_short_then_close(shared_runner: RunningRunner) -> None:
    """sanity.t TEST 4's frame shape: 65536 bytes announced, 1 sent, then close."""

    async def scenario() -> None:
        async with await shared_runner.client() as other:
            token = await other.prepare_conf([("stop", '{"body": "ok"}')])
            for _ in range(3):
                async with await shared_runner.client() as broken:
                    await broken.send_raw(b"\x02\x01\x00\x00" + b"x")
                await asyncio.sleep(0.02)
                assert (await other.call(token, HTTPRequest())).action == OK_STOP
        await assert_serves(shared_runner)

    arun(scenario())
    assert shared_runner.proc.poll() is None


def test_close_mid_extra_info(shared_runner: RunningRunner) -> None:
    """extra-info.t TEST 4 seen from the other side: APISIX goes away while the
    runner waits for an ExtraInfo answer; nothing else is affected."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("body-digest", "")])
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest()))
            rpc_type, _ = await client.read_frame()
            assert rpc_type == RPC_EXTRA_INFO
        await asyncio.sleep(0.05)
        await assert_serves(shared_runner)

    arun(scenario())
    assert shared_runner.proc.poll() is None


def test_unexpected_frame_during_extra_info(shared_runner: RunningRunner) -> None:
    """While a call waits for ExtraInfo, a new call on the same connection is a
    protocol violation: the runner may close that connection but keeps serving."""

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("body-digest", "")])
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest()))
            rpc_type, _ = await client.read_frame()
            assert rpc_type == RPC_EXTRA_INFO
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest()))
            # Either an error frame or a closed connection; never a hang.
            try:
                answer_type, _ = await asyncio.wait_for(client.read_frame(), 2.0)
            except ProtocolError:
                pass  # closed by the runner
            else:
                assert answer_type == RPC_ERROR
        await assert_serves(shared_runner)

    arun(scenario())


def test_second_connection_served_during_extra_info(shared_runner: RunningRunner) -> None:
    """docs/protocol.md §8.3, the second connection: while connection A waits in an
    ExtraInfo round trip, APISIX opens B for PrepareConf and a call."""

    async def scenario() -> None:
        async with await shared_runner.client() as a:
            token_a = await a.prepare_conf([("body-digest", "")], key="route#nest#a#1")
            await a.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token_a, HTTPRequest(id=11)))
            rpc_type, _ = await a.read_frame()
            assert rpc_type == RPC_EXTRA_INFO

            async with await shared_runner.client() as b:
                token_b = await b.prepare_conf([("stop", '{"body": "ok"}')], key="route#nest#b#1")
                assert (await b.call(token_b, HTTPRequest())).action == OK_STOP
                vars_b = await b.prepare_conf(
                    [("read-vars", '{"names": ["x"]}')], key="route#nest#b#2"
                )
                result = await b.call(vars_b, HTTPRequest(vars={"x": "y"}))
                assert isinstance(result.action, Stop)
                assert result.action.body == b'{"x": ["y"]}'

            await a.send_frame(RPC_EXTRA_INFO, extra_info_resp(b"abc"))
            rpc_type, final = await a.read_frame()
            assert rpc_type == RPC_HTTP_REQ_CALL
            req_id, status, body = stop_of_final(final)
            assert (req_id, status) == (11, 200)
            assert b'"len": 3' in body

    arun(scenario())


def test_second_connection_served_during_partial_frame(shared_runner: RunningRunner) -> None:
    """A connection that sent only part of a frame blocks nobody else."""

    async def scenario() -> None:
        async with await shared_runner.client() as a:
            token = await a.prepare_conf([("stop", '{"body": "ok"}')])
            frame = build_req_call(token, HTTPRequest(id=3))
            header = bytes((RPC_HTTP_REQ_CALL,)) + len(frame).to_bytes(3, "big")
            await a.send_raw(header + frame[:5])

            for _ in range(5):
                await assert_serves(shared_runner)

            await a.send_raw(frame[5:])
            rpc_type, final = await a.read_frame()
            assert rpc_type == RPC_HTTP_REQ_CALL
            assert stop_of_final(final) == (3, 200, b"ok")

    arun(scenario())


def test_many_concurrent_connections(shared_runner: RunningRunner) -> None:
    async def one(i: int) -> None:
        async with await shared_runner.client() as client:
            token = await client.prepare_conf([("read-vars", '{"names": ["n"]}')])
            for j in range(5):
                result = await client.call(token, HTTPRequest(id=i, vars={"n": f"{i}-{j}"}))
                assert result.id == i
                assert isinstance(result.action, Stop)
                assert result.action.body == f'{{"n": ["{i}-{j}"]}}'.encode()

    async def scenario() -> None:
        await asyncio.gather(*(one(i) for i in range(100)))

    arun(scenario())


def test_reply_too_large_for_a_frame(shared_runner: RunningRunner) -> None:
    """docs/protocol.md §2.3: a Stop body over 16 MiB - 1 cannot be framed; the
    runner answers SERVICE_UNAVAILABLE instead of a corrupt length, and goes on."""
    just_fits = (1 << 24) - 1 - 4096
    too_big = 1 << 24

    async def scenario() -> None:
        async with await shared_runner.client() as client:
            fits = await client.prepare_conf([("big-stop", str(just_fits))])
            result = await client.call(fits, HTTPRequest())
            assert isinstance(result.action, Stop)
            assert result.action.body == b"x" * just_fits

            big = await client.prepare_conf([("big-stop", str(too_big))])
            with pytest.raises(RunnerError) as err:
                await client.call(big, HTTPRequest())
            assert err.value.code == SERVICE_UNAVAILABLE
            assert (await client.call(fits, HTTPRequest(id=1))).id == 1

    arun(scenario())

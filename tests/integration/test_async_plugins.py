"""Async plugins that use asyncio the way plugin authors do (timeouts,
gather, wait_for, current_task, child tasks), run end to end by a real runner
whose calls are stepped by runner.api.calltask.CallTask; and the call deadline
(``call_timeout``) for plugins that never finish."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.testing import (
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    Client,
    HTTPRequest,
    RunnerError,
    Stop,
    build_req_call,
)
from runner.testing import build_extra_info_resp as extra_info_resp
from runner.testing.pytest_plugin import RunningRunner

from .conftest import arun, err_code, start_runner, stop_of_final, wait_for_log

CALL_TIMEOUT = 0.3
# A call past its deadline is answered within call_timeout + one sweep
# (call_timeout / 20 here); this bound leaves a generous margin on top.
DEADLINE_BOUND = CALL_TIMEOUT + 0.5
SERVICE_UNAVAILABLE = 1
OK_STOP = Stop(status=200, headers=[], body=b"ok")

PLUGINS = '''
"""Async test plugins for tests/integration/test_async_plugins.py."""

from __future__ import annotations

import asyncio
import json

from runner import Plugin, Request, Response, UpstreamResponse


class TimeoutVar(Plugin):
    name = "t-timeout-var"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        async with asyncio.timeout(1):
            value = await request.var("remote_addr")
        me = asyncio.current_task()
        assert me is not None
        response.stop(200, json.dumps({"remote_addr": value, "cancelling": me.cancelling()}))


class GatherVars(Plugin):
    name = "t-gather-vars"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        values = await asyncio.gather(request.var("var_a"), request.var("var_b"))
        response.stop(200, json.dumps(values))


class WaitFor(Plugin):
    name = "t-wait-for"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        try:
            await asyncio.wait_for(asyncio.sleep(5), 0.05)
        except TimeoutError:
            response.stop(200, "wait_for timed out")
            return
        response.stop(500, "wait_for did not time out")


class CurrentTask(Plugin):
    name = "t-current-task"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        me = asyncio.current_task()
        assert me is not None, "no current task in an async filter"
        await request.var("remote_addr")
        assert asyncio.current_task() is me, "another current task after an ExtraInfo answer"
        await asyncio.sleep(0)
        assert asyncio.current_task() is me, "another current task after sleep(0)"
        response.stop(200, f"task ok, done={me.done()}")


class VarForever(Plugin):
    name = "t-var-forever"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await request.var("never_answered")
        response.stop(200, "answered")


class Sleep(Plugin):
    name = "t-sleep"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await asyncio.sleep(60)
        response.stop(200, "woke up")


class CancelSelf(Plugin):
    name = "t-cancel-self"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        await asyncio.sleep(60)  # raises CancelledError at once
        response.stop(200, "not cancelled")


class ShortTimeoutVar(Plugin):
    name = "t-short-timeout-var"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        try:
            async with asyncio.timeout(0.05):
                value = await request.var("slow_var")
        except TimeoutError:
            response.stop(200, "gave up on slow_var")
            return
        response.stop(200, f"slow_var={value}")


class ChildVar(Plugin):
    name = "t-child-var"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        child = asyncio.create_task(request.var("var_b"))  # asks once it runs
        a = await request.var("var_a")
        b = await child
        response.stop(200, json.dumps([a, b]))


class RespGather(Plugin):
    name = "t-resp-gather"

    async def response_filter(self, conf: str, response: UpstreamResponse) -> None:
        async with asyncio.timeout(1):
            a, b = await asyncio.gather(response.var("var_a"), response.var("var_b"))
        response.headers["X-Vars"] = f"{a},{b}"
'''


@pytest.fixture(scope="module")
def async_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRunner]:
    """One worker (so both connections of a test share its event loop), the
    bundled plugins plus PLUGINS, and a short call_timeout."""
    plugins_dir: Path = tmp_path_factory.mktemp("async_plugins")
    (plugins_dir / "async_test_plugins.py").write_text(PLUGINS)
    running = start_runner(
        plugins_dir=str(plugins_dir), config={"call_timeout": CALL_TIMEOUT, "workers": 1}
    )
    yield running
    running.stop()


async def token_for(client: Client, plugin: str, key: str | None = None) -> int:
    return await client.prepare_conf([(plugin, "")], key=key or f"route#{plugin}#1")


def stop_body(action: Stop | object) -> bytes:
    assert isinstance(action, Stop), action
    assert action.status == 200, action
    return action.body


def test_timeout_around_var(async_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-timeout-var")
            for i in range(3):
                addr = f"10.0.0.{i}"
                result = await client.call(token, HTTPRequest(id=i, vars={"remote_addr": addr}))
                assert result.id == i
                assert json.loads(stop_body(result.action)) == {
                    "remote_addr": addr,
                    "cancelling": 0,
                }
                assert result.extra_info == [("var", "remote_addr")]

    arun(scenario(), timeout=10)


def test_gather_two_vars(async_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-gather-vars")
            result = await client.call(token, HTTPRequest(vars={"var_a": "A", "var_b": "B"}))
            assert json.loads(stop_body(result.action)) == ["A", "B"]
            assert result.extra_info == [("var", "var_a"), ("var", "var_b")]
            # An unset var is None; the answers still go to the right questions.
            result = await client.call(token, HTTPRequest(vars={"var_b": "only b"}))
            assert json.loads(stop_body(result.action)) == [None, "only b"]
            result = await client.call(token, HTTPRequest(vars={"var_a": "only a"}))
            assert json.loads(stop_body(result.action)) == ["only a", None]

    arun(scenario(), timeout=10)


def test_wait_for_sleep_times_out(async_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-wait-for")
            for _ in range(2):
                result = await client.call(token, HTTPRequest())
                assert stop_body(result.action) == b"wait_for timed out"
                assert result.extra_info == []

    arun(scenario(), timeout=10)


def test_current_task_is_set(async_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-current-task")
            result = await client.call(token, HTTPRequest(vars={"remote_addr": "1.1.1.1"}))
            assert stop_body(result.action) == b"task ok, done=False"

    arun(scenario(), timeout=10)


def test_response_phase_gather_in_timeout(async_runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-resp-gather", key="route#1#ext-plugin-post-resp#g")
            request = HTTPRequest(vars={"var_a": "A", "var_b": "B"})
            result = await client.resp_call(token, 200, [("X-Up", "1")], request, id=9)
            assert result.id == 9
            assert ("X-Vars", "A,B") in result.headers, result.headers
            assert ("X-Up", "1") in result.headers, result.headers
            assert result.extra_info == [("var", "var_a"), ("var", "var_b")]

    arun(scenario(), timeout=10)


def test_unanswered_var_hits_the_call_deadline(async_runner: RunningRunner) -> None:
    """APISIX never answers the question: the call ends SERVICE_UNAVAILABLE
    at its deadline and the connection serves the next call."""
    offset = len(async_runner.log_text())

    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-var-forever")
            ok = await client.prepare_conf([("stop", '{"body": "ok"}')])
            started = time.monotonic()
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=77)))
            rpc_type, payload = await client.read_frame()
            assert rpc_type == RPC_EXTRA_INFO
            assert b"never_answered" in payload
            rpc_type, payload = await asyncio.wait_for(client.read_frame(), DEADLINE_BOUND)
            elapsed = time.monotonic() - started
            assert rpc_type == RPC_ERROR
            assert err_code(payload) == SERVICE_UNAVAILABLE
            assert elapsed >= CALL_TIMEOUT - 0.05, elapsed  # not before its deadline
            for _ in range(2):
                assert (await client.call(ok, HTTPRequest())).action == OK_STOP

    arun(scenario(), timeout=10)
    text = wait_for_log(async_runner, "request 77: plugins did not finish", offset)
    assert "request 77: plugins did not finish" in text, text


def test_sleep_past_deadline_while_another_connection_is_served(
    async_runner: RunningRunner,
) -> None:
    async def scenario() -> None:
        async with await async_runner.client() as hung, await async_runner.client() as other:
            sleep = await token_for(hung, "t-sleep")
            ok = await other.prepare_conf([("stop", '{"body": "ok"}')])
            gather = await token_for(other, "t-gather-vars")

            started = time.monotonic()
            hung_call = asyncio.ensure_future(hung.call(sleep, HTTPRequest(id=5)))
            await asyncio.sleep(0.02)
            # The same worker answers the other connection meanwhile, sync and
            # async chains alike.
            for i in range(5):
                assert (await other.call(ok, HTTPRequest())).action == OK_STOP
                vars_ = {"var_a": f"a{i}", "var_b": f"b{i}"}
                result = await other.call(gather, HTTPRequest(vars=vars_))
                assert json.loads(stop_body(result.action)) == [f"a{i}", f"b{i}"]

            with pytest.raises(RunnerError) as err:
                await asyncio.wait_for(hung_call, DEADLINE_BOUND)
            elapsed = time.monotonic() - started
            assert err.value.code == SERVICE_UNAVAILABLE
            assert elapsed >= CALL_TIMEOUT - 0.05, elapsed
            # Both connections go on.
            assert (await hung.call(ok, HTTPRequest())).action == OK_STOP
            result = await other.call(gather, HTTPRequest(vars={"var_a": "x", "var_b": "y"}))
            assert json.loads(stop_body(result.action)) == ["x", "y"]

    arun(scenario(), timeout=10)


def test_plugin_timeout_on_an_unanswered_var(async_runner: RunningRunner) -> None:
    """The plugin's own asyncio.timeout expires while its question is out:
    the plugin goes on and answers the call."""

    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-short-timeout-var")
            ok = await client.prepare_conf([("stop", '{"body": "ok"}')])
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=3)))
            rpc_type, payload = await client.read_frame()
            assert rpc_type == RPC_EXTRA_INFO
            assert b"slow_var" in payload
            rpc_type, payload = await asyncio.wait_for(client.read_frame(), DEADLINE_BOUND)
            assert rpc_type == RPC_HTTP_REQ_CALL
            assert stop_of_final(payload) == (3, 200, b"gave up on slow_var")
            assert (await client.call(ok, HTTPRequest())).action == OK_STOP

    arun(scenario(), timeout=10)


def test_late_answer_after_plugin_timeout_is_dropped(async_runner: RunningRunner) -> None:
    """As above, but the answer comes after all, as APISIX sends it: APISIX
    answers every question it reads (it reads the question before the final
    frame), so a slow answer (a large body, a slow client) reaches the runner
    after the call was answered. The connection stays in step: the next call
    gets its own answer, not an error frame for the stray answer."""

    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-short-timeout-var")
            ok = await client.prepare_conf([("stop", '{"body": "ok"}')])
            await client.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=4)))
            rpc_type, _ = await client.read_frame()
            assert rpc_type == RPC_EXTRA_INFO
            rpc_type, payload = await asyncio.wait_for(client.read_frame(), DEADLINE_BOUND)
            assert rpc_type == RPC_HTTP_REQ_CALL
            assert stop_of_final(payload) == (4, 200, b"gave up on slow_var")
            # The answer APISIX sends for the question it read first.
            await client.send_frame(RPC_EXTRA_INFO, extra_info_resp(b"late"))
            for _ in range(2):
                assert (await client.call(ok, HTTPRequest())).action == OK_STOP

    arun(scenario(), timeout=10)


def test_child_task_asks_while_the_plugin_awaits_a_var(async_runner: RunningRunner) -> None:
    """The plugin awaits its var while a task it created asks another one:
    both answers must reach their awaiters and the call must finish."""

    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-child-var")
            request = HTTPRequest(id=8, vars={"var_a": "A", "var_b": "B"})
            call = asyncio.ensure_future(client.call(token, request))
            done, _ = await asyncio.wait({call}, timeout=CALL_TIMEOUT + 2)
            if not done:
                call.cancel()
            assert done, (
                f"no answer within {CALL_TIMEOUT + 2} s (call_timeout {CALL_TIMEOUT} s), "
                "not even SERVICE_UNAVAILABLE"
            )
            result = call.result()
            assert result.extra_info == [("var", "var_a"), ("var", "var_b")]
            assert json.loads(stop_body(result.action)) == ["A", "B"]

    arun(scenario(), timeout=10)


def test_a_call_that_cancels_itself_is_answered(async_runner: RunningRunner) -> None:
    """A plugin that cancels its own call: APISIX still gets SERVICE_UNAVAILABLE
    at once (not its 60 s timeout), and the connection goes on."""

    async def scenario() -> None:
        async with await async_runner.client() as client:
            token = await token_for(client, "t-cancel-self")
            ok = await token_for(client, "t-current-task", key="route#2#ext-plugin-pre-req#x")
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(RunnerError) as err:
                    await asyncio.wait_for(client.call(token, HTTPRequest()), CALL_TIMEOUT)
                assert err.value.code == SERVICE_UNAVAILABLE
                assert time.monotonic() - started < CALL_TIMEOUT
                result = await client.call(ok, HTTPRequest(vars={"remote_addr": "1.1.1.1"}))
                assert stop_body(result.action) == b"task ok, done=False"

    arun(scenario(), timeout=10)
    assert "the call was cancelled" in wait_for_log(async_runner, "the call was cancelled")

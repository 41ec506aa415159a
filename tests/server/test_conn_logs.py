"""What a worker logs when every request fails the same way: one line in
full (with its traceback), then a count; the metrics still count every call.
A Connection served in-process, talked to by the test kit's Client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runner import Plugin, Request, Response
from runner.api import dispatch
from runner.conf import confstore
from runner.conf.confstore import ConfStore
from runner.conf.sharedstore import SqliteBackend
from runner.ops import logs
from runner.ops.metrics import WorkerMetrics
from runner.server import conn
from runner.server.conn import ServerState, make_factory
from runner.testing import RPC_ERROR, RPC_HTTP_REQ_CALL, Client, HTTPRequest, RunnerError

BAD_REQUEST, SERVICE_UNAVAILABLE = 0, 1


class Boom(Plugin):
    name = "boom"

    def filter(self, conf: Any, request: Request, response: Response) -> None:
        raise RuntimeError("kaboom")


class Passes(Plugin):
    name = "passes"

    async def filter(self, conf: Any, request: Request, response: Response) -> None:
        await asyncio.sleep(0)


class Sleeper(Plugin):
    name = "sleeper"

    async def filter(self, conf: Any, request: Request, response: Response) -> None:
        await asyncio.sleep(30)


class KeysConfig(msgspec.Struct):  # a plain Struct, as the README shows
    keys: list[str] = []


class KeyAuth(Plugin):
    name = "key-auth"
    Config = KeysConfig

    def filter(self, conf: KeysConfig, request: Request, response: Response) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Body = Callable[[Client], Awaitable[None]]


class Worker:
    """One ServerState served on a Unix socket in this process; its limiters
    fresh (no kinds left from other tests) and on a clock the test moves."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.loop = loop
        self.tmp_path = tmp_path
        self.caplog = caplog
        self.clock = Clock()
        self.metrics = WorkerMetrics()

    def serve(self, body: Body, call_timeout: float = 5.0) -> WorkerMetrics:
        store = str(self.tmp_path / "confs.sqlite3")
        SqliteBackend.create(store, 60.0, 100)
        plugins: dict[str, Plugin] = {p.name: p for p in (Boom(), Passes(), Sleeper(), KeyAuth())}
        confs = ConfStore(plugins, SqliteBackend(store, 60.0, 100), metrics=self.metrics)
        state = ServerState(confs, call_timeout)

        async def main() -> None:
            path = str(self.tmp_path / "r.sock")
            server = await self.loop.create_unix_server(make_factory(state), path)
            try:
                async with await Client.connect(path) as client:
                    await body(client)
            finally:
                server.close()

        self.loop.run_until_complete(main())
        return self.metrics

    def lines(self, needle: str) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if needle in r.getMessage()]

    def later(self, seconds: float = 10.0) -> None:
        """Time passes, no further call comes; the worker's housekeeping flushes."""
        self.clock.now += seconds
        logs.flush()


@pytest.fixture
def worker(
    loop: asyncio.AbstractEventLoop,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Worker:
    w = Worker(loop, tmp_path, caplog)
    for module in (dispatch, conn, confstore):
        monkeypatch.setattr(module, "limited", logs.LogLimiter(module.log, clock=w.clock))
    return w


def test_a_plugin_raising_on_every_call_logs_one_traceback(worker: Worker) -> None:
    async def body(client: Client) -> None:
        token = await client.prepare_conf([("boom", "")])
        for i in range(200):
            with pytest.raises(RunnerError) as err:
                await client.call(token, HTTPRequest(id=i))
            assert err.value.code == SERVICE_UNAVAILABLE
            worker.clock.now += 0.01

    metrics = worker.serve(body)
    (raised,) = worker.lines("plugin 'boom' raised")
    assert raised.getMessage() == "request 0: plugin 'boom' raised"
    assert raised.exc_info is not None and "kaboom" in worker.caplog.text
    assert worker.caplog.text.count("Traceback") == 1
    # Every call counted all the same.
    assert metrics.plugins["boom"].other == {"error": 200}
    assert metrics.rpc["http_req_call"].errors == {"service_unavailable": 200}

    worker.later()
    (summary,) = worker.lines("more times")
    assert summary.getMessage().startswith("plugin 'boom' raised RuntimeError: 199 more times")


def test_a_rejected_config_retried_per_request_logs_once_per_route_key(worker: Worker) -> None:
    async def body(client: Client) -> None:
        for key in ("route#1", "route#2"):
            for _ in range(50):  # APISIX sends PrepareConf again for each request
                with pytest.raises(RunnerError) as err:
                    await client.prepare_conf([("bo0m", "")], key=key)
                assert err.value.code == BAD_REQUEST

    metrics = worker.serve(body)
    rejected = [r.getMessage() for r in worker.lines("rejected")]
    assert [m.split(" rejected")[0] for m in rejected] == [
        "PrepareConf for route key route#1", "PrepareConf for route key route#2",
    ]  # fmt: skip
    assert "unknown plugin 'bo0m'" in rejected[0]
    assert metrics.rpc["prepare_conf"].errors == {"bad_request": 100}
    worker.later()
    assert len(worker.lines("49 more times")) == 2


def test_malformed_frames_log_one_warning_then_a_count(worker: Worker) -> None:
    async def body(client: Client) -> None:
        for _ in range(100):
            await client.send_frame(RPC_HTTP_REQ_CALL, b"\xff\xff")
            rpc_type, _ = await client.read_frame()
            assert rpc_type == RPC_ERROR

    metrics = worker.serve(body)
    assert len(worker.lines("HTTPReqCall: malformed request")) == 1
    assert metrics.malformed == 100
    assert metrics.rpc["http_req_call"].errors == {"bad_request": 100}
    worker.later()
    assert len(worker.lines("HTTPReqCall: malformed request: 99 more times")) == 1


def test_call_timeout_names_the_plugin_still_running(worker: Worker) -> None:
    async def body(client: Client) -> None:
        token = await client.prepare_conf([("passes", ""), ("sleeper", ""), ("passes", "")])
        with pytest.raises(RunnerError) as err:
            await client.call(token, HTTPRequest(id=7))
        assert err.value.code == SERVICE_UNAVAILABLE

    worker.serve(body, call_timeout=0.2)
    (line,) = worker.lines("did not finish")
    assert line.getMessage().startswith(
        "request 7: plugins did not finish within 0.2 s: plugin 'sleeper' was still running"
    ), line.getMessage()


def test_a_misspelled_config_key_is_rejected_naming_it(worker: Worker) -> None:
    async def body(client: Client) -> None:
        with pytest.raises(RunnerError) as err:
            await client.prepare_conf([("key-auth", '{"kes": ["k1"]}')], key="route#k")
        assert err.value.code == BAD_REQUEST
        assert await client.prepare_conf([("key-auth", '{"keys": ["k1"]}')], key="route#k")

    worker.serve(body)
    (line,) = worker.lines("rejected")
    message = line.getMessage()
    assert "route#k" in message and "'key-auth'" in message and "`kes`" in message, message

"""Conf churn and token lifetimes against the real runner.

* Churn: PrepareConf with a new key every time (APISIX's route keys carry the
  config version, so a busy control plane produces exactly this) on 16
  connections, one frame in flight per connection. With ``max_entries: 1000``
  and ``worker_cache: 500`` the worker's RSS must not grow between the first
  quarter and the end: each conf carries a 1 KiB body, so keeping even one
  object per conf would show as 75+ MiB. The default run sends 100,000 confs
  (9-13 s on 2 cores, 25 s while other test runs load them); the 200,000
  variant is marked ``slow`` (28 s on 2 cores).
* After the churn: the newest tokens resolve (from the worker's cache, and
  from the shared store past it) to their own config, never another's; a
  token the store evicted answers CONF_TOKEN_NOT_FOUND.
* Expiry: with ``APISIX_CONF_EXPIRE_TIME=0.5`` a token lives 2 x 0.5 = 1 s
  after its last use (``Settings.token_ttl``): an idle one then answers
  CONF_TOKEN_NOT_FOUND in every worker, one in use keeps sliding, and
  re-preparing a route after expiry never brings back the old config.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.testing import (
    RPC_ERROR,
    RPC_HTTP_REQ_CALL,
    RPC_PREPARE_CONF,
    Client,
    HTTPRequest,
    RunnerError,
    Stop,
    build_prepare_conf,
    build_req_call,
    encode_frame,
    parse_req_call_resp,
)
from runner.testing._a6.A6.PrepareConf.Resp import Resp as PrepareConfResp
from runner.testing.pytest_plugin import RunningRunner

from .conftest import arun, err_code, start_runner

HARDENING_DIR = str(Path(__file__).resolve().parent / "plugins_hardening")

CONF_TOKEN_NOT_FOUND = 2
MAX_ENTRIES = 1000
WORKER_CACHE = 500
CONNECTIONS = 16
PAD = "x" * 1014  # each conf's body: 10 digits + PAD = 1 KiB
DIGITS = b"0000000000"


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    header = sock.recv(4, socket.MSG_WAITALL)
    assert len(header) == 4, f"closed by the runner (got {header!r})"
    length = int.from_bytes(header[1:], "big")
    payload = sock.recv(length, socket.MSG_WAITALL) if length else b""
    assert len(payload) == length, "truncated frame"
    return header[0], payload


def body_of(i: int) -> bytes:
    return b"%010d" % i + PAD.encode()


class Churn:
    """PrepareConf frames built once; conf ``i`` differs only in the ten
    digits of its key and of its body, patched in place."""

    def __init__(self) -> None:
        conf = [("stop", json.dumps({"body": DIGITS.decode() + PAD}))]
        self.frame = bytearray(
            encode_frame(RPC_PREPARE_CONF, build_prepare_conf(conf, "route#churn#" + "0" * 10))
        )
        self.key_at = self.frame.index(DIGITS)
        self.body_at = self.frame.index(DIGITS, self.key_at + 10)

    def prepare(self, socks: list[socket.socket], first: int, keep: dict[int, int]) -> None:
        """Confs ``first .. first+len(socks)-1``, one per connection, sent
        together, then every answer read; tokens of indexes in ``keep`` noted."""
        frame = self.frame
        for n, sock in enumerate(socks):
            digits = b"%010d" % (first + n)
            frame[self.key_at : self.key_at + 10] = digits
            frame[self.body_at : self.body_at + 10] = digits
            sock.sendall(frame)
        for n, sock in enumerate(socks):
            rpc_type, payload = recv_frame(sock)
            assert rpc_type == RPC_PREPARE_CONF, (first + n, rpc_type, payload)
            if first + n in keep:
                keep[first + n] = int(PrepareConfResp.GetRootAs(payload, 0).ConfToken())


def call(sock: socket.socket, token: int) -> Stop | int:
    """One HTTPReqCall: the Stop it got, or the error code."""
    sock.sendall(encode_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(id=1))))
    rpc_type, payload = recv_frame(sock)
    if rpc_type == RPC_ERROR:
        return err_code(payload)
    assert rpc_type == RPC_HTTP_REQ_CALL
    action = parse_req_call_resp(payload, []).action
    assert isinstance(action, Stop), action
    return action


@pytest.fixture(autouse=True)
def _slow_only_when_selected(request: pytest.FixtureRequest) -> None:
    """A ``slow`` test runs only when a ``-m`` expression selected it (the
    default run has none today; see pyproject's addopts)."""
    if request.node.get_closest_marker("slow") and not request.config.getoption("markexpr"):
        pytest.skip("slow: select it with -m slow")


def serving_worker(runner: RunningRunner, timeout: float = 10.0) -> int:
    """The pid of the only worker, once it serves (the socket accepts
    connections as soon as the supervisor listens, before any worker exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = children(runner.proc.pid)
        if len(workers) == 1:
            (pid,) = workers
            if re.search(rf"pid {pid}\] runner\.worker: serving on", runner.log_text()):
                return pid
        time.sleep(0.01)
    pytest.fail(f"no serving worker: {children(runner.proc.pid)}; log:\n{runner.log_text()}")


@pytest.fixture
def churn_runner() -> Iterator[RunningRunner]:
    config = {
        "workers": 1,
        "conf_cache": {"max_entries": MAX_ENTRIES, "worker_cache": WORKER_CACHE},
    }
    running = start_runner(plugins_dir=None, config=config)
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("total", "first_mark", "limit_mib"),
    [
        pytest.param(100_000, 25_000, 10, id="100k"),
        pytest.param(200_000, 50_000, 20, id="200k", marks=pytest.mark.slow),
    ],
)
def test_churn_keeps_rss_bounded_by_the_lru(
    churn_runner: RunningRunner, total: int, first_mark: int, limit_mib: int
) -> None:
    worker = serving_worker(churn_runner)
    churn = Churn()
    # Tokens to check afterwards: the first, and some of the last 1500.
    keep = dict.fromkeys([0, total - 1500, total - 1100, total - 800, total - 300, total - 1], 0)
    socks = []
    for _ in range(CONNECTIONS):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30.0)  # every read bounded
        sock.connect(churn_runner.socket_path)
        socks.append(sock)
    rss: dict[int, int] = {}
    started = time.monotonic()
    try:
        for first in range(0, total, CONNECTIONS):
            batch = socks[: min(CONNECTIONS, total - first)]
            churn.prepare(batch, first, keep)
            done = first + len(batch)
            if done % 25_000 < CONNECTIONS and done >= first_mark:
                rss[done] = rss_kib(worker)
        elapsed = time.monotonic() - started

        # The newest confs resolve to themselves, from the worker's cache
        # (the last 500) and from the store behind it (the last 1000).
        for i in (total - 1, total - 300, total - 800):
            assert call(socks[0], keep[i]) == Stop(200, [], body_of(i)), i
        # Evicted from the store: not found, never some other route's config.
        for i in (0, total - 1500, total - 1100):
            assert call(socks[0], keep[i]) == CONF_TOKEN_NOT_FOUND, i
    finally:
        for sock in socks:
            sock.close()

    marks = sorted(rss)
    growth = rss[marks[-1]] - rss[marks[0]]
    print(
        f"{total} PrepareConf in {elapsed:.1f} s ({total / elapsed:.0f}/s); "
        f"worker RSS (KiB) by confs sent: {rss}; growth {growth} KiB"
    )
    assert marks[0] <= first_mark + 25_000 and marks[-1] == total, marks
    assert growth < limit_mib * 1024, rss
    assert children(churn_runner.proc.pid) == {worker}


# --------------------------------------------------------------------------- expiry

EXPIRE = 0.5  # APISIX_CONF_EXPIRE_TIME; the runner's ttl is twice that
TTL = 2 * EXPIRE


@pytest.fixture(scope="module")
def short_ttl() -> Iterator[RunningRunner]:
    running = start_runner(
        plugins_dir=HARDENING_DIR,
        config={"workers": 2},
        extra_env={"APISIX_CONF_EXPIRE_TIME": str(EXPIRE)},
    )
    yield running
    running.stop()


async def answer(client: Client, token: int) -> bytes | int:
    """The Stop body a token's call gets, or the error code."""
    try:
        result = await client.call(token, HTTPRequest())
    except RunnerError as exc:
        return exc.code
    assert isinstance(result.action, Stop), result
    return result.action.body


def conf(body: str) -> list[tuple[str, str]]:
    return [("stop", json.dumps({"body": body}))]


async def one_per_worker(runner: RunningRunner) -> list[Client]:
    """Connections until both workers serve one (the kernel picks which)."""
    clients: list[Client] = []
    seen: set[bytes | int] = set()
    pid_token = 0
    for _ in range(64):
        client = await runner.client()
        clients.append(client)
        if not pid_token:
            pid_token = await client.prepare_conf([("h-pid", "")], "route#pid#1")
        seen.add(await answer(client, pid_token))
        if len(seen) == 2:
            return clients
    for client in clients:
        await client.close()
    pytest.fail(f"64 connections, all served by {seen}")


def test_idle_token_expires_in_every_worker(short_ttl: RunningRunner) -> None:
    async def scenario() -> None:
        clients = await one_per_worker(short_ttl)
        try:
            token = await clients[0].prepare_conf(conf("idle"), "route#idle#1")
            # Both workers resolve it, so both have it in their cache.
            for client in clients:
                assert await answer(client, token) == b"idle"
            await asyncio.sleep(TTL * 1.5)
            for client in clients:
                assert await answer(client, token) == CONF_TOKEN_NOT_FOUND
        finally:
            for client in clients:
                await client.close()

    arun(scenario())


def test_token_in_use_keeps_sliding(short_ttl: RunningRunner) -> None:
    async def scenario() -> None:
        clients = await one_per_worker(short_ttl)
        try:
            a, b = clients[-2:]  # the last one reached the second worker
            token = await a.prepare_conf(conf("busy"), "route#busy#1")
            deadline = time.monotonic() + TTL * 2.5
            n = 0
            while time.monotonic() < deadline:
                # Used every 0.2 TTL, by one worker or the other.
                assert await answer((a, b)[n % 2], token) == b"busy", n
                n += 1
                await asyncio.sleep(TTL * 0.2)
            assert n >= 8
        finally:
            for client in clients:
                await client.close()

    arun(scenario())


def test_reprepared_route_never_gets_the_expired_config(short_ttl: RunningRunner) -> None:
    async def scenario() -> None:
        async with await short_ttl.client() as client:
            old = await client.prepare_conf(conf("v1"), "route#v#1")
            assert await client.prepare_conf(conf("v1"), "route#v#1") == old  # idempotent
            assert await answer(client, old) == b"v1"
            await asyncio.sleep(TTL * 1.5)
            # The same route and config again: a new token; the old one is gone.
            again = await client.prepare_conf(conf("v1"), "route#v#1")
            assert again != old
            assert await answer(client, old) == CONF_TOKEN_NOT_FOUND
            new = await client.prepare_conf(conf("v2"), "route#v#1")
            assert new not in (old, again)
            assert await answer(client, new) == b"v2"
            assert await answer(client, again) == b"v1"
            assert await answer(client, old) == CONF_TOKEN_NOT_FOUND

    arun(scenario())


# --------------------------------------------------------------------------- eviction


def test_token_evicted_by_the_store_is_not_served_from_a_worker_cache() -> None:
    running = start_runner(
        plugins_dir=None, config={"workers": 1, "conf_cache": {"max_entries": 100}}
    )
    try:

        async def scenario() -> None:
            async with await running.client() as client:
                first = await client.prepare_conf(conf("first"), "route#evict#first")
                assert await answer(client, first) == b"first"
                for i in range(150):
                    await client.prepare_conf(conf(f"r{i}"), f"route#evict#{i}")
                assert await answer(client, first) == CONF_TOKEN_NOT_FOUND

        arun(scenario())
    finally:
        running.stop()

"""Connections belong to the pool of workers (docs/operations.md, "Connections
and workers"): spread at accept, handed over instead of closed when a worker
retires or holds more than its share, and ``workers`` changes on SIGHUP.

Connections are counted from the runner's side: the connected sockets at the
runner's path (/proc/net/unix) among each worker's open files."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from runner.testing import Client, HTTPRequest, Stop
from runner.testing.pytest_plugin import RunnerFactory, accepts, runner_env

from .conftest import arun
from .test_supervisor import (
    PLUGINS_DIR,
    WHOAMI,
    WHOAMI_KEY,
    Pool,
    children,
    serves,
    serving_workers,
    socket_inodes,
    until,
    wait_until,
)

SS_CONNECTED = 3  # /proc/net/unix "St" of a connected socket


def connected_inodes(path: str) -> set[int]:
    found = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and int(fields[5], 16) == SS_CONNECTED:
            found.add(int(fields[6]))
    return found


def per_worker(path: str, workers: set[int]) -> list[int]:
    """How many of the runner's connections each worker holds, sorted."""
    ours = connected_inodes(path)
    return sorted(len(socket_inodes(pid) & ours) for pid in workers)


async def open_at_once(path: str, n: int) -> tuple[list[Client], int]:
    """``n`` connections opened together, each with an answered call; and the
    conf token they used."""
    clients = await asyncio.gather(*(Client.connect(path) for _ in range(n)))
    token = await clients[0].prepare_conf(WHOAMI, key=WHOAMI_KEY)
    await asyncio.gather(*(c.call(token, HTTPRequest(path="/")) for c in clients))
    return list(clients), token


async def open_one_by_one(path: str, n: int) -> list[Client]:
    """Each connection sends a call and has its answer before the next opens."""
    clients = []
    for _ in range(n):
        client = await Client.connect(path)
        token = await client.prepare_conf(WHOAMI, key=WHOAMI_KEY)
        await client.call(token, HTTPRequest(path="/"))
        clients.append(client)
    return clients


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def settled(path: str, workers: set[int], n: int) -> list[int]:
    """The spread once all ``n`` connections are seen on the runner's side."""
    await until(lambda: sum(per_worker(path, workers)) == n, 2.0)
    return per_worker(path, workers)


@pytest.mark.parametrize("n", [16, 64])
def test_connections_opened_at_once_spread_evenly(runner_factory: RunnerFactory, n: int) -> None:
    runner = runner_factory(plugins_dir=PLUGINS_DIR, workers=4)
    workers = serving_workers(runner, 4)

    async def scenario() -> list[int]:
        clients, _ = await open_at_once(runner.socket_path, n)
        try:
            return await settled(runner.socket_path, workers, n)
        finally:
            await close_all(clients)

    spread = arun(scenario())
    assert sum(spread) == n, spread
    assert all(abs(count - n // 4) <= 1 for count in spread), spread


def test_connections_opened_one_by_one_spread_evenly(runner_factory: RunnerFactory) -> None:
    runner = runner_factory(plugins_dir=PLUGINS_DIR, workers=4)
    workers = serving_workers(runner, 4)

    async def scenario() -> list[int]:
        clients = await open_one_by_one(runner.socket_path, 8)
        try:
            return await settled(runner.socket_path, workers, 8)
        finally:
            await close_all(clients)

    spread = arun(scenario())
    assert sum(spread) == 8 and max(spread) <= 3, spread


def test_a_worker_above_its_share_hands_connections_over(runner_factory: RunnerFactory) -> None:
    """Kill one of two workers under 16 idle connections: the clients of the
    dead one reconnect, the replacement gets them, and the survivor, above
    its share, hands some of its own over until both are within one of 8;
    the survivor's clients never see their connection close."""
    runner = runner_factory(plugins_dir=PLUGINS_DIR, workers=2)
    workers = serving_workers(runner, 2)
    path = runner.socket_path

    async def scenario() -> tuple[list[int], list[int]]:
        clients, token = await open_at_once(path, 16)
        try:
            await settled(path, workers, 16)
            # Accepts may land 9/7 for a moment; rebalancing evens them out.
            # The victim must hold 8 for "8 reopened" to be the claim.
            assert await until(lambda: per_worker(path, workers) == [8, 8], 5.0) is not None
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            # The victim's 8 clients find their connection closed: reopen them
            # (APISIX's pool does the same), two at a time, not all at once.
            survivors, reopened = [], []
            for client in clients:
                try:
                    await client.call(token, HTTPRequest(path="/"))
                    survivors.append(client)
                except Exception:
                    await client.close()
                    reopened += await open_one_by_one(path, 1)
            now = children(runner.proc.pid)
            took = await until(lambda: per_worker(path, now) == [8, 8], 5.0)
            spread = per_worker(path, now)
            assert took is not None, spread
            # Everyone is still served, and nothing the survivor held was closed.
            for client in survivors + reopened:
                await client.call(token, HTTPRequest(path="/"))
            await close_all(survivors + reopened)
            return spread, [len(survivors), len(reopened)]
        except BaseException:
            await close_all(clients)
            raise

    spread, (kept, reopened) = arun(scenario())
    assert spread == [8, 8]
    assert (kept, reopened) == (8, 8)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "config.yaml"


@pytest.fixture
def unflagged_runner(config_file: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """A runner started without --workers: config.yaml's ``workers`` rules,
    and SIGHUP re-reads it."""
    config_file.write_text(yaml.safe_dump({"plugin_dirs": [PLUGINS_DIR], "workers": 2}))
    sock_dir = tempfile.mkdtemp(prefix="ar-", dir="/tmp")  # AF_UNIX paths are short
    sock = os.path.join(sock_dir, "r.sock")
    log = config_file.parent / "runner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "start", "--config", str(config_file), "--foreground"],
            env=runner_env(sock), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not accepts(sock):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield proc, sock, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_workers_change_on_sighup_without_losing_a_call(
    unflagged_runner: tuple[subprocess.Popen[bytes], str, Path], config_file: Path
) -> None:
    proc, sock, log = unflagged_runner

    def pool_of(n: int, generation: int = 0) -> set[int]:
        """The workers, once the reload to ``generation`` is done and the old ones left."""

        def ready() -> bool:
            workers = children(proc.pid)
            text = log.read_text()
            done = generation == 0 or f"reload done: generation {generation}," in text
            return done and len(workers) == n and all(serves(text, w) for w in workers)

        assert wait_until(ready, 15.0) is not None, (children(proc.pid), log.read_text()[-3000:])
        return children(proc.pid)

    pool_of(2)

    async def scenario() -> tuple[Pool, list[list[int]]]:
        async with await Client.connect(sock) as client:
            token = await client.prepare_conf(WHOAMI, key=WHOAMI_KEY)
        pool = Pool(sock, token, 12)
        await pool.start()
        spreads = []
        try:
            for generation, n in enumerate((3, 1, 2), start=1):
                config = {"plugin_dirs": [PLUGINS_DIR], "workers": n}
                config_file.write_text(yaml.safe_dump(config))
                proc.send_signal(signal.SIGHUP)
                workers = await asyncio.to_thread(pool_of, n, generation)
                share = -(-12 // n)
                # Balanced, and all 12 held by a worker: a connection being
                # handed over is, for a moment, in no worker's descriptors.
                seen: list[list[int]] = []

                def settled(
                    w: set[int] = workers, s: int = share, seen: list[list[int]] = seen
                ) -> bool:
                    seen.append(per_worker(sock, w))
                    return max(seen[-1]) <= s and sum(seen[-1]) == 12

                balanced = await until(settled, 5)
                assert balanced is not None, (n, seen[-3:])
                spreads.append(seen[-1])
        finally:
            await pool.stop()
        return pool, spreads

    pool, spreads = arun(scenario())
    assert pool.errors == [], pool.errors[:5]
    assert pool.closed == [], pool.closed[:5]
    assert [len(s) for s in spreads] == [3, 1, 2], spreads
    assert all(sum(s) == 12 for s in spreads), spreads
    assert "workers: 2 -> 3" in log.read_text()


def test_max_requests_recycles_workers_without_closing_a_connection(
    runner_factory: RunnerFactory,
) -> None:
    runner = runner_factory(
        plugins_dir=PLUGINS_DIR, workers=2, config={"max_requests": 300, "max_requests_jitter": 50}
    )
    serving_workers(runner, 2)

    async def scenario() -> Pool:
        async with await runner.client() as client:
            token = await client.prepare_conf(WHOAMI, key=WHOAMI_KEY)
        pool = Pool(runner.socket_path, token, 8)
        await pool.start()
        try:
            recycled = await until(lambda: runner.log_text().count("after max_requests") >= 4, 20)
            assert recycled is not None, runner.log_text()[-3000:]
        finally:
            await pool.stop()
        return pool

    pool = arun(scenario())
    assert pool.errors == [], pool.errors[:5]
    assert pool.closed == [], pool.closed[:5]
    assert pool.moves, "no connection was handed over"


def test_a_stuck_worker_does_not_hold_new_connections(runner_factory: RunnerFactory) -> None:
    """The least-loaded worker is the only one that accepts; if a plugin holds
    its loop, another worker takes the waiting connection after two
    housekeeping rounds instead of leaving APISIX waiting for the plugin."""
    ops = str(Path(__file__).resolve().parent / "plugins_ops")
    runner = runner_factory(
        workers=2, config={"plugin_dirs": [PLUGINS_DIR, ops], "inline_timeout": 30}
    )
    workers = serving_workers(runner, 2)
    path = runner.socket_path

    async def scenario() -> tuple[int, int]:
        clients, token = await open_at_once(path, 3)  # 2 on one worker, 1 on the other
        try:
            await settled(path, workers, 3)
            pids = [await whoami_of(c, token) for c in clients]
            lonely = next(p for p in pids if pids.count(p) == 1)  # the least loaded
            blocker = clients[pids.index(lonely)]
            sleepy = await blocker.prepare_conf([("sleepy-sync", '{"seconds": 3}')])
            stuck = asyncio.ensure_future(blocker.call(sleepy, HTTPRequest()))
            await asyncio.sleep(0.1)  # its loop is held now
            late = await Client.connect(path)
            try:
                served_by = await whoami_of(late, await late.prepare_conf(WHOAMI, key=WHOAMI_KEY))
            finally:
                await late.close()
            await stuck
            return lonely, served_by
        finally:
            await close_all(clients)

    lonely, served_by = arun(scenario())
    assert served_by != lonely  # taken by the other worker, not after the 3 s sleep


async def whoami_of(client: Client, token: int) -> int:
    result = await client.call(token, HTTPRequest(path="/"))
    assert isinstance(result.action, Stop)
    return int(result.action.body.decode().rpartition(":")[2])

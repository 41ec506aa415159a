"""A worker killed with SIGKILL under load, against the real runner.

Two workers, 64 APISIX-like connections each calling an ``async def`` plugin
that takes 50 ms (``h-slow-pid``, which answers with its worker's pid, so
every connection knows its worker). One worker is SIGKILLed:

* the supervisor has a new worker serving within 1 s;
* the only calls that fail are those that were in flight on the killed
  worker's connections: each such connection fails exactly once, and no
  connection of the other worker fails or stalls;
* every connection opened after the kill (the failed ones reconnect, as
  APISIX's pool does, plus fresh ones) is served.

test_supervisor.py kills a worker under a sync load and checks the respawn;
this test counts the failures against the calls in flight.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.testing import Client, HTTPRequest, ProtocolError, RunnerError, Stop
from runner.testing.pytest_plugin import RunningRunner

from .conftest import PLUGINS_DIR, arun, start_runner

HARDENING_DIR = str(Path(__file__).resolve().parent / "plugins_hardening")
CONNECTIONS = 64
RESPAWN_LIMIT_S = 1.0


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def serving(log: str, pid: int) -> bool:
    return re.search(rf"pid {pid}\] runner\.worker: serving on", log) is not None


def workers_serving(runner: RunningRunner, n: int, gone: set[int]) -> Callable[[], bool]:
    """A predicate: exactly ``n`` workers, none of ``gone``, all serving."""

    def ready() -> bool:
        workers = children(runner.proc.pid)
        if len(workers) != n or workers & gone:
            return False
        log = runner.log_text()
        return all(serving(log, w) for w in workers)

    return ready


async def until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``predicate()`` held (polling without blocking the load)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            return None
        await asyncio.sleep(0.002)
    return time.monotonic() - start


@dataclass
class Line:
    """One APISIX connection slot: its current worker and what happened to it."""

    index: int
    pid: int | None = None
    in_flight: bool = False
    calls: int = 0
    connects: int = 0
    failures: list[tuple[int | None, str]] = field(default_factory=list)
    calls_after_failure: int = 0
    moves: int = 0  # handed over to another worker (rebalancing), never closed


class Load:
    """``size`` connections calling ``token`` back to back; a connection the
    runner closes is noted as a failure of its worker and reopened."""

    def __init__(self, path: str, token: int, size: int) -> None:
        self.path = path
        self.token = token
        self.lines = [Line(i) for i in range(size)]
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._run(line)) for line in self.lines]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 15.0)

    def by_worker(self) -> Counter[int | None]:
        return Counter(line.pid for line in self.lines)

    async def _run(self, line: Line) -> None:
        client: Client | None = None
        n = 0
        try:
            while not self._stop.is_set() and len(self.errors) < 20:
                if client is None:
                    client = await Client.connect(self.path, read_timeout=5.0)
                    line.connects += 1
                    line.pid = None  # known again after the first answer
                n += 1
                line.in_flight = True
                try:
                    result = await client.call(self.token, HTTPRequest(id=n))
                except (ProtocolError, ConnectionError) as exc:
                    line.in_flight = False
                    line.failures.append((line.pid, repr(exc)))
                    await client.close()
                    client = None
                    continue
                line.in_flight = False
                action = result.action
                if result.id != n or not isinstance(action, Stop) or action.status != 200:
                    self.errors.append(f"connection {line.index}: unexpected {result}")
                    continue
                pid = int(action.body)
                if line.pid is None:
                    line.pid = pid
                elif pid != line.pid:
                    line.pid = pid
                    line.moves += 1
                line.calls += 1
                if line.failures:
                    line.calls_after_failure += 1
        except RunnerError as exc:
            self.errors.append(f"connection {line.index}: error frame {exc.name}")
        except Exception as exc:  # a failed reconnect, a timeout: report, never hang
            self.errors.append(f"connection {line.index}: {exc!r}")
        finally:
            if client is not None:
                await client.close()


@pytest.fixture
def two_workers() -> Iterator[RunningRunner]:
    config = {"plugin_dirs": [PLUGINS_DIR, HARDENING_DIR], "workers": 2}
    running = start_runner(plugins_dir=None, config=config)
    yield running
    running.stop()


def test_sigkill_under_load_fails_only_the_calls_in_flight(two_workers: RunningRunner) -> None:
    runner = two_workers
    supervisor = runner.proc.pid

    async def scenario() -> None:
        ready = await until(workers_serving(runner, 2, set()), 10.0)
        assert ready is not None, runner.log_text()
        async with await runner.client() as client:
            token = await client.prepare_conf([("h-slow-pid", "50")], "route#slow#1")

        load = Load(runner.socket_path, token, CONNECTIONS)
        load.start()
        try:
            started = await until(
                lambda: all(line.pid for line in load.lines) or bool(load.errors), 15.0
            )
            assert started is not None and not load.errors, (load.by_worker(), load.errors)
            await asyncio.sleep(0.3)  # steady state: every connection busy

            # From here to os.kill nothing awaits, so no client moves: the
            # snapshot is the state of every connection at the kill.
            held = load.by_worker()
            victim = held.most_common(1)[0][0]
            assert victim is not None
            on_victim = [line for line in load.lines if line.pid == victim]
            others = [line for line in load.lines if line.pid != victim]
            in_flight = sum(line.in_flight for line in on_victim)
            calls_of_others = sum(line.calls for line in others)
            os.kill(victim, signal.SIGKILL)

            respawn = await until(workers_serving(runner, 2, {victim}), 5.0)
            assert respawn is not None, (children(supervisor), runner.log_text()[-3000:])
            assert respawn < RESPAWN_LIMIT_S, f"replaced after {respawn:.3f} s"
            # The replacement takes the reconnections and, by hand-over, its
            # share of the survivor's connections: within one of 64 / 2.
            share = CONNECTIONS // 2

            def balanced() -> bool:
                counts = load.by_worker()
                return len(counts) == 2 and all(abs(n - share) <= 1 for n in counts.values())

            took = await until(balanced, 5.0)
            assert took is not None, load.by_worker()
        finally:
            await load.stop()

        assert load.errors == [], load.errors[:5]
        failures = [(line.index, pid) for line in load.lines for pid, _ in line.failures]
        print(
            f"workers {dict(held)}; killed {victim} with {in_flight} calls in flight; "
            f"{len(failures)} failed; replaced in {respawn * 1000:.0f} ms"
        )
        # Only the victim's connections failed, each once, and no more of
        # them than had a call in flight.
        assert {pid for _, pid in failures} <= {victim}, failures
        assert len(failures) <= in_flight, (failures, in_flight)
        assert sorted(i for i, _ in failures) == sorted({i for i, _ in failures})
        assert failures, "the kill failed no call: was the victim serving anything?"
        # Every failed connection reconnected and was served again.
        for line in on_victim:
            if line.failures:
                assert line.connects == 2 and line.calls_after_failure > 0, line
        # The other worker's connections never failed and kept being served.
        assert all(not line.failures and line.connects == 1 for line in others)
        if others:
            assert sum(line.calls for line in others) > calls_of_others + len(others)

        # Connections opened now are all served (by whichever worker accepts them).
        fresh = [await runner.client() for _ in range(16)]
        try:
            for n, client in enumerate(fresh):
                result = await client.call(token, HTTPRequest(id=n))
                assert isinstance(result.action, Stop) and result.id == n
                assert int(result.action.body) in children(supervisor)
        finally:
            for client in fresh:
                await client.close()

    arun(scenario(), timeout=60)

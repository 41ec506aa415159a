"""Soak: mixed load, conf churn and periodic worker kills against the real runner.

Marked ``slow``: not part of the default run. Run it with::

    APISIX_SOAK_SECONDS=60 .venv/bin/pytest -m slow -s tests/integration/test_soak.py

(``APISIX_SOAK_SECONDS`` defaults to 600; ``APISIX_SOAK_KILL_EVERY`` to a
twentieth of that, at least 5 s.) Two workers serve 24 APISIX-like connections
that cycle through every kind of call, each answer checked exactly:

* Stop (``stop``), Rewrite (``rewrite``), ExtraInfo Var (``read-vars``),
  ExtraInfo ReqBody (``body-digest``), post-resp with a header change
  (``response-rewrite``), post-resp with ExtraInfo RespBody (``resp-body``)
  and an ``async def`` plugin that takes 20 ms (``h-slow-pid``);
* one more connection churns confs: a new route key every 10 ms, each new
  token called at once, and an old evicted one expected to be gone;
* every kill period the younger worker is SIGKILLed (so one worker lives
  through the whole run and its RSS tells about leaks); the supervisor must
  replace it within 1 s;
* connections are closed and reopened every 200-2000 calls, as APISIX's
  connection pool does, which spreads them over both workers again.

Asserted: no unexpected answer anywhere; the only failed calls are those of
connections on a killed worker, no more per kill than it had calls in flight;
the long-lived worker's RSS grows by less than 16 MiB after the warm-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.testing import (
    Client,
    HTTPRequest,
    ProtocolError,
    Rewrite,
    RunnerError,
    Stop,
)
from runner.testing.pytest_plugin import RunningRunner

from .conftest import PLUGINS_DIR, arun, start_runner

pytestmark = pytest.mark.slow

HARDENING_DIR = str(Path(__file__).resolve().parent / "plugins_hardening")
DURATION = float(os.environ.get("APISIX_SOAK_SECONDS", "600"))
KILL_EVERY = float(os.environ.get("APISIX_SOAK_KILL_EVERY", str(max(5.0, DURATION / 20))))
CONNECTIONS = 24
RESPAWN_LIMIT_S = 1.0
RSS_GROWTH_LIMIT_KIB = 16 * 1024
CONF_TOKEN_NOT_FOUND = 2
MAX_ENTRIES = 5000
CONFIG = {
    "plugin_dirs": [PLUGINS_DIR, HARDENING_DIR],
    "workers": 2,
    "conf_cache": {"max_entries": MAX_ENTRIES, "worker_cache": 1000},
}


@pytest.fixture(autouse=True)
def _slow_only_when_selected(request: pytest.FixtureRequest) -> None:
    """Runs only when a ``-m`` expression selected it (the default run has
    none today; see pyproject's addopts)."""
    if not request.config.getoption("markexpr"):
        pytest.skip("slow: select it with -m slow")


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def serving(log: str, pid: int) -> bool:
    return re.search(rf"pid {pid}\] runner\.worker: serving on", log) is not None


async def until(predicate: Callable[[], bool], timeout: float) -> float | None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            return None
        await asyncio.sleep(0.005)
    return time.monotonic() - start


# --------------------------------------------------------------------------- the mix


@dataclass(frozen=True)
class Routes:
    pid: int
    stop: int
    rewrite: int
    var: int
    digest: int
    resp_rewrite: int
    resp_body: int
    slow: int


async def prepare_routes(client: Client) -> Routes:
    p = client.prepare_conf
    return Routes(
        pid=await p([("h-pid", "")], "route#pid#1"),
        stop=await p([("stop", '{"status": 403, "body": "no"}')], "route#stop#1"),
        rewrite=await p(
            [("rewrite", '{"path": "/v2", "headers": {"X-A": "1"}, "args": {"d": null}}')],
            "route#rewrite#1",
        ),
        var=await p([("read-vars", '{"names": ["remote_addr"]}')], "route#var#1"),
        digest=await p([("body-digest", "")], "route#digest#1"),
        resp_rewrite=await p(
            [("response-rewrite", '{"headers": {"X-R": "1"}}')], "route#1#post-resp#rr"
        ),
        resp_body=await p([("resp-body", "")], "route#1#post-resp#body"),
        slow=await p([("h-slow-pid", "20")], "route#slow#1"),
    )


KINDS = ["stop", "rewrite", "var", "digest", "resp_rewrite", "resp_body", "slow"]


async def one_call(client: Client, routes: Routes, kind: str, n: int) -> str | int | None:
    """One call of ``kind``; returns an error text for a wrong answer, the
    worker pid for ``slow`` calls, None otherwise."""
    if kind == "stop":
        result = await client.call(routes.stop, HTTPRequest(id=n))
        if result.action != Stop(403, [], b"no"):
            return f"stop: {result}"
    elif kind == "rewrite":
        request = HTTPRequest(id=n, path="/v1", args=[("d", "1"), ("k", "v")])
        result = await client.call(routes.rewrite, request)
        action = result.action
        if not isinstance(action, Rewrite) or (
            action.path,
            [(name.lower(), value) for name, value in action.headers],
            action.args,
            action.resp_headers,
            action.body,
        ) != ("/v2", [("x-a", "1")], [("d", None)], [], None):
            return f"rewrite: {result}"
    elif kind == "var":
        addr = f"10.{n % 250}.0.1"
        result = await client.call(routes.var, HTTPRequest(id=n, vars={"remote_addr": addr}))
        if result.action != Stop(200, [], json.dumps({"remote_addr": [addr]}).encode()):
            return f"var: {result}"
    elif kind == "digest":
        body = os.urandom(n % 2048)
        result = await client.call(routes.digest, HTTPRequest(id=n, method="POST", body=body))
        action = result.action
        if not isinstance(action, Stop) or json.loads(action.body)["sha256"] != (
            hashlib.sha256(body).hexdigest()
        ):
            return f"digest: {result}"
    elif kind == "resp_rewrite":
        headers = [("Content-Type", "text/plain"), ("X-U", str(n))]
        resp = await client.resp_call(routes.resp_rewrite, 200, headers, id=n)
        if (resp.status, resp.headers, resp.body) != (0, [*headers, ("X-R", "1")], None):
            return f"resp_rewrite: {resp}"
    elif kind == "resp_body":
        body = os.urandom(n % 4096)
        resp = await client.resp_call(
            routes.resp_body, 200, [("Content-Length", str(len(body)))], HTTPRequest(resp_body=body)
        )
        expected = [("X-Body-Sha256", hashlib.sha256(body).hexdigest())]
        if (resp.headers, resp.body) != (expected, b"seen:" + body):
            return f"resp_body: {resp}"
    else:
        result = await client.call(routes.slow, HTTPRequest(id=n))
        if not isinstance(result.action, Stop) or result.id != n:
            return f"slow: {result}"
        return int(result.action.body)
    return None


@dataclass
class Line:
    index: int
    pid: int | None = None
    in_flight: bool = False
    failures: list[tuple[int | None, str]] = field(default_factory=list)


class Soak:
    def __init__(self, runner: RunningRunner, routes: Routes) -> None:
        self.runner = runner
        self.routes = routes
        self.lines = [Line(i) for i in range(CONNECTIONS)]
        self.calls: Counter[str] = Counter()
        self.errors: list[str] = []
        self.churned = 0
        self.recycled = 0
        self.stop = asyncio.Event()

    async def drive(self, line: Line) -> None:
        client: Client | None = None
        n = line.index * 1_000_000
        rng = random.Random(line.index)
        recycle_at = 0
        try:
            while not self.stop.is_set() and len(self.errors) < 20:
                if client is not None and n >= recycle_at:
                    # APISIX's pool closes connections too: spread them over
                    # the workers again and churn connection objects.
                    await client.close()
                    client = None
                    self.recycled += 1
                if client is None:
                    client = await Client.connect(self.runner.socket_path, read_timeout=10.0)
                    line.pid = None
                    recycle_at = n + rng.randint(200, 2000)
                n += 1
                kind = "pid" if line.pid is None else KINDS[n % len(KINDS)]
                line.in_flight = True
                try:
                    if kind == "pid":
                        result = await client.call(self.routes.pid, HTTPRequest(id=n))
                        assert isinstance(result.action, Stop)
                        outcome: str | int | None = int(result.action.body)
                    else:
                        outcome = await one_call(client, self.routes, kind, n)
                except (ProtocolError, ConnectionError) as exc:
                    line.failures.append((line.pid, repr(exc)))
                    await client.close()
                    client = None
                    continue
                finally:
                    line.in_flight = False
                self.calls[kind] += 1
                if isinstance(outcome, str):
                    self.errors.append(f"connection {line.index} (worker {line.pid}): {outcome}")
                elif isinstance(outcome, int):
                    if line.pid is None:
                        line.pid = outcome
                    elif outcome != line.pid:
                        self.errors.append(f"connection {line.index} moved to {outcome}")
        except RunnerError as exc:
            self.errors.append(f"connection {line.index} (worker {line.pid}): {exc.name}")
        except Exception as exc:
            self.errors.append(f"connection {line.index}: {exc!r}")
        finally:
            if client is not None:
                await client.close()

    async def connect_to(self, worker: int) -> Client:
        """A connection served by ``worker`` (the kernel picks; try again)."""
        for _ in range(100):
            client = await Client.connect(self.runner.socket_path, read_timeout=10.0)
            result = await client.call(self.routes.pid, HTTPRequest())
            if result.action == Stop(200, [], str(worker).encode()):
                return client
            await client.close()
        raise AssertionError(f"100 connections and none reached worker {worker}")

    async def churn(self, worker: int) -> None:
        """New route keys every 10 ms on a connection to ``worker`` (never
        killed); each new token resolves at once to its own config; a token
        issued MAX_ENTRIES + 500 confs ago is gone."""
        issued: list[int] = []
        try:
            async with await self.connect_to(worker) as c:
                while not self.stop.is_set():
                    i = len(issued)
                    body = f"churn-{i}"
                    conf = [("stop", json.dumps({"body": body}))]
                    token = await c.prepare_conf(conf, f"route#churn#{i}")
                    issued.append(token)
                    result = await c.call(token, HTTPRequest(id=i))
                    if result.action != Stop(200, [], body.encode()):
                        self.errors.append(f"churn {i}: {result}")
                    if i >= MAX_ENTRIES + 500 and i % 50 == 0:
                        try:
                            old = await c.call(issued[i - MAX_ENTRIES - 500], HTTPRequest())
                        except RunnerError as exc:
                            if exc.code != CONF_TOKEN_NOT_FOUND:
                                self.errors.append(f"churn old token: {exc.name}")
                        else:
                            self.errors.append(f"churn: an evicted token answered {old}")
                    self.churned += 1
                    await asyncio.sleep(0.01)
        except Exception as exc:
            self.errors.append(f"churn: {exc!r}")


@pytest.fixture
def soak_runner() -> Iterator[RunningRunner]:
    running = start_runner(plugins_dir=None, config=CONFIG)
    yield running
    running.stop()


def test_soak(soak_runner: RunningRunner) -> None:
    runner = soak_runner
    supervisor = runner.proc.pid
    report: dict[str, object] = {}

    def two_serving(gone: set[int]) -> Callable[[], bool]:
        def ready() -> bool:
            workers = children(supervisor)
            log = runner.log_text()
            return (
                len(workers) == 2 and not workers & gone and all(serving(log, w) for w in workers)
            )

        return ready

    async def scenario() -> None:
        assert await until(two_serving(set()), 10.0) is not None, runner.log_text()
        started_at = {w: time.monotonic() for w in children(supervisor)}
        async with await runner.client() as client:
            routes = await prepare_routes(client)
        soak = Soak(runner, routes)
        # The churn connection is served by a worker that is never killed.
        tasks = [asyncio.ensure_future(soak.drive(line)) for line in soak.lines]
        kills: list[tuple[int, int, float]] = []  # (victim, calls in flight, respawn s)
        unknown_in_flight = 0  # calls in flight at kills on connections of no known worker yet
        rss: dict[int, list[tuple[float, int]]] = {}
        churn_task: asyncio.Task[None] | None = None
        begin = time.monotonic()
        try:
            ready = await until(lambda: all(line.pid for line in soak.lines), 15.0)
            assert ready is not None, soak.errors
            # The long-lived worker (never killed) also serves the churn.
            elder = min(children(supervisor))
            churn_task = asyncio.ensure_future(soak.churn(elder))
            next_kill = begin + KILL_EVERY
            while time.monotonic() - begin < DURATION and len(soak.errors) == 0:
                await asyncio.sleep(0.2)
                now = time.monotonic()
                for w in children(supervisor):
                    value = rss_kib(w)
                    if value is not None:
                        rss.setdefault(w, []).append((now - begin, value))
                if now >= next_kill:
                    workers = children(supervisor)
                    young = [w for w in workers if w != elder]
                    if len(young) != 1:
                        soak.errors.append(f"workers {workers}, elder {elder}")
                        break
                    victim = young[0]
                    # No await from the snapshot to the kill: it is the state at the kill.
                    in_flight = sum(line.in_flight for line in soak.lines if line.pid == victim)
                    unknown_in_flight += sum(
                        line.in_flight for line in soak.lines if line.pid is None
                    )
                    os.kill(victim, signal.SIGKILL)
                    respawn = await until(two_serving({victim}), 5.0)
                    if respawn is None:
                        soak.errors.append(f"worker {victim} not replaced within 5 s")
                        break
                    kills.append((victim, in_flight, respawn))
                    for w in children(supervisor) - set(started_at):
                        started_at[w] = time.monotonic()
                    next_kill = time.monotonic() + KILL_EVERY
        finally:
            soak.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30.0)
            if churn_task is not None:
                await asyncio.wait_for(churn_task, 30.0)
        elapsed = time.monotonic() - begin

        # Failures only on killed workers' connections, no more per kill than in flight.
        killed: dict[int | None, int] = {v: in_flight for v, in_flight, _ in kills}
        killed[None] = unknown_in_flight
        failed = Counter(pid for line in soak.lines for pid, _ in line.failures)
        unexpected = {pid: n for pid, n in failed.items() if pid not in killed}
        over = {pid: (n, killed[pid]) for pid, n in failed.items() if n > killed.get(pid, 0)}
        elder_rss = rss.get(elder, [])
        warm = [v for t, v in elder_rss if t >= min(30.0, elapsed / 5)]
        report.update(
            seconds=round(elapsed, 1),
            calls=sum(soak.calls.values()),
            per_kind=dict(soak.calls),
            calls_per_s=round(sum(soak.calls.values()) / elapsed),
            confs_churned=soak.churned,
            connections_recycled=soak.recycled,
            kills=len(kills),
            worst_respawn_ms=round(max((r for _, _, r in kills), default=0.0) * 1000),
            failed_calls=sum(failed.values()),
            in_flight_at_kills=sum(killed.values()),
            failures_by_worker={str(k): v for k, v in failed.items()},
            elder_rss_kib=(warm[0], max(warm), warm[-1]) if warm else None,
            # The long-lived worker's RSS (KiB) about every tenth of the run.
            elder_rss_timeline=[
                (round(t), v) for t, v in elder_rss[:: max(1, len(elder_rss) // 10)]
            ],
            supervisor_rss_kib=rss_kib(supervisor),
        )
        print("soak:", json.dumps(report))
        assert soak.errors == [], soak.errors[:10]
        assert not unexpected, unexpected
        assert not over, over
        assert kills and all(r < RESPAWN_LIMIT_S for _, _, r in kills), kills
        assert warm, elder_rss
        assert max(warm) - warm[0] < RSS_GROWTH_LIMIT_KIB, (warm[0], max(warm))
        assert elder in children(supervisor)

    arun(scenario(), timeout=DURATION + 120)

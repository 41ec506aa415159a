"""Real services for the plugin tests: redis-server and an HTTP auth service.

Every fixture here is opt-in (none is autouse) and kills what it started. The
tests that use ``redis_server`` or ``redis_factory`` are skipped, with the
reason, when redis-server is not installed (``apt-get install redis-server``;
CI installs it, see .ci/run):

``redis_server``   one redis-server for the session (tests use their own key
                   prefixes, so they never see each other's counters)
``redis_factory``  ``start()`` -> a RedisServer of the test's own, for tests
                   that kill and restart it
``redis_cluster``  a 3-master Redis Cluster for the session (redis-cli --cluster
                   create; needs redis-cli too, from redis-tools)
``cluster_factory`` ``start(masters, replicas)`` -> a Cluster of the test's own
``sentinel_factory`` ``start(sentinels)`` -> a master, a replica and redis-sentinels
                   (needs redis-sentinel) of the test's own
``tls_redis``      a TLS-only redis-server with an ACL user, for the session
``closed_port``    a loopback port nothing listens on (connection refused)
``blackhole_port`` a loopback port that accepts TCP but never answers
``auth_service``   tests/plugins/authsvc.py as a subprocess (aiohttp.web)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis_topologies import Cluster, SentinelSetup, TlsRedis, missing

if TYPE_CHECKING:
    import redis

AUTHSVC = str(Path(__file__).resolve().parent / "authsvc.py")
START_DEADLINE_S = 10.0


def free_port() -> int:
    """A loopback port free right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A redis-server on a loopback port, in its own directory, no persistence."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_binary() or "redis-server"
        argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_DEADLINE_S
        while not _pings(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log_text}")
            time.sleep(0.01)
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)

    def client(self) -> redis.Redis:
        """A synchronous redis-py client for looking at what the plugin did
        (use it in a ``with`` block: an unclosed socket fails the test)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


def redis_server_binary() -> str | None:
    """The redis-server on PATH, or None."""
    return shutil.which("redis-server")


def redis_missing() -> str | None:
    """Why the redis tests cannot run here, or None when redis-server is installed."""
    if redis_server_binary() is None:
        return "redis-server is not installed (apt-get install redis-server)"
    return None


def skip_without_redis() -> None:
    if (reason := redis_missing()) is not None:
        pytest.skip(f"the redis-limit tests need a real redis-server: {reason}")


def _start_redis(directory: Path) -> RedisServer:
    # The port is free when chosen but could be taken before redis binds it.
    for attempt in range(3):
        try:
            return RedisServer(directory, free_port()).start()
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    skip_without_redis()
    server = _start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    skip_without_redis()
    started: list[RedisServer] = []

    def start() -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = _start_redis(directory)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def skip_without(*programs: str) -> None:
    if (reason := missing("redis-server", *programs)) is not None:
        pytest.skip(f"the redis-limit tests need real Redis programs: {reason}")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    skip_without("redis-cli")
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    skip_without("redis-cli")
    started: list[Cluster] = []

    def start(masters: int = 3, replicas: int = 0) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(started)}", masters, replicas)
        started.append(cluster)
        return cluster.start()

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def sentinel_factory(tmp_path: Path) -> Iterator[Callable[..., SentinelSetup]]:
    skip_without("redis-sentinel")
    started: list[SentinelSetup] = []

    def start(sentinels: int = 1) -> SentinelSetup:
        setup = SentinelSetup(tmp_path / f"sentinel-{len(started)}", sentinels)
        started.append(setup)
        return setup.start()

    yield start
    for setup in started:
        setup.stop()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    skip_without()
    server = TlsRedis(tmp_path_factory.mktemp("tls"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def closed_port() -> int:
    return free_port()


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """Connections complete in the kernel's backlog and then hear nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


class AuthService:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    def url(self, path: str = "/auth") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def calls(self, token: str) -> int:
        """How many times the service was asked about ``token``."""
        query = urllib.parse.urlencode({"token": token})
        with urllib.request.urlopen(self.url(f"/stats?{query}"), timeout=5) as resp:
            return int(json.load(resp)["calls"])


def _read_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_DEADLINE_S)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening "):
        raise RuntimeError(f"auth service did not start: {line!r}")
    return int(line.split()[1])


@pytest.fixture(scope="session")
def auth_service() -> Iterator[AuthService]:
    proc = subprocess.Popen(
        [sys.executable, AUTHSVC],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        service = AuthService(proc, _read_port(proc))
        yield service
    finally:
        _stop_process(proc)
        with contextlib.suppress(OSError):
            if proc.stdout is not None:
                proc.stdout.close()

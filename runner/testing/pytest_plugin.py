"""pytest fixtures that start the real runner as a subprocess.

Registered as the ``apisix_runner`` pytest plugin (a ``pytest11`` entry point), so
any project with ``apisix-runner`` installed gets these fixtures:

``runner_factory``
    A callable ``start(plugins_dir=None, config=None, extra_env=None, workers=1)``
    that launches ``python -m runner start --foreground`` on a fresh Unix socket and
    returns a :class:`RunningRunner` once the socket accepts connections. Every runner
    started is stopped at the end of the test.

``runner``
    ``runner_factory()`` with the bundled plugins.

Example::

    def test_my_plugin(runner_factory):
        r = runner_factory(plugins_dir="my_plugins")

        async def scenario() -> None:
            async with await r.client() as client:
                token = await client.prepare_conf([("my_plugin", "{}")])
                result = await client.call(token, HTTPRequest(path="/x"))
                assert result.action is None

        asyncio.run(scenario())
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from runner.testing.client import Client

__all__ = ["RunnerFactory", "RunningRunner", "runner", "runner_factory"]

_START_DEADLINE_S = 15.0
_POLL_INTERVAL_S = 0.02
_TERM_GRACE_S = 5.0
# The directory holding the ``runner`` package: the subprocess imports the same code.
_SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)


class RunningRunner:
    """A runner subprocess started by :func:`runner_factory`.

    ``socket_path`` is the plain socket path (no ``unix:`` prefix), ``proc`` the
    ``Popen`` object, ``log_path`` the file receiving its stdout and stderr.
    """

    def __init__(
        self, socket_path: str, proc: subprocess.Popen[bytes], log_path: Path, tmp_dir: str
    ) -> None:
        self.socket_path = socket_path
        self.proc = proc
        self.log_path = log_path
        self._tmp_dir = tmp_dir
        self._stopped = False

    def log_text(self) -> str:
        """Everything the runner wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def client(self, timeout: float = 5.0) -> Client:
        """Open a new :class:`~runner.testing.Client` connection to this runner."""
        return await Client.connect(self.socket_path, timeout=timeout)

    def stop(self, grace: float = _TERM_GRACE_S) -> int | None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it.

        Returns the main process's exit code (negative for a signal). Idempotent.
        """
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        try:
            if self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            # Leftover workers of a main process that died without reaping them.
            _signal_group(self.proc.pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
        return self.proc.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def runner_env(sock: str, extra_env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment APISIX gives its runner, plus ``extra_env`` (None removes)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
    env["APISIX_LISTEN_ADDRESS"] = f"unix:{sock}"
    env["APISIX_CONF_EXPIRE_TIME"] = "3600"
    for key, value in (extra_env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True


class RunnerFactory(Protocol):
    """Type of the ``runner_factory`` fixture."""

    def __call__(
        self,
        plugins_dir: str | None = None,
        config: dict[str, Any] | None = None,
        extra_env: dict[str, str | None] | None = None,
        workers: int = 1,
    ) -> RunningRunner: ...


@pytest.fixture
def runner_factory(tmp_path: Path) -> Iterator[RunnerFactory]:
    """Start real runners; all of them are stopped when the test ends.

    ``extra_env`` entries override the environment (a ``None`` value removes the
    variable, e.g. ``{"APISIX_CONF_EXPIRE_TIME": None}``).
    """
    started: list[RunningRunner] = []

    def start(
        plugins_dir: str | None = None,
        config: dict[str, Any] | None = None,
        extra_env: dict[str, str | None] | None = None,
        workers: int = 1,
    ) -> RunningRunner:
        n = len(started)
        cfg = dict(config or {})
        if plugins_dir is not None:
            cfg["plugin_dirs"] = [plugins_dir]
        cfg_path = tmp_path / f"config-{n}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        log_path = tmp_path / f"runner-{n}.log"

        # AF_UNIX paths are limited to 107 bytes: tmp_path is often too long.
        tmp_dir = tempfile.mkdtemp(prefix="ar-", dir="/tmp")
        sock = os.path.join(tmp_dir, "r.sock")

        env = runner_env(sock, extra_env)

        argv = [sys.executable, "-m", "runner", "start", "--config", str(cfg_path)]
        argv += ["--workers", str(workers), "--foreground"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = RunningRunner(sock, proc, log_path, tmp_dir)
        started.append(running)

        deadline = time.monotonic() + _START_DEADLINE_S
        while not accepts(sock):
            if proc.poll() is not None:
                running.stop()
                pytest.fail(
                    f"runner exited early with code {proc.returncode}; log:\n{running.log_text()}"
                )
            if time.monotonic() > deadline:
                running.stop()
                pytest.fail(
                    f"runner socket {sock} not ready after {_START_DEADLINE_S} s; "
                    f"log:\n{running.log_text()}"
                )
            time.sleep(_POLL_INTERVAL_S)
        return running

    yield start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def runner(runner_factory: RunnerFactory) -> RunningRunner:
    """A real runner with the bundled plugins, one worker."""
    return runner_factory()

"""Shared set-up of the integration tests: real runner processes, talked to with
the APISIX-like client of :mod:`runner.testing`.

``shared_runner`` is one runner per test module (bundled plugins plus the test
plugins in ``plugins_fixture/``); tests that need their own process (config,
lifecycle, log counting) use :func:`start_runner` or the ``runner_factory``
fixture of :mod:`runner.testing.pytest_plugin`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from runner.testing._a6.A6.Err import Resp as ErrResp
from runner.testing._a6.A6.HTTPReqCall import Resp as ReqCallResp
from runner.testing._a6.A6.HTTPReqCall.Action import Action
from runner.testing._a6.A6.HTTPReqCall.Stop import Stop as StopTable
from runner.testing.pytest_plugin import RunningRunner, accepts, runner_env

PLUGINS_DIR = str(Path(__file__).resolve().parent / "plugins_fixture")
START_DEADLINE_S = 15.0
# Every scenario runs under this bound, so a hung runner fails a test, not the suite.
SCENARIO_TIMEOUT_S = 30.0

_T = TypeVar("_T")


def arun(coro: Coroutine[Any, Any, _T], timeout: float = SCENARIO_TIMEOUT_S) -> _T:
    """Run one async scenario to completion (pytest-asyncio is not used)."""

    async def bounded() -> _T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def write_config(directory: Path, config: dict[str, Any] | None, plugins_dir: str | None) -> Path:
    cfg = dict(config or {})
    if plugins_dir is not None:
        cfg["plugin_dirs"] = [plugins_dir]
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_runner(
    plugins_dir: str | None = PLUGINS_DIR,
    config: dict[str, Any] | None = None,
    extra_env: dict[str, str | None] | None = None,
    sock: str | None = None,
    prefix: Sequence[str] = (),
) -> RunningRunner:
    """Start ``python -m runner start --foreground`` like ``runner_factory`` does,
    optionally on a chosen socket path; returns once the socket accepts.

    The caller stops it (``RunningRunner.stop()``), which also removes its
    private temporary directory (config, log, and the socket unless ``sock``
    was given elsewhere).
    """
    tmp_dir = tempfile.mkdtemp(prefix="ari-", dir="/tmp")
    if sock is None:
        sock = os.path.join(tmp_dir, "r.sock")
    # Another (stale or live) socket may be at the path: then wait for our own.
    occupied = os.path.exists(sock)
    cfg_path = write_config(Path(tmp_dir), config, plugins_dir)
    log_path = Path(tmp_dir, "runner.log")
    argv = [*prefix, sys.executable, "-m", "runner", "start", "--config", str(cfg_path)]
    argv.append("--foreground")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=runner_env(sock, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningRunner(sock, proc, log_path, tmp_dir)
    deadline = time.monotonic() + START_DEADLINE_S
    while not (accepts(sock) and (not occupied or "serving on" in running.log_text())):
        if proc.poll() is not None:
            log_text = running.log_text()
            running.stop()
            pytest.fail(f"runner exited early with code {proc.returncode}; log:\n{log_text}")
        if time.monotonic() > deadline:
            log_text = running.log_text()
            running.stop()
            pytest.fail(f"runner socket {sock} not ready; log:\n{log_text}")
        time.sleep(0.02)
    return running


@pytest.fixture(scope="module")
def shared_runner() -> Iterator[RunningRunner]:
    """One runner per test module: bundled plugins plus ``plugins_fixture/``."""
    running = start_runner()
    yield running
    running.stop()


@pytest.fixture
def fresh_runner() -> Iterator[RunningRunner]:
    """A runner of this test's own (for exact log assertions)."""
    running = start_runner()
    yield running
    running.stop()


def err_code(payload: bytes) -> int:
    """The code of an ``A6.Err.Resp`` payload (type-0 frame)."""
    assert payload, "empty RPC_ERROR payload"
    return int(ErrResp.Resp.GetRootAs(payload, 0).Code())


def stop_of_final(payload: bytes) -> tuple[int, int, bytes]:
    """``(id, status, body)`` of an ``HTTPReqCall.Resp`` payload whose action is
    Stop (for frames read by hand rather than through ``Client.call``)."""
    resp = ReqCallResp.Resp.GetRootAs(payload, 0)
    assert resp.ActionType() == Action.Stop, resp.ActionType()
    tab = resp.Action()
    assert tab is not None
    stop = StopTable()
    stop.Init(tab.Bytes, tab.Pos)
    body = bytes(stop.Body(i) for i in range(stop.BodyLength()))
    return int(resp.Id()), int(stop.Status()), body


def log_since(running: RunningRunner, offset: int) -> str:
    """The runner's log written after ``offset`` characters."""
    return running.log_text()[offset:]


def wait_for_log(running: RunningRunner, needle: str, offset: int = 0, timeout: float = 5.0) -> str:
    """Wait until ``needle`` appears in the log after ``offset``; return that part."""
    deadline = time.monotonic() + timeout
    while True:
        text = log_since(running, offset)
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.01)


def normalized(entries: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Header entries with lower-cased names, grouped by name; the order of the
    values of one name is kept (it matters for multi-valued headers)."""
    return sorted(((n.lower(), v) for n, v in entries), key=lambda e: e[0])


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)

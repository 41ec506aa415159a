"""A real runner's log when every request fails the same way: one traceback,
not one per request, in --foreground and in managed mode (APISIX starts the
runner and copies its stderr into error.log)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from runner.testing import Client, HTTPRequest, RunnerError
from runner.testing.pytest_plugin import RunnerFactory, accepts, runner_env

from .conftest import PLUGINS_DIR, arun

SERVICE_UNAVAILABLE = 1


async def fail_calls(sock: str, n: int) -> None:
    async with await Client.connect(sock) as client:
        token = await client.prepare_conf([("failing-plugin", "")], key="route#flood#1")
        for i in range(n):
            with pytest.raises(RunnerError) as err:
                await client.call(token, HTTPRequest(id=i))
            assert err.value.code == SERVICE_UNAVAILABLE
        for _ in range(3):  # a misspelled plugin name; APISIX retries per request
            with pytest.raises(RunnerError):
                await client.prepare_conf([("failing-plugn", "")], key="route#typo#1")


def test_200_failing_calls_log_one_traceback(runner_factory: RunnerFactory) -> None:
    running = runner_factory(plugins_dir=PLUGINS_DIR)
    arun(fail_calls(running.socket_path, 200))
    time.sleep(0.2)
    text = running.log_text()
    assert text.count("Traceback (most recent call last)") == 1, text[-3000:]
    assert text.count("RuntimeError: kaboom-sync-marker") == 1, text[-3000:]
    assert text.count("plugin 'failing-plugin' raised") == 1, text[-3000:]
    # The rejected config: logged once in full, then one summary with the count
    # (written when the worker stops, if not before).
    typo = [line for line in text.splitlines() if "route#typo#1" in line]
    assert len([line for line in typo if "more times" not in line]) == 1, text
    assert len(typo) <= 2, text[-3000:]


def test_managed_mode_stderr_has_the_summary_and_warnings_not_floods(tmp_path: Path) -> None:
    loose = tmp_path / "plugins"
    loose.mkdir()
    (loose / "failing.py").write_text(Path(PLUGINS_DIR, "failing.py").read_text())
    loose.chmod(0o777)  # start-up warns about it
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"plugin_dirs": [str(loose)]}))
    sock = str(Path(tempfile.mkdtemp(prefix="arm-", dir="/tmp"), "r.sock"))
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "start", "--config", str(cfg), "--workers", "1"],
            env=runner_env(sock), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not accepts(sock):
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        asyncio.run(asyncio.wait_for(fail_calls(sock, 50), 30))
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    text = stderr.read_text()
    assert "INFO [supervisor pid" in text and "listening on " in text, text
    assert "loaded plugins: " in text and "failing-plugin" in text, text
    assert "is world-writable" in text, text
    assert text.count("Traceback (most recent call last)") == 1, text
    # The rejected config: logged once in full, then one summary with the count
    # (written when the worker stops, if not before).
    typo = [line for line in text.splitlines() if "route#typo#1" in line]
    assert len([line for line in typo if "more times" not in line]) == 1, text
    assert len(typo) <= 2, text
    # No per-worker or per-request INFO.
    assert "serving on" not in text and "worker 0 started" not in text, text

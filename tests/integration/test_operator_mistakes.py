"""The mistakes operators make, each caught with a message that names what is
wrong and where, instead of a silent fall-back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from runner.testing import HTTPRequest, Stop
from runner.testing.pytest_plugin import RunnerFactory, runner_env

from .conftest import arun, wait_for_log
from .test_operations import free_port, http_get

STOP = [("stop", '{"status": 200}')]


def cli(
    *args: str, sock: str | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = runner_env(sock or f"/tmp/ar-om-{os.getpid()}.sock")
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=cwd,
    )  # fmt: skip


def config(tmp_path: Path, name: str, data: object) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_a_second_runner_does_not_take_a_live_socket(runner_factory: RunnerFactory) -> None:
    first = runner_factory(plugins_dir=None)
    res = cli("start", "--workers", "1", sock=first.socket_path)
    assert res.returncode == 2, res.stderr
    assert first.socket_path in res.stderr and f"pid {first.proc.pid}" in res.stderr

    async def still_served() -> None:
        async with await first.client() as client:
            token = await client.prepare_conf(STOP)
            result = await client.call(token, HTTPRequest(path="/"))
            assert isinstance(result.action, Stop)

    arun(still_served())


def test_healthz_fails_when_the_socket_path_is_gone(runner_factory: RunnerFactory) -> None:
    port = free_port()
    runner = runner_factory(plugins_dir=None, config={"metrics": {"address": f"127.0.0.1:{port}"}})
    url = f"http://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + 10
    while http_get(url)[0] != 200:
        assert time.monotonic() < deadline, runner.log_text()
        time.sleep(0.05)
    os.unlink(runner.socket_path)
    status, body = http_get(url)
    assert status == 503 and "no longer leads to this runner" in body
    deadline = time.monotonic() + 5
    while "was removed or replaced" not in runner.log_text():
        assert time.monotonic() < deadline, runner.log_text()
        time.sleep(0.05)
    assert runner.socket_path in runner.log_text()


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    for command in ("check", "start"):
        res = cli(command, "--config", missing)
        assert res.returncode == 2, res.stderr
        assert f"{missing}: no such file" in res.stderr
    # Without --config, a missing config.yaml means all defaults.
    res = cli("check", cwd=str(tmp_path))
    assert res.returncode == 0 and res.stdout.startswith("ok:"), res.stderr


def test_start_refuses_plugin_options_for_plugins_not_loaded(tmp_path: Path) -> None:
    path = config(tmp_path, "c.yaml", {"plugin_options": {"stpo": {"fail_open": True}}})
    for command in ("check", "start"):
        res = cli(command, "--config", path)
        assert res.returncode == 2, res.stderr
        assert "plugin_options names plugins that are not loaded: stpo" in res.stderr


def test_a_socket_mode_must_be_octal(tmp_path: Path) -> None:
    res = cli("check", "--config", config(tmp_path, "c.yaml", "socket:\n  mode: 766\n"))
    assert res.returncode == 2 and "socket.mode: '766' is not an octal file mode" in res.stderr
    for written in ("0766", "0o766", '"766"'):
        path = config(tmp_path, "ok.yaml", f"socket:\n  mode: {written}\n")
        res = cli("check", "--config", path)
        assert res.returncode == 0, (written, res.stderr)


def test_a_log_file_that_cannot_be_written_is_named_by_check_and_start(tmp_path: Path) -> None:
    log_file = tmp_path / "missing-dir" / "runner.log"
    path = config(tmp_path, "c.yaml", {"logging": {"file": str(log_file)}})
    for command in ("check", "start"):
        res = cli(command, "--config", path)
        assert res.returncode == 2, res.stderr
        assert f"logging.file {log_file}: the directory {log_file.parent} does not exist" in (
            res.stderr
        )


def test_a_bad_workers_flag_is_blamed_on_the_flag() -> None:
    res = cli("start", "--workers", "0")
    assert res.returncode == 2
    assert "argument --workers: must be between 1 and 512, got 0" in res.stderr
    assert "config.yaml" not in res.stderr


def test_version_and_the_start_up_line(runner_factory: RunnerFactory) -> None:
    res = cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("apisix-runner ")
    runner = runner_factory(plugins_dir=None, workers=1)
    # The socket accepts as soon as it is bound, a moment before this line is written.
    text = wait_for_log(runner, "listening on")
    assert "with 1 worker" in text and "with 1 workers" not in text

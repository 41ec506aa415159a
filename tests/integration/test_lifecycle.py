"""Runner lifecycle (docs/protocol.md §10 and §4.3): socket file,
SIGTERM, start-up failures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.testing import HTTPRequest, RunnerError, Stop
from runner.testing.pytest_plugin import RunnerFactory, RunningRunner

from .conftest import PLUGINS_DIR, arun, remove_tree, runner_env, start_runner, write_config

EXIT_CONFIG = 2
EXIT_PLUGINS = 3
CONF_TOKEN_NOT_FOUND = 2


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # AF_UNIX paths are short: not under pytest's tmp_path.
    path = tempfile.mkdtemp(prefix="arl-", dir="/tmp")
    yield path
    remove_tree(path)


async def serves(runner: RunningRunner) -> None:
    async with await runner.client() as client:
        token = await client.prepare_conf([("stop", '{"body": "up"}')])
        result = await client.call(token, HTTPRequest())
        assert result.action == Stop(status=200, headers=[], body=b"up")


def mode_of(path: str) -> int:
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


def test_socket_mode_default(runner_factory: RunnerFactory) -> None:
    runner = runner_factory()
    assert mode_of(runner.socket_path) == 0o766
    arun(serves(runner))


@pytest.mark.parametrize("mode", [0o700, 0o777, 0o760])
def test_socket_mode_configurable(runner_factory: RunnerFactory, mode: int) -> None:
    runner = runner_factory(config={"socket": {"mode": f"{mode:04o}"}})  # "0700": octal
    assert mode_of(runner.socket_path) == mode
    arun(serves(runner))


def test_stale_socket_file_is_replaced(sock_dir: str) -> None:
    sock = os.path.join(sock_dir, "r.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()  # the file stays, nobody listens: a crashed runner's leftover
    with pytest.raises(ConnectionRefusedError):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(sock)
        finally:
            probe.close()

    runner = start_runner(plugins_dir=None, sock=sock)
    try:
        # The stale file refused connections; now the new runner answers on it.
        assert mode_of(sock) == 0o766
        arun(serves(runner))
    finally:
        runner.stop()
    assert not os.path.exists(sock)


def test_regular_file_at_socket_path_is_left_alone(tmp_path: Path, sock_dir: str) -> None:
    """Only a socket file is replaced; anything else is someone's data."""
    path = os.path.join(sock_dir, "r.sock")
    Path(path).write_text("not a socket")
    done = run_start(tmp_path, sock_dir)
    assert done.returncode != 0
    assert path in done.stderr, done.stderr
    assert Path(path).read_text() == "not a socket"


def test_sigterm_exits_fast_and_removes_socket(runner_factory: RunnerFactory) -> None:
    runner = runner_factory()
    sock = runner.socket_path

    async def idle_connections_open() -> None:
        # APISIX keeps pooled connections open; they must not delay the exit.
        clients = [await runner.client() for _ in range(5)]
        try:
            token = await clients[0].prepare_conf([("stop", "{}")])
            await clients[0].call(token, HTTPRequest())
            started = time.monotonic()
            runner.proc.send_signal(signal.SIGTERM)
            while runner.proc.poll() is None and time.monotonic() - started < 3:
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            assert runner.proc.returncode == 0, runner.log_text()
            assert elapsed < 1.0, elapsed
        finally:
            for client in clients:
                await client.close()

    arun(idle_connections_open())
    assert not os.path.exists(sock)


def test_sigterm_during_hung_call_exits_within_a_second(runner_factory: RunnerFactory) -> None:
    """An in-flight call that never finishes is cut short: APISIX SIGKILLs 1 s
    after SIGTERM (docs/protocol.md §10.2)."""
    runner = runner_factory(plugins_dir=PLUGINS_DIR)
    sock = runner.socket_path

    async def scenario() -> None:
        async with await runner.client() as client:
            token = await client.prepare_conf([("hang", "")])
            call = asyncio.ensure_future(client.call(token, HTTPRequest()))
            await asyncio.sleep(0.1)
            assert not call.done()
            started = time.monotonic()
            runner.proc.send_signal(signal.SIGTERM)
            while runner.proc.poll() is None and time.monotonic() - started < 3:
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            assert runner.proc.returncode is not None
            assert elapsed < 1.0, elapsed
            # The hung call got an answer or saw the connection close; either way, done.
            done, _ = await asyncio.wait([call], timeout=1.0)
            assert call in done
            call.exception()  # retrieved: no "exception never retrieved" warning

    arun(scenario())
    assert not os.path.exists(sock)


# APISIX's privileged agent, as far as the runner can tell: a process that
# spawns the runner and waits (SIGTERM to the group is for the runner).
AGENT = [
    sys.executable, "-c",
    "import signal, subprocess, sys\n"
    "runner = subprocess.Popen(sys.argv[1:])\n"
    "signal.signal(signal.SIGTERM, lambda *_: None)\n"
    "sys.exit(runner.wait())\n",
]  # fmt: skip


def test_old_runner_leaves_the_new_runners_socket(sock_dir: str) -> None:
    """apisix reload: the new agent's runner binds the same path while the old
    agent's runner still serves, and takes it over (both agents are children
    of one nginx master, here this test); the old one must not unlink the new
    socket (docs/protocol.md §10.2)."""
    sock = os.path.join(sock_dir, "r.sock")
    old = start_runner(plugins_dir=None, sock=sock, prefix=AGENT)
    new = None
    try:
        new = start_runner(plugins_dir=None, sock=sock, prefix=AGENT)
        assert "taking" in new.log_text() and "over from the runner APISIX is replacing" in (
            new.log_text()
        )
        assert old.stop() == 0
        assert os.path.exists(sock)
        arun(serves(new))
    finally:
        old.stop()
        if new is not None:
            new.stop()


def run_start(
    tmp_path: Path,
    sock_dir: str,
    config: dict[str, object] | None = None,
    plugins_dir: str | None = None,
    extra_env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp_path, config, plugins_dir)
    sock = os.path.join(sock_dir, "r.sock")
    argv = [sys.executable, "-m", "runner", "start", "--config", str(cfg), "--foreground"]
    return subprocess.run(
        argv,
        env=runner_env(sock, extra_env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "1h"])
def test_invalid_conf_expire_time(tmp_path: Path, sock_dir: str, value: str) -> None:
    done = run_start(tmp_path, sock_dir, extra_env={"APISIX_CONF_EXPIRE_TIME": value})
    assert done.returncode == EXIT_CONFIG, (done.stdout, done.stderr)
    assert "APISIX_CONF_EXPIRE_TIME" in done.stderr, done.stderr
    assert not os.path.exists(os.path.join(sock_dir, "r.sock"))


def test_missing_conf_expire_time_is_fine(runner_factory: RunnerFactory) -> None:
    runner = runner_factory(extra_env={"APISIX_CONF_EXPIRE_TIME": None})
    arun(serves(runner))


def test_missing_listen_address(tmp_path: Path, sock_dir: str) -> None:
    done = run_start(tmp_path, sock_dir, extra_env={"APISIX_LISTEN_ADDRESS": None})
    assert done.returncode == EXIT_CONFIG, (done.stdout, done.stderr)
    assert "APISIX_LISTEN_ADDRESS" in done.stderr, done.stderr


def test_bad_listen_address(tmp_path: Path, sock_dir: str) -> None:
    bad = "tcp:127.0.0.1:9999"
    done = run_start(tmp_path, sock_dir, extra_env={"APISIX_LISTEN_ADDRESS": bad})
    assert done.returncode == EXIT_CONFIG, (done.stdout, done.stderr)
    assert "APISIX_LISTEN_ADDRESS" in done.stderr, done.stderr


def test_unknown_config_key(tmp_path: Path, sock_dir: str) -> None:
    done = run_start(tmp_path, sock_dir, config={"no_such_setting": 1})
    assert done.returncode == EXIT_CONFIG, (done.stdout, done.stderr)
    assert "no_such_setting" in done.stderr, done.stderr


def test_plugin_file_that_fails_to_import(tmp_path: Path, sock_dir: str) -> None:
    bad_dir = tmp_path / "bad_plugins"
    bad_dir.mkdir()
    (bad_dir / "broken.py").write_text(
        "from runner import Plugin\n\nraise ImportError('broken-plugin-marker')\n"
    )
    done = run_start(tmp_path, sock_dir, plugins_dir=str(bad_dir))
    assert done.returncode == EXIT_PLUGINS, (done.stdout, done.stderr)
    assert "broken.py" in done.stderr, done.stderr
    assert "broken-plugin-marker" in done.stderr, done.stderr
    assert not os.path.exists(os.path.join(sock_dir, "r.sock"))


def test_plugin_file_with_syntax_error(tmp_path: Path, sock_dir: str) -> None:
    bad_dir = tmp_path / "bad_plugins"
    bad_dir.mkdir()
    (bad_dir / "typo.py").write_text("def filter(:\n")
    done = run_start(tmp_path, sock_dir, plugins_dir=str(bad_dir))
    assert done.returncode == EXIT_PLUGINS, (done.stdout, done.stderr)
    assert "typo.py" in done.stderr, done.stderr


def test_missing_plugin_dir(tmp_path: Path, sock_dir: str) -> None:
    missing = str(tmp_path / "does-not-exist")
    done = run_start(tmp_path, sock_dir, plugins_dir=missing)
    assert done.returncode == EXIT_PLUGINS, (done.stdout, done.stderr)
    assert "does-not-exist" in done.stderr, done.stderr


def test_duplicate_plugin_name(tmp_path: Path, sock_dir: str) -> None:
    dup_dir = tmp_path / "dup_plugins"
    dup_dir.mkdir()
    (dup_dir / "mystop.py").write_text(
        "from runner import Plugin\n\n\n"
        "class MyStop(Plugin):\n"
        "    name = 'stop'\n\n"
        "    def filter(self, conf, request, response):\n"
        "        pass\n"
    )
    done = run_start(tmp_path, sock_dir, plugins_dir=str(dup_dir))
    assert done.returncode == EXIT_PLUGINS, (done.stdout, done.stderr)
    assert "'stop'" in done.stderr, done.stderr


def test_tokens_slide_while_used_and_expire_when_idle(runner_factory: RunnerFactory) -> None:
    """docs/protocol.md §4.3: the token lifetime (2 x APISIX_CONF_EXPIRE_TIME,
    here 0.4 s) slides on every use; a token idle for longer is gone
    (CONF_TOKEN_NOT_FOUND, which makes APISIX re-prepare) and PrepareConf for
    its key issues a fresh one."""
    runner = runner_factory(extra_env={"APISIX_CONF_EXPIRE_TIME": "0.2"})

    async def scenario() -> None:
        async with await runner.client() as client:
            used = await client.prepare_conf([("stop", "{}")], key="route#1#pre#used")
            idle = await client.prepare_conf([("stop", "{}")], key="route#1#pre#idle")
            for _ in range(12):  # 1.2 s, well past the 0.4 s lifetime
                assert isinstance((await client.call(used, HTTPRequest())).action, Stop)
                await asyncio.sleep(0.1)
            assert isinstance((await client.call(used, HTTPRequest())).action, Stop)

            with pytest.raises(RunnerError) as err:
                await client.call(idle, HTTPRequest())
            assert err.value.code == CONF_TOKEN_NOT_FOUND
            renewed = await client.prepare_conf([("stop", "{}")], key="route#1#pre#idle")
            assert renewed not in (0, idle, used)
            assert isinstance((await client.call(renewed, HTTPRequest())).action, Stop)

    arun(scenario())

"""Operations: metrics with exact counts across workers, health, `runner
check`, --profile, log context, fail-open, plugin deadlines, the inline
watchdog, blocking plugins, max_requests recycling, socket owner/group and
the world-writable plugin directory warning."""

from __future__ import annotations

import asyncio
import os
import pstats
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import hotpath
from runner.testing import Client, HTTPRequest, Rewrite, RunnerError, Stop
from runner.testing.pytest_plugin import RunnerFactory, RunningRunner

from .conftest import PLUGINS_DIR, arun, wait_for_log

OPS_DIR = str(Path(__file__).resolve().parent / "plugins_ops")
SERVICE_UNAVAILABLE = 1
CONF_TOKEN_NOT_FOUND = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of a Prometheus exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def wait_for_metrics(
    url: str, expected: dict[str, float], timeout: float = 5.0
) -> dict[str, float]:
    """Scrape until every expected sample has its value (workers flush every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        got = samples(http_get(url)[1])
        if all(got.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def ops_runner(
    factory: RunnerFactory, workers: int = 1, **config: Any
) -> tuple[RunningRunner, str]:
    port = free_port()
    cfg = {"plugin_dirs": [PLUGINS_DIR, OPS_DIR], "metrics": {"address": f"127.0.0.1:{port}"}}
    cfg.update(config)
    return factory(config=cfg, workers=workers), f"http://127.0.0.1:{port}"


async def _calls(sock: str, token: int, n: int, conns: int) -> list[object]:
    async def one_conn(k: int) -> list[object]:
        out: list[object] = []
        async with await Client.connect(sock) as c:
            for i in range(n // conns):
                try:
                    out.append((await c.call(token, HTTPRequest(id=k * 10000 + i))).action)
                except RunnerError as exc:
                    out.append(exc)
        return out

    results = await asyncio.gather(*(one_conn(k) for k in range(conns)))
    return [r for rs in results for r in rs]


async def _prepare(sock: str, conf: list[tuple[str, str]]) -> int:
    async with await Client.connect(sock) as c:
        return await c.prepare_conf(conf)


def test_metrics_count_exactly_across_workers(runner_factory: RunnerFactory) -> None:
    running, base = ops_runner(runner_factory, workers=2)
    sock = running.socket_path

    async def workload() -> None:
        stop = await _prepare(sock, [("stop", '{"body": "x"}')])
        rewrite = await _prepare(sock, [("rewrite", '{"headers": {"X-A": "1"}}')])
        failing = await _prepare(sock, [("failing-plugin", "")])
        vars_ = await _prepare(sock, [("read-vars", '{"names": ["remote_addr"]}')])
        assert len(await _calls(sock, stop, 120, 6)) == 120
        assert all(isinstance(a, Rewrite) for a in await _calls(sock, rewrite, 40, 4))
        assert all(isinstance(a, RunnerError) for a in await _calls(sock, failing, 8, 2))
        assert all(isinstance(a, Stop) for a in await _calls(sock, vars_, 10, 2))
        async with await Client.connect(sock) as c:
            with pytest.raises(RunnerError):
                await c.call(123456789, HTTPRequest())

    arun(workload())
    expected = {
        'apisix_runner_rpc_total{outcome="ok",type="prepare_conf"}': 4,
        'apisix_runner_rpc_total{outcome="ok",type="http_req_call"}': 170,
        'apisix_runner_rpc_total{outcome="service_unavailable",type="http_req_call"}': 8,
        'apisix_runner_rpc_total{outcome="conf_token_not_found",type="http_req_call"}': 1,
        'apisix_runner_plugin_calls_total{outcome="stop",plugin="stop"}': 120,
        'apisix_runner_plugin_calls_total{outcome="rewrite",plugin="rewrite"}': 40,
        'apisix_runner_plugin_calls_total{outcome="error",plugin="failing-plugin"}': 8,
        'apisix_runner_plugin_calls_total{outcome="stop",plugin="read-vars"}': 10,
        'apisix_runner_extra_info_total{kind="var"}': 10,
        'apisix_runner_rpc_duration_seconds_count{type="http_req_call"}': 179,
        'apisix_runner_plugin_duration_seconds_count{plugin="stop"}': 120,
        'apisix_runner_conf_lookups_total{result="not_found"}': 1,
        "apisix_runner_workers_alive": 2,
        "apisix_runner_workers_ready": 2,
        "apisix_runner_conf_tokens": 4,
        "apisix_runner_connections_open": 0,
    }
    got = wait_for_metrics(base + "/metrics", expected)
    assert {k: got.get(k) for k in expected} == expected
    assert http_get(base + "/healthz") == (200, "ok\n")

    # A worker killed: counters keep what it counted, and the respawn counts.
    pid = int(re.findall(r"worker 0 started \(pid (\d+)\)", running.log_text())[0])
    os.kill(pid, signal.SIGKILL)
    after = wait_for_metrics(base + "/metrics", {"apisix_runner_worker_respawns_total": 1})
    assert after["apisix_runner_worker_respawns_total"] == 1
    key = 'apisix_runner_rpc_total{outcome="ok",type="http_req_call"}'
    assert after[key] >= 170 - 60  # at most its last 0.1 s unflushed; in practice all
    final = wait_for_metrics(base + "/metrics", {key: 170, "apisix_runner_workers_ready": 2})
    assert final[key] == 170 and final["apisix_runner_workers_ready"] == 2


def test_metrics_are_off_by_default(runner: RunningRunner) -> None:
    # "metrics on" would come before this line (the socket accepts a moment earlier).
    text = wait_for_log(runner, "listening on")
    assert "listening on" in text and "metrics on" not in text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=60
    )


def test_check_validates_config_and_plugins(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"plugin_dirs": [OPS_DIR]}))
    ok = run_cli("check", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "sleepy-sync" in ok.stdout and "jwt-auth" in ok.stdout

    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "oops.py").write_text("import does_not_exist_anywhere\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"plugin_dirs": [str(broken_dir)]}))
    res = run_cli("check", "--config", str(broken))
    assert res.returncode == 3
    assert "oops.py" in res.stderr and "does_not_exist_anywhere" in res.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"call_timeout": -1}))
    res = run_cli("check", "--config", str(bad))
    assert res.returncode == 2 and "call_timeout" in res.stderr

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"plugin_options": {"no-such-plugin": {"fail_open": True}}}))
    res = run_cli("check", "--config", str(unknown))
    assert res.returncode == 2 and "no-such-plugin" in res.stderr


def test_profile_written_per_worker(runner_factory: RunnerFactory, tmp_path: Path) -> None:
    # runner_factory has no CLI flag: start by hand like it does.
    from runner.testing.pytest_plugin import accepts, runner_env

    sock = f"/tmp/ar-prof-{os.getpid()}.sock"
    prof_dir = tmp_path / "prof"
    (tmp_path / "none.yaml").write_text("{}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "start", "--config", str(tmp_path / "none.yaml"),
         "--workers", "2", "--profile", str(prof_dir)],
        env=runner_env(sock), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not accepts(sock):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)

        async def calls() -> None:
            token = await _prepare(sock, [("stop", "{}")])
            await _calls(sock, token, 50, 2)

        arun(calls())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    profiles = sorted(prof_dir.glob("worker-*.prof"))
    assert len(profiles) == 2
    functions = set()
    for p in profiles:
        functions |= {f[2] for f in pstats.Stats(str(p)).stats}  # type: ignore[attr-defined]
    # The plugin's own filter shows on every build; the runner's functions
    # only where they run as Python (a compiled hot path is C to cProfile).
    assert "filter" in functions
    if hotpath.build() == "pure":
        assert "run_req_sync" in functions


def test_log_lines_name_worker_request_and_plugin(runner_factory: RunnerFactory) -> None:
    running = runner_factory(config={"plugin_dirs": [PLUGINS_DIR, OPS_DIR]})

    async def call() -> None:
        conf = [("sleepy-sync", '{"seconds": 0}'), ("failing-plugin", "")]
        token = await _prepare(running.socket_path, conf)
        async with await Client.connect(running.socket_path) as c:
            with pytest.raises(RunnerError):
                await c.call(token, HTTPRequest(id=4242))

    arun(call())
    lines = running.log_text().splitlines()
    plugin_line = next(ln for ln in lines if "sleepy-sync sleeping" in ln)
    assert "WARNING [worker 0 pid " in plugin_line
    assert plugin_line.endswith("{request 4242, plugin sleepy-sync}")
    failure = next(ln for ln in lines if "raised" in ln)
    assert "[worker 0 pid " in failure and "request 4242: plugin 'failing-plugin'" in failure


def test_async_log_lines_name_their_own_request(runner_factory: RunnerFactory) -> None:
    """An async plugin's lines name its request and plugin in each of its steps
    (before and after an ExtraInfo answer), and so do the lines of a task it
    leaves running, even once the connection runs its next call."""
    running = runner_factory(config={"plugin_dirs": [PLUGINS_DIR, OPS_DIR]})

    async def calls() -> None:
        async with await Client.connect(running.socket_path) as c:
            first = await c.prepare_conf([("log-async", '{"child_delay": 0.3}')])
            second = await c.prepare_conf([("log-async", '{"hold": 0.8}')])
            await c.call(first, HTTPRequest(id=501, vars={"remote_addr": "10.0.0.1"}))
            # The first call's task logs while this one runs on the same connection.
            await c.call(second, HTTPRequest(id=502, vars={"remote_addr": "10.0.0.2"}))

    arun(calls())
    deadline = time.monotonic() + 5
    while "child done (var 10.0.0.2)" not in running.log_text():
        assert time.monotonic() < deadline, running.log_text()[-2000:]
        time.sleep(0.05)
    lines = running.log_text().splitlines()

    def line(text: str) -> list[str]:
        return [ln for ln in lines if text in ln]

    first, second = "{request 501, plugin log-async}", "{request 502, plugin log-async}"
    assert [ln.endswith(first) for ln in line("log-async before the var")] == [True, False]
    assert [ln.endswith(second) for ln in line("log-async before the var")] == [False, True]
    assert [ln.endswith(first) for ln in line("log-async after the var")] == [True, False]
    assert [ln.endswith(second) for ln in line("log-async after the var")] == [False, True]
    (child_of_first,) = line("child done (var 10.0.0.1)")
    assert child_of_first.endswith(first), child_of_first
    (child_of_second,) = line("child done (var 10.0.0.2)")
    assert child_of_second.endswith(second), child_of_second


def _chain_call(sock: str, conf: list[tuple[str, str]], req_id: int = 1) -> object:
    async def call() -> object:
        token = await _prepare(sock, conf)
        async with await Client.connect(sock) as c:
            try:
                return (await c.call(token, HTTPRequest(id=req_id))).action
            except RunnerError as exc:
                return exc

    return arun(call())


def test_fail_open_skips_a_failing_plugin(runner_factory: RunnerFactory) -> None:
    running, base = ops_runner(
        runner_factory, plugin_options={"failing-plugin": {"fail_open": True}}
    )
    result = _chain_call(running.socket_path, [("failing-plugin", ""), ("stop", '{"body": "b"}')])
    assert isinstance(result, Stop) and result.body == b"b"
    assert "plugin 'failing-plugin' raised RuntimeError('kaboom-sync-marker'); skipped" in (
        running.log_text()
    )
    key = 'apisix_runner_plugin_calls_total{outcome="skipped",plugin="failing-plugin"}'
    assert wait_for_metrics(base + "/metrics", {key: 1}).get(key) == 1


def test_plugin_deadline_fails_or_skips(runner_factory: RunnerFactory) -> None:
    running = runner_factory(
        config={
            "plugin_dirs": [OPS_DIR],
            "plugin_options": {"sleepy-async": {"timeout": 0.2}},
        }
    )
    sock = running.socket_path
    t0 = time.monotonic()
    result = _chain_call(sock, [("sleepy-async", '{"seconds": 30}')])
    assert isinstance(result, RunnerError) and result.code == SERVICE_UNAVAILABLE
    assert time.monotonic() - t0 < 5  # the plugin's 0.2 s, not call_timeout (10 s)
    assert "plugin 'sleepy-async' missed its deadline" in running.log_text()


def test_watchdog_interrupts_a_plugin_blocking_the_loop(runner_factory: RunnerFactory) -> None:
    running = runner_factory(config={"plugin_dirs": [OPS_DIR], "inline_timeout": 0.3})
    sock = running.socket_path

    async def scenario() -> tuple[object, object]:
        blocker = await _prepare(sock, [("sleepy-sync", '{"seconds": 60}')])
        stop = await _prepare(sock, [("stop", '{"body": "alive"}')])
        async with await Client.connect(sock) as a, await Client.connect(sock) as b:
            blocked = asyncio.ensure_future(a.call(blocker, HTTPRequest(id=1)))
            await asyncio.sleep(0.05)
            other = await b.call(stop, HTTPRequest(id=2))  # served once the loop is free
            try:
                await blocked
            except RunnerError as exc:
                return exc, other.action
        raise AssertionError("the blocked call was not failed")

    err, other = arun(scenario(), timeout=20)
    assert isinstance(err, RunnerError) and err.code == SERVICE_UNAVAILABLE
    assert isinstance(other, Stop) and other.body == b"alive"
    assert "blocked the event loop for more than" in running.log_text()


def test_blocking_plugin_runs_in_a_thread(runner_factory: RunnerFactory) -> None:
    running = runner_factory(config={"plugin_dirs": [OPS_DIR]})
    sock = running.socket_path

    async def scenario() -> list[str]:
        slow = await _prepare(sock, [("sleepy-blocking", '{"seconds": 1.0}')])
        fast = await _prepare(sock, [("stop", '{"body": "fast"}')])
        order: list[str] = []
        async with await Client.connect(sock) as a, await Client.connect(sock) as b:

            async def call(c: Client, token: int, tag: str) -> None:
                result = await c.call(token, HTTPRequest())
                assert isinstance(result.action, Stop)
                order.append(tag)

            slow_call = asyncio.ensure_future(call(a, slow, "slow"))
            await asyncio.sleep(0.1)
            await call(b, fast, "fast")
            await slow_call
        return order

    # The fast call is answered while the blocking plugin sleeps in its thread.
    assert arun(scenario()) == ["fast", "slow"]


def test_max_requests_recycles_without_failing_calls(runner_factory: RunnerFactory) -> None:
    running, base = ops_runner(runner_factory, max_requests=100, max_requests_jitter=20)
    sock = running.socket_path

    async def scenario() -> list[object]:
        token = await _prepare(sock, [("stop", '{"body": "x"}')])
        results: list[object] = []
        for _ in range(6):  # new connections reach the replacement workers
            results += await _calls(sock, token, 60, 3)
            await asyncio.sleep(0.6)
        return results

    results = arun(scenario(), timeout=60)
    assert len(results) == 360
    assert all(isinstance(r, Stop) for r in results), [
        r for r in results if not isinstance(r, Stop)
    ]
    got = samples(http_get(base + "/metrics")[1])
    assert got["apisix_runner_worker_recycles_total"] >= 1
    assert got.get("apisix_runner_worker_respawns_total", 0) == 0
    assert "replaced after max_requests" in running.log_text()


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_socket_owner_and_group_applied(runner_factory: RunnerFactory) -> None:
    nobody = pwd.getpwnam("nobody")
    running = runner_factory(config={"socket": {"owner": "nobody", "group": str(nobody.pw_gid)}})
    st = os.stat(running.socket_path)
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_unknown_socket_owner_stops_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"socket": {"owner": "no-such-user-xyz"}}))
    from runner.testing.pytest_plugin import runner_env

    res = subprocess.run(
        [sys.executable, "-m", "runner", "start", "--config", str(cfg), "--foreground"],
        env=runner_env(str(tmp_path / "r.sock")), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 2
    assert "no user named 'no-such-user-xyz'" in res.stderr


def test_world_writable_plugin_dir_warns(runner_factory: RunnerFactory, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "noop.py").write_text(
        "from runner import Plugin\n\n\nclass Noop(Plugin):\n    name = 'noop'\n\n"
        "    def filter(self, conf, request, response):\n        pass\n"
    )
    os.chmod(loose, 0o777)
    running = runner_factory(plugins_dir=str(loose))
    assert f"{loose} is world-writable" in running.log_text()


def test_runs_with_the_environment_nginx_passes(tmp_path: Path) -> None:
    """nginx passes the runner only PATH and APISIX's variables (no LANG or
    LC_*, docs/protocol.md §10.5): config, plugins and logs must not depend on a locale."""
    from runner.testing.pytest_plugin import accepts

    cfg = tmp_path / "config.yaml"
    cfg.write_text("# réglages — ünïcode\nlogging:\n  file: " + str(tmp_path / "r.log") + "\n",
                   encoding="utf-8")  # fmt: skip
    sock = str(tmp_path / "r.sock")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APISIX_LISTEN_ADDRESS": f"unix:{sock}",
        "APISIX_CONF_EXPIRE_TIME": "3600",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "start", "--config", str(cfg), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not accepts(sock):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        result = _chain_call(sock, [("stop", '{"body": "grüße ✓", "headers": {"X-Ü": "ü"}}')])
        assert isinstance(result, Stop) and result.body.decode() == "grüße ✓"
        assert ("X-Ü", "ü") in result.headers
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err

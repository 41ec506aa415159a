"""The benchmarks' command lines as documented in bench/README.md: --pid takes
what `pgrep` prints, and the long runs (`loadgen --suite`, the wrk matrix) say
on stderr how far they are. Nothing is started here: the runs are faked."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.gateway import matrix  # noqa: E402


@pytest.mark.parametrize(
    "argv",
    [
        ["--pid", "11", "12", "13"],  # --pid $(pgrep -f 'runner start'), unquoted
        ["--pid", "11\n12\n13\n"],  # the same, quoted
        ["--pid", "11,12", "--pid", "13"],  # comma-separated, repeated
        ["--pid", "11", "--pid", "12", "--pid", "13", "--pid", "12"],  # each counted once
    ],
)
def test_pid_takes_several(argv: list[str]) -> None:
    opts, _, _ = loadgen.parse_args(["--socket", "/tmp/r.sock", *argv, "--duration", "1"])
    assert opts.pids == (11, 12, 13)
    assert opts.duration == 1.0


@pytest.mark.parametrize("bad", ["x", "12,abc", "-3", "0", ""])
def test_pid_rejects_what_is_not_a_pid(bad: str) -> None:
    with pytest.raises(SystemExit):
        loadgen.parse_args(["--socket", "/tmp/r.sock", "--pid", bad])


def _fake_result() -> loadgen.Result:
    return loadgen.Result(
        requests=10,
        duration_s=0.1,
        requests_per_s=100.0,
        latency_us={"p50": 50.0, "p90": 80.0, "p99": 90.0, "max": 99.0, "mean": 60.0},
        runner_cpu_us_per_req=5.0,
        runner_user_us_per_req=2.0,
        loadgen_cpu_us_per_req=4.0,
        runner_cpu_cores=0.5,
        errors={},
        connections=16,
        processes=1,
        payload_bytes=1000,
        runner_pids=[],
    )


@contextlib.contextmanager
def _fake_server(*_args: Any) -> Iterator[tuple[str, int]]:
    yield "/nonexistent.sock", 2**22 + 12345  # no such process: no workers to read


def test_suite_prints_one_line_per_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(loadgen, "managed_runner", _fake_server)
    monkeypatch.setattr(loadgen, "fake_runner", _fake_server)
    monkeypatch.setattr(loadgen, "_run_against", lambda *_: _fake_result())
    prepared = loadgen.PrepareResult(200, 50, {"p50": 1.0, "p99": 2.0, "max": 3.0}, 1.0)
    monkeypatch.setattr(loadgen, "measure_prepare", lambda *_: prepared)
    suite = loadgen.SuiteOptions(duration=3.0, warmup=1.0, rounds=2, workloads=("stop", "noop3"))
    loadgen.run_suite(suite)
    lines = capsys.readouterr().err.splitlines()
    # 2 rounds x (2 workloads + 2 floor rows + 1 PrepareConf round)
    assert len(lines) == 10, lines
    for k, line in enumerate(lines, 1):
        assert re.fullmatch(rf"\[{k}/10\] round [12]/2: \S.* \(~\d+ s left\)", line), line
    assert lines[0] == "[1/10] round 1/2: stop (~50 s left)"  # 10 x (1 + 3 + 1) s
    assert lines[-1].startswith("[10/10] round 2/2: PrepareConf x 200 ")


class _Gateway:
    def url(self, path: str) -> str:
        return "http://127.0.0.1:1" + path


def test_matrix_prints_count_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    def wrk(url: str, script: str, connections: int, duration: int) -> dict[str, float]:
        return {"rps": 1000.0, "p50_us": 500, "p99_us": 900, "errors": 0, "non2xx": 0}

    scenarios = matrix.SCENARIOS[:2]
    gw: Any = _Gateway()
    cells, runs = matrix.measure(gw, scenarios, [16, 64], 3, 10, wrk=wrk)
    assert len(cells) == 4 and len(runs) == 24
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert len(progress) == 24
    first = f"[1/24] {scenarios[0].name} c=16 variant lua rep 1/3 (~{24 * 10.3:.0f} s left)"
    assert progress[0] == first
    assert progress[1].startswith(f"[2/24] {scenarios[0].name} c=16 variant python rep 1/3 (~")
    assert progress[-1].startswith(f"[24/24] {scenarios[1].name} c=64 variant python rep 3/3 (~")
    for line in progress:
        assert re.fullmatch(
            r"\[\d+/24\] \S+ c=\d+ variant (lua|python) rep \d/3 \(~\d+ s left\)", line
        )


def test_fake_runner_answers_a_rewrite_template_when_asked() -> None:
    """The gateway's template reference for header-rewrite (bench.gateway.cpu):
    one precomputed Rewrite setting and removing the route's headers."""
    from bench import fake_runner
    from runner.testing.frames import Rewrite, parse_req_call_resp

    replies = fake_runner.Replies(None, 0, [("X-Api-Version", "2"), ("X-Debug", None)])
    frame = fake_runner.FakeConn(replies)._reply(fake_runner.RPC_HTTP_REQ_CALL)
    assert frame[0] == fake_runner.RPC_HTTP_REQ_CALL
    action = parse_req_call_resp(frame[4:], []).action
    assert isinstance(action, Rewrite)
    assert action.headers == [("X-Api-Version", "2"), ("X-Debug", None)]
    assert action.path is None and action.args == [] and action.body is None
    stop = fake_runner.FakeConn(fake_runner.Replies(None, 0))._reply(fake_runner.RPC_HTTP_REQ_CALL)
    assert stop == fake_runner.build_stop_resp()


def test_client_processes_never_outnumber_the_clients_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two client processes on one CPU take turns at the scheduler's tick, and
    the waiting one's replies are read a tick late: the default never puts
    more client processes than CPUs on the clients' side."""
    monkeypatch.setattr(loadgen.os, "sched_getaffinity", lambda pid: {0, 1})
    two_cpus = loadgen.Options(connections=64, workers=1)
    assert two_cpus.client_cpus() == 1 and two_cpus.client_processes() == 1
    assert loadgen.Options(connections=64, workers=1, pin=True).client_processes() == 1
    monkeypatch.setattr(loadgen.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert loadgen.Options(connections=64, workers=4).client_processes() == 2
    assert loadgen.Options(connections=16, workers=4).client_processes() == 1
    assert loadgen.Options(connections=64, workers=1, processes=3).client_processes() == 3

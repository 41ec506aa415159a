"""The benchmarks still run: bench/micro once per test with timing disabled,
and the command lines of the load generator, the harness and the scaling
table. No timing is checked here (the numbers depend on the machine); see
bench/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.micro import harness  # noqa: E402


def test_micro_benchmarks_run() -> None:
    # A subprocess: pytest-benchmark must own its session's options, and the
    # repo's testpaths (tests/) must not apply.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/micro", "--benchmark-disable", "-q", "-p",
         "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def test_harness_runs_every_workload() -> None:
    for name, conf in harness.WORKLOADS.items():
        bench = harness.InProcess(conf)
        harness.run_calls(bench, 3, harness.is_async_chain(bench))
        assert bench.replies == 3, name


def test_harness_runs_async_calls_in_one_loop_after_another() -> None:
    """The harness makes a connection before any loop runs and then drives it
    in a new loop per run ("best of 5"): each call must use the loop it runs
    in. The sleep lets the deadline sweep of the first loop run and stop, so
    that the second loop's first call arms it again, on its own loop."""
    import asyncio

    import uvloop

    bench = harness.InProcess(harness.WORKLOADS["var-stop"])
    sweep = bench.conn._state.sweep_interval  # type: ignore[union-attr]

    async def calls_then_idle() -> None:
        await bench.run_async(3)
        await asyncio.sleep(sweep * 3)

    for _ in range(2):
        uvloop.run(calls_then_idle())
    assert bench.replies == 6


def test_harness_runs_the_floor_references() -> None:
    # The bare loop fed like the runner: a Stop per call, and for floor-var
    # an ExtraInfo question answered first (icount's floor rows).
    for name in harness.FLOORS:
        bench = harness.in_process(name)
        harness.run_calls(bench, 3, harness.is_async_chain(bench))
        assert bench.replies == 3, name
        assert bench.last_reply == bench.conn.replies.stop  # type: ignore[union-attr]


def test_loadgen_workload_options() -> None:
    opts, suite, _ = loadgen.parse_args(["--workload", "var-stop", "--duration", "1"])
    assert suite is None
    assert opts.conf == loadgen.WORKLOADS["var-stop"].conf
    assert opts.variables == loadgen.SUITE_VARS
    assert loadgen.BENCH_PLUGINS in opts.plugin_dirs
    _, suite, out = loadgen.parse_args(["--suite", "--only", "stop", "--json", "x.json"])
    assert suite is not None and suite.workloads == ("stop",) and out == "x.json"


def test_pin_gives_the_runner_its_workers_cpus_and_the_clients_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loadgen.os, "sched_getaffinity", lambda pid: {3, 1, 2, 0})
    assert loadgen.pin_sets(1) == ((0,), (1, 2, 3))
    assert loadgen.pin_sets(3) == ((0, 1, 2), (3,))
    with pytest.raises(ValueError, match="4 CPUs, 4 workers"):
        loadgen.pin_sets(4)
    opts, suite, _ = loadgen.parse_args(["--suite", "--pin", "--only", "stop"])
    assert opts.pin and suite is not None and suite.pin
    with pytest.raises(SystemExit):
        loadgen.parse_args(["--pin", "--socket", "/tmp/x.sock"])
    with pytest.raises(SystemExit):
        loadgen.parse_args(["--pin", "--workers", "4"])


def test_loadgen_measures_the_runners_user_time_within_its_cpu_time() -> None:
    """A short real run: the runner's CPU per request and its user-space part,
    both measured (a runner that answered 1 s of calls used some of each), the
    part smaller than the whole (each call's read and write are the kernel's)."""
    opts, _, _ = loadgen.parse_args(
        ["--workload", "stop", "--duration", "1", "--warmup", "0.3", "--connections", "2"]
    )
    result = loadgen.run(opts)
    assert result.requests > 0 and not result.errors, result
    cpu, user = result.runner_cpu_us_per_req, result.runner_user_us_per_req
    assert cpu is not None and user is not None, result
    assert 0 < user < cpu, result  # the socket I/O is the kernel's: never all user
    assert "of it user" in loadgen.format_table(result)


def test_loadgen_rejects_unknown_workloads() -> None:
    with pytest.raises(SystemExit):
        loadgen.parse_args(["--suite", "--only", "nope"])


def test_prepare_conf_of_50_plugins_is_accepted() -> None:
    store = harness.new_store()
    conf = loadgen.prepare_conf_of(loadgen.PREPARE_PLUGINS)
    assert len(conf) == 50
    token = store.prepare("route#50", conf)
    chain = store.get(token)
    assert chain is not None and len(chain.req) + len(chain.resp) >= 50


def test_scaling_table_counts_every_connection(tmp_path: Path) -> None:
    # The command line as a person runs it: one runner per worker count, the
    # load generator's spawned clients, the table on stdout. Balance is not
    # checked: only that each worker is listed and no connection is missed.
    out = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scaling", "--workers", "1,2", "--connections", "4",
         "--duration", "1", "--warmup", "0.5", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in proc.stdout.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    header, rows = table[0], table[1:]
    spread = header.index("connections per worker")
    assert [row[:2] for row in rows] == [["1", "4"], ["2", "4"]], proc.stdout
    for row in rows:
        counts = [int(n) for n in row[spread].split("/")]
        assert len(counts) == int(row[0]) and sum(counts) == 4, proc.stdout
    data = json.loads(out.read_text())
    assert [sum(r["connections_per_worker"]) for r in data["rows"]] == [4, 4]
    assert all(r["requests_per_s"] > 0 for r in data["rows"])

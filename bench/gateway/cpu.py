"""The runner's CPU time per request through the gateway, against a bare-loop
reference runner measured in the same run.

::

    .venv/bin/python -m bench.gateway.cpu                  # 5 s runs, 3 rounds: ~1.5 min
    .venv/bin/python -m bench.gateway.cpu --duration 1 --rounds 1 --scenario stop --json cpu.json

One rig (nginx with APISIX's Lua ext-plugin client + the echo upstream) for the
whole run. For every round and scenario two runners take turns on the socket
nginx calls, back to back (ours first in odd rounds, the reference first in
even ones, so a noisy minute hits both):

- ours: ``python -m runner start --workers N`` (as the rig starts it);
- the reference: ``python -m bench.fake_runner SOCKET``, a bare uvloop server
  that answers every PrepareConf with token 1 and every HTTPReqCall with one
  precomputed frame: the floor, a runner replying from a template. On
  header-rewrite the frame is the route's own Rewrite (``Scenario.reference_args``),
  so nginx proxies each request to the upstream as it does with ours and both
  answer calls at the same rate; elsewhere it is a Stop (403), and its non-2xx
  are those answers.

Each run: start the runner, 1 s of wrk to warm up, one request checked (ours
does the plugin's work, the reference answers its Stop or does what ours does), then
``wrk -t1 -cC -dDs`` on the scenario's Python route (bench/wrk/<scenario>.lua)
with the utime+stime of the runner's process tree (the pid and its descendants,
from /proc) read just before and just after. Runner CPU per request = that CPU /
wrk's completed requests (non-2xx included, and reported). Prints a Markdown
table: CPU us/req per round and median, req/s median, and ours / reference (the
ratio of the medians) against the target <= 1.3x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.fake_runner import STOP_BODY
from bench.gateway import rig
from bench.gateway.matrix import (
    SCENARIOS,
    WRK_OVERHEAD_S,
    Scenario,
    check_route,
    run_wrk,
    select_scenarios,
)
from bench.loadgen import RunProgress, cpu_seconds, cpu_ticks, descendants

TARGET = 1.3  # ours / reference, runner CPU per request, at most
WARMUP_S = 1
START_S = 1.5  # a runner start, its check and its stop, for the time left
DEFAULT_SCENARIOS = ("stop", "header-rewrite")
RUNNERS = ("ours", "reference")
LABELS = {"ours": "ours", "reference": "bare-loop reference"}

Wrk = Callable[[str, str, int, int], dict[str, float]]


@dataclass
class Run:
    scenario: str
    runner: str  # "ours" or "reference"
    round: int
    requests: int
    rps: float
    runner_cpu_s: float
    cpu_us_per_req: float
    non2xx: int
    errors: int  # wrk's socket errors
    processes: int  # in the runner's tree


# --------------------------------------------------------------------------- one run


def start_runner(gw: rig.Rig, runner: str, scenario: Scenario) -> None:
    if runner == "ours":
        gw.start_runner()
    else:
        gw.start_runner_command(
            [sys.executable, "-m", "bench.fake_runner", gw.runner_socket,
             *scenario.reference_args]
        )  # fmt: skip


def _reference_answer(status: int, body: bytes) -> bool:
    return status == 403 and body == STOP_BODY


def check_runner(gw: rig.Rig, scenario: Scenario, runner: str) -> None:
    """One request: ours must do the plugin's work; the reference answer its
    Stop, or, where it answers from the route's own template, what ours does."""
    if runner == "reference" and not scenario.reference_args:
        scenario = dataclasses.replace(scenario, check=_reference_answer)
    check_route(gw, scenario, scenario.py_path)


def runner_pids(gw: rig.Rig) -> list[int]:
    assert gw.runner is not None
    return descendants((gw.runner.pid,))


def measured_wrk(
    gw: rig.Rig, scenario: Scenario, connections: int, duration: int, wrk: Wrk
) -> tuple[dict[str, float], float, int]:
    """wrk's result, the runner tree's CPU seconds during it, its process count."""
    pids = runner_pids(gw)
    before = cpu_ticks(pids)
    res = wrk(gw.url(scenario.py_path), scenario.script, connections, duration)
    after = cpu_ticks(pids)
    if lost := sorted(set(before) - set(after)):
        print(f"# runner pids {lost} exited; their CPU is not counted", file=sys.stderr)
    if new := sorted(set(runner_pids(gw)) - set(pids)):
        print(f"# runner pids {new} started during the run; not counted", file=sys.stderr)
    return res, cpu_seconds(before, after), len(pids)


def measure_run(
    gw: rig.Rig,
    scenario: Scenario,
    runner: str,
    rnd: int,
    connections: int,
    duration: int,
    wrk: Wrk = run_wrk,
) -> Run:
    """Start ``runner`` on the rig's socket, warm up, check, measure, stop it."""
    start_runner(gw, runner, scenario)
    try:
        wrk(gw.url(scenario.py_path), scenario.script, connections, WARMUP_S)
        check_runner(gw, scenario, runner)
        res, cpu_s, processes = measured_wrk(gw, scenario, connections, duration, wrk)
    finally:
        gw.stop_runner()
    requests = int(res["requests"])
    per_req = cpu_s * 1e6 / requests if requests else 0.0
    return Run(
        scenario.name, runner, rnd, requests, res["rps"], cpu_s, per_req,
        int(res["non2xx"]), int(res["errors"]), processes,
    )  # fmt: skip


def measure(
    gw: rig.Rig,
    scenarios: Sequence[Scenario],
    rounds: int,
    connections: int,
    duration: int,
    wrk: Wrk = run_wrk,
) -> list[Run]:
    """Every round and scenario: ours and the reference back to back, the order
    alternating by round; a progress line on stderr before each run."""
    run_s = duration + WARMUP_S + 2 * WRK_OVERHEAD_S + START_S
    progress = RunProgress(rounds * len(scenarios) * len(RUNNERS), run_s)
    runs: list[Run] = []
    for rnd in range(1, rounds + 1):
        order = RUNNERS if rnd % 2 else RUNNERS[::-1]
        for s in scenarios:
            for runner in order:
                progress.step(f"{s.name} round {rnd}/{rounds} {runner}")
                run = measure_run(gw, s, runner, rnd, connections, duration, wrk)
                runs.append(run)
                print(
                    f"# {s.name} round {rnd} {runner}: {run.cpu_us_per_req:.2f} us/req, "
                    f"{run.rps:,.0f} req/s, {run.requests:,} requests",
                    file=sys.stderr,
                )
    return runs


# --------------------------------------------------------------------------- the table


@dataclass
class Summary:
    scenario: str
    ours_us: float
    reference_us: float
    ratio: float  # ours / reference, of the medians
    round_ratios: list[float]

    @property
    def passed(self) -> bool:
        return self.ratio <= TARGET


def _select(runs: Sequence[Run], scenario: str, runner: str) -> list[Run]:
    return sorted((r for r in runs if r.scenario == scenario and r.runner == runner),
                  key=lambda r: r.round)  # fmt: skip


def summarize(runs: Sequence[Run], scenario: str) -> Summary | None:
    ours, ref = _select(runs, scenario, "ours"), _select(runs, scenario, "reference")
    if not ours or not ref:
        return None
    ours_us = statistics.median(r.cpu_us_per_req for r in ours)
    ref_us = statistics.median(r.cpu_us_per_req for r in ref)
    pairs = zip(ours, ref, strict=False)
    per_round = [o.cpu_us_per_req / f.cpu_us_per_req for o, f in pairs if f.cpu_us_per_req]
    ratio = ours_us / ref_us if ref_us else float("inf")
    return Summary(scenario, ours_us, ref_us, ratio, per_round)


def _row(runs: list[Run], scenario: str, runner: str, summary: Summary | None) -> str:
    rounds = ", ".join(f"{r.cpu_us_per_req:.2f}" for r in runs)
    median_us = statistics.median(r.cpu_us_per_req for r in runs)
    rps = statistics.median(r.rps for r in runs)
    errors = f"{sum(r.non2xx for r in runs):,} / {sum(r.errors for r in runs):,}"
    ratio = per_round = target = verdict = ""
    if runner == "ours" and summary is not None:
        ratio = f"**{summary.ratio:.2f}x**"
        per_round = ", ".join(f"{x:.2f}x" for x in summary.round_ratios)
        target, verdict = f"<= {TARGET:g}x", "pass" if summary.passed else "**MISS**"
    return (
        f"| {scenario} | {LABELS[runner]} | {rounds} | {median_us:.2f} | {rps:,.0f} | {errors} "
        f"| {ratio} | {per_round} | {target} | {verdict} |"
    )


def render_table(runs: Sequence[Run], scenarios: Sequence[str]) -> str:
    lines = [
        "| scenario | runner | runner CPU us/req (per round) | median us/req | req/s (median) "
        "| non-2xx / socket errors | ours / reference (medians) | per round | target | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in scenarios:
        summary = summarize(runs, name)
        for runner in RUNNERS:
            if selected := _select(runs, name, runner):
                lines.append(_row(selected, name, runner, summary))
    return "\n".join(lines)


NOTES = (
    "runner CPU: utime+stime of the runner's process tree during the measured wrk run, "
    "divided by wrk's completed requests (non-2xx included).\n"
    "bare-loop reference: bench.fake_runner answers every call from one precomputed frame: "
    "the route's own Rewrite on header-rewrite (nginx proxies it, as it does ours), a Stop "
    "(403, hence its non-2xx) elsewhere: the floor, a runner replying from a template.\n"
    "ours / reference: median of ours / median of the reference; per round: the two runs of a "
    "round were back to back."
)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gateway.cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per measured run")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each: ours + reference)")
    p.add_argument("--connections", type=int, default=16, help="wrk -c")
    p.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in SCENARIOS],
        default=None,
        help=f"repeatable (default: {' and '.join(DEFAULT_SCENARIOS)})",
    )
    p.add_argument("--workers", type=int, default=1, help="our runner's worker processes")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write runs here")
    return p


def _why_not() -> str | None:
    """Why the benchmark cannot run here (nginx's Lua module or wrk missing), or None."""
    if (reason := rig.missing_requirements()) is not None:
        return reason
    if shutil.which("wrk") is None:
        return "wrk is not installed (apt-get install wrk)"
    return None


def _header(args: argparse.Namespace) -> str:
    return (
        f"wrk -t1 -c{args.connections} -d{args.duration}s after {WARMUP_S} s of warm-up, "
        f"{args.rounds} rounds; nginx 1 worker, runner --workers {args.workers}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{len(os.sched_getaffinity(0))} CPUs\n"
    )


def _write_json(path: Path, args: argparse.Namespace, runs: list[Run], names: list[str]) -> None:
    summaries = [s for s in (summarize(runs, n) for n in names) if s is not None]
    doc: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "target": TARGET,
        "summary": [{**asdict(s), "passed": s.passed} for s in summaries],
        "runs": [asdict(r) for r in runs],
    }
    path.write_text(json.dumps(doc, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table; 0 once measured (pass or MISS), 1 if it cannot run."""
    args = _parser().parse_args(argv)
    if (reason := _why_not()) is not None:
        print(f"bench.gateway.cpu: {reason}", file=sys.stderr)
        return 1
    scenarios = select_scenarios(args.scenario or DEFAULT_SCENARIOS)
    try:
        gw = rig.start(workers=args.workers, with_runner=False)
    except rig.RigError as exc:
        print(f"bench.gateway.cpu: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"# rig: {gw.url('/')}, prefix {gw.prefix}", file=sys.stderr)
        runs = measure(gw, scenarios, args.rounds, args.connections, args.duration)
    finally:
        gw.stop()
    names = [s.name for s in scenarios]
    print(_header(args))
    print(render_table(runs, names))
    print(f"\n{NOTES}")
    if args.json is not None:
        _write_json(args.json, args, runs, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())

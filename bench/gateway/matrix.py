"""The wrk matrix: each scenario's Python plugin (through the runner) against its
native Lua twin, in one nginx, at several connection counts.

::

    .venv/bin/python -m bench.gateway.matrix                # -d10s, -c16/-c64, 3 reps
    .venv/bin/python -m bench.gateway.matrix --duration 3 --reps 1 --scenario stop

It starts the rig (nginx + the runner with ``--workers``), checks that every
route does its work (a request through each, its answer checked), runs
``wrk -t1 -cC -dDs --latency -s bench/wrk/<scenario>.lua`` for every
(scenario, connections, repetition) with the Lua and Python routes alternating,
prints a Markdown table of the medians and stops everything by pid.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.loadgen import RunProgress

from . import rig

WRK_DIR = rig.REPO_ROOT / "bench" / "wrk"
PLUGINS_DIR = rig.REPO_ROOT / "plugins"
WRK_OVERHEAD_S = 0.3  # per wrk run: start-up and the final report
_WRK_JSON = re.compile(r"^WRK_JSON (\{.*\})$", re.MULTILINE)


def _echoed_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def _check_header_rewrite(status: int, body: bytes) -> bool:
    h = _echoed_headers(body)
    return status == 200 and h.get("x-api-version") == "2" and "x-debug" not in h


def _check_jwt(status: int, body: bytes) -> bool:
    h = _echoed_headers(body)
    return status == 200 and h.get("x-jwt-sub") == "bench-user"


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    lua_path: str  # the native Lua route (or plain proxy)
    py_path: str  # the Python plugin through the runner
    check: Callable[[int, bytes], bool]
    requires: str | None = None  # the bundled plugin file the Python route needs
    note: str = ""
    # bench.fake_runner's options for a template reference that answers the
    # Python route as the plugin does (bench.gateway.cpu); none: it answers Stop.
    reference_args: tuple[str, ...] = ()


# routes.yaml's header-rewrite conf as bench.fake_runner options: one precomputed Rewrite.
_HEADER_REWRITE_TEMPLATE = (
    *("--rewrite-header", "X-Api-Version=2"),
    *("--rewrite-header", "X-Tenant=acme"),
    *("--remove-header", "X-Debug"),
)

SCENARIOS = (
    Scenario(
        "proxy",
        "proxy.lua",
        "/lua/proxy?page=2&limit=50",
        "/py/proxy?page=2&limit=50",
        lambda status, body: status == 200 and b'"page"' in body,
        note="Lua row: plain proxy; Python row: a runner round trip with no plugin",
    ),
    Scenario(
        "stop",
        "stop.lua",
        "/lua/stop?page=2&limit=50",
        "/py/stop?page=2&limit=50",
        lambda status, body: status == 200 and body == b"hello",
        requires="stop.py",
    ),
    Scenario(
        "header-rewrite",
        "header_rewrite.lua",
        "/lua/header-rewrite?page=2&limit=50",
        "/py/header-rewrite?page=2&limit=50",
        _check_header_rewrite,
        requires="header_rewrite.py",
        reference_args=_HEADER_REWRITE_TEMPLATE,
    ),
    Scenario(
        "jwt-auth",
        "jwt_auth.lua",
        "/lua/jwt-auth?page=2&limit=50",
        "/py/jwt-auth?page=2&limit=50",
        _check_jwt,
        requires="jwt_auth.py",
    ),
)


@dataclass
class Run:
    scenario: str
    variant: str  # "lua" or "python"
    connections: int
    rps: float
    p50_us: int
    p99_us: int
    errors: int
    non2xx: int


@dataclass
class Cell:
    scenario: str
    connections: int
    runs: dict[str, list[Run]] = field(default_factory=dict)


def _median_run(runs: list[Run]) -> Run:
    """The run with the median req/s (its own latencies, not a mix)."""
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def wrk_argv(url: str, script: str, connections: int, duration: int, threads: int = 1) -> list[str]:
    return [
        shutil.which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(WRK_DIR / script),
        url,
    ]


def run_wrk(url: str, script: str, connections: int, duration: int) -> dict[str, float]:
    argv = wrk_argv(url, script, connections, duration)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    m = _WRK_JSON.search(out.stdout)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{out.stdout}{out.stderr}")
    result: dict[str, float] = json.loads(m.group(1))
    return result


def check_route(gw: rig.Rig, scenario: Scenario, path: str) -> None:
    """One request like the wrk script's; its answer must show the plugin's work."""
    headers = {"X-Debug": "1"}
    if scenario.name == "jwt-auth":
        token = re.search(r'TOKEN = "([^"]+)"', (WRK_DIR / scenario.script).read_text())
        assert token is not None
        headers["Authorization"] = f"Bearer {token.group(1)}"
    req = urllib.request.Request(gw.url(path), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    if not scenario.check(status, body):
        raise RuntimeError(
            f"{path}: unexpected answer {status} {body[:300]!r}\n{gw.error_log_text()[-2000:]}"
        )


def paired_ratios(cell: Cell) -> list[float]:
    """Python / Lua req/s of each repetition: the two runs of a repetition are
    back to back, so a noisy neighbour slows both and the ratio stays fair."""
    lua, py = cell.runs.get("lua", []), cell.runs.get("python", [])
    return sorted(p.rps / q.rps for p, q in zip(py, lua, strict=False) if q.rps)


def render_table(cells: list[Cell], reps: int) -> str:
    lines = [
        f"| scenario | conns | variant | req/s (median of {reps}) | p50 | p99 | errors "
        "| Python / Lua (median, range) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        med = {v: _median_run(runs) for v, runs in cell.runs.items()}
        ratios = paired_ratios(cell)
        ratio = ""
        if ratios:
            mid = statistics.median(ratios)
            ratio = f"**{mid:.0%}** ({ratios[0]:.0%} to {ratios[-1]:.0%})"
        for variant in ("lua", "python"):
            if variant not in med:
                continue
            r = med[variant]
            label = {"lua": "native Lua", "python": "Python via runner"}[variant]
            errs = r.errors + r.non2xx
            shown = ratio if variant == "python" else ""
            lines.append(
                f"| {cell.scenario} | {cell.connections} | {label} | {r.rps:,.0f} "
                f"| {_ms(r.p50_us)} | {_ms(r.p99_us)} | {errs} | {shown} |"
            )
    return "\n".join(lines)


def measure(
    gw: rig.Rig,
    scenarios: Sequence[Scenario],
    conns: Sequence[int],
    reps: int,
    duration: int,
    wrk: Callable[[str, str, int, int], dict[str, float]] = run_wrk,
) -> tuple[list[Cell], list[Run]]:
    """Every (scenario, connections, repetition), the Lua and Python routes
    alternating; a line with the count and the time left before each run."""
    cells: list[Cell] = []
    runs: list[Run] = []
    eta = RunProgress(len(scenarios) * len(conns) * reps * 2, duration + WRK_OVERHEAD_S)
    for s in scenarios:
        for c in conns:
            cell = Cell(s.name, c)
            cells.append(cell)
            for rep in range(reps):
                for variant, path in (("lua", s.lua_path), ("python", s.py_path)):
                    eta.step(f"{s.name} c={c} variant {variant} rep {rep + 1}/{reps}")
                    res = wrk(gw.url(path), s.script, c, duration)
                    run = Run(
                        s.name,
                        variant,
                        c,
                        res["rps"],
                        int(res["p50_us"]),
                        int(res["p99_us"]),
                        int(res["errors"]),
                        int(res["non2xx"]),
                    )
                    runs.append(run)
                    cell.runs.setdefault(variant, []).append(run)
                    print(
                        f"# {s.name} -c{c} rep {rep + 1} {variant}: {run.rps:,.0f} req/s "
                        f"p50 {_ms(run.p50_us)} p99 {_ms(run.p99_us)}",
                        file=sys.stderr,
                    )
    return cells, runs


def _ms(us: int) -> str:
    return f"{us / 1000:.2f} ms"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gateway.matrix", description=__doc__)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--reps", type=int, default=3, help="repetitions per cell")
    p.add_argument("--connections", default="16,64", help="comma-separated wrk -c values")
    p.add_argument("--workers", type=int, default=1, help="runner worker processes")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk per route first")
    p.add_argument("--scenario", action="append", default=None, help="only these (repeatable)")
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    return p


def select_scenarios(names: Sequence[str] | None) -> list[Scenario]:
    """The scenarios named (all when None) whose bundled plugin is there."""
    chosen = []
    for s in SCENARIOS:
        if names and s.name not in names:
            continue
        if s.requires and not (PLUGINS_DIR / s.requires).exists():
            print(f"skipping {s.name}: plugins/{s.requires} does not exist", file=sys.stderr)
            continue
        chosen.append(s)
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.gateway.matrix: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    conns = [int(c) for c in args.connections.split(",")]
    scenarios = select_scenarios(args.scenario)

    try:
        gw = rig.start(workers=args.workers, nginx_workers=args.nginx_workers)
    except rig.RigError as exc:
        print(f"bench.gateway.matrix: {exc}", file=sys.stderr)
        return 1
    runs: list[Run] = []
    cells: list[Cell] = []
    try:
        assert gw.nginx is not None and gw.runner is not None
        print(
            f"# rig: nginx pid {gw.nginx.pid} ({args.nginx_workers} worker), runner pid "
            f"{gw.runner.pid} ({args.workers} worker), {gw.url('/')}",
            file=sys.stderr,
        )
        warmup_s = len(scenarios) * 2 * (max(args.warmup, 0) + WRK_OVERHEAD_S)
        routes = len(scenarios) * 2
        print(f"# checking and warming up {routes} routes (~{warmup_s:.0f} s)", file=sys.stderr)
        for s in scenarios:
            for path in (s.lua_path, s.py_path):
                check_route(gw, s, path)
                if args.warmup > 0:
                    run_wrk(gw.url(path), s.script, conns[0], args.warmup)
        cells, runs = measure(gw, scenarios, conns, args.reps, args.duration)
    finally:
        gw.stop()

    print(
        f"wrk -t1 -c{{{','.join(map(str, conns))}}} -d{args.duration}s, {args.reps} reps; "
        f"nginx {args.nginx_workers} worker, runner --workers {args.workers}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{_cpus()} CPUs\n"
    )
    print(render_table(cells, args.reps))
    for s in scenarios:
        if s.note:
            print(f"\n{s.name}: {s.note}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())

"""Reloads under load through the gateway: does any call get lost?

    python -m bench.gateway.reload [--connections 16,64] [--reloads 10] [--interval 1]
        [--workers 2] [--workers-cycle 2,3,1] [--max-requests N] [--scenario stop]

For each connection count: start the rig (nginx + APISIX's Lua client + the
runner), run wrk on one route while the runner gets ``--reloads`` SIGHUPs
``--interval`` seconds apart, then count what APISIX would have turned into
an error: wrk's non-2xx answers and socket errors, and nginx's "failed to
send/receive RPC" lines (a call the runner's connection lost). With
``--workers-cycle`` each reload also rewrites ``workers`` in the runner's
config.yaml (2 -> 3 -> 1 -> 2 ...); with ``--max-requests`` the workers also
recycle themselves every N calls. Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.gateway import rig
from bench.gateway.matrix import run_wrk

ROUTES = {
    "stop": ("/py/stop", "stop.lua"),
    "header-rewrite": ("/py/header-rewrite", "header_rewrite.lua"),
}
_FAILED_RPC = re.compile(
    r"failed to (?:send|receive|connect)[^\n]*RPC|RPC[^\n]*failed", re.IGNORECASE
)


@dataclass
class Outcome:
    scenario: str
    connections: int
    reloads: int
    workers: str
    requests: int
    non2xx: int
    socket_errors: int
    failed_rpcs: int
    recycles: int

    @property
    def clean(self) -> bool:
        return self.non2xx == 0 and self.socket_errors == 0 and self.failed_rpcs == 0


def _reloader(
    gw: rig.Rig, reloads: int, interval: float, cycle: Sequence[int], base: dict[str, Any]
) -> threading.Thread:
    def run() -> None:
        for n in range(reloads):
            time.sleep(interval)
            config = None
            if cycle:
                config = {**base, "workers": cycle[(n + 1) % len(cycle)]}
            gw.reload_runner(config)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_once(
    scenario: str,
    connections: int,
    reloads: int,
    interval: float,
    workers: int,
    cycle: Sequence[int],
    max_requests: int,
) -> Outcome:
    path, script = ROUTES[scenario]
    base: dict[str, Any] = {}
    if max_requests:
        base = {"max_requests": max_requests, "max_requests_jitter": max_requests // 10}
    if cycle:
        base["workers"] = cycle[0]
    duration = int(reloads * interval + 2)
    gw = rig.start(workers=None if cycle else workers, runner_config=base)
    try:
        thread = _reloader(gw, reloads, interval, cycle, base)
        res = run_wrk(gw.url(path), script, connections, duration)
        thread.join()
        log = gw.runner_log_text()
        return Outcome(
            scenario, connections, reloads,
            "-".join(map(str, cycle)) if cycle else str(workers),
            int(res["requests"]), int(res["non2xx"]), int(res["errors"]),
            len(_FAILED_RPC.findall(gw.error_log_text())),
            log.count("after max_requests"),
        )  # fmt: skip
    finally:
        gw.stop()


def table(outcomes: Sequence[Outcome]) -> str:
    lines = [
        "| scenario | c | workers | reloads | recycles | requests | non-2xx | socket errors "
        "| failed RPCs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.connections} | {o.workers} | {o.reloads} | {o.recycles} "
            f"| {o.requests:,} | {o.non2xx} | {o.socket_errors} | {o.failed_rpcs} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gateway.reload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--connections", type=_ints, default=[16, 64])
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workers-cycle", type=_ints, default=[], help="e.g. 2,3,1")
    p.add_argument("--max-requests", type=int, default=0)
    p.add_argument("--scenario", choices=sorted(ROUTES), default="stop")
    p.add_argument("--json", metavar="OUT")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    reason = rig.missing_requirements()
    if reason is not None:
        print(reason)
        return 2
    outcomes = [
        run_once(a.scenario, c, a.reloads, a.interval, a.workers, a.workers_cycle, a.max_requests)
        for c in a.connections
    ]
    print(table(outcomes))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(o) for o in outcomes], f, indent=2)
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())

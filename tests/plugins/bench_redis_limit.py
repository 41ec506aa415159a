"""redis-limit side by side: requests/s and CPU per request with a single
Redis, a 3-master Redis Cluster and the local batches of sync_interval, in one
run on one machine (not a test; pytest does not collect it)::

    .venv/bin/python tests/plugins/bench_redis_limit.py [--duration 5] [--rounds 2]
        [--workers 2] [--connections 16] [--json OUT]

It starts a redis-server and a cluster (redis-cli --cluster create) on
loopback ports, then for every row runs ``python -m bench.loadgen --workers N
--chain redis-limit:JSON --connections C --duration D`` (which starts its own
runner and measures it), rounds interleaved, and prints the medians with the
Redis servers' CPU per request (from /proc). The limit is high enough that
every request is admitted: the figures are the cost of counting, not of
rejecting. loadgen sends one client address, so every request of a row counts
one key: in the cluster that key lives on one master.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from redis_topologies import Cluster, RedisProcess, missing, start_redis  # noqa: E402

LIMIT = {"max_requests": 10**9, "period": 60}


def rows(single: RedisProcess, cluster: Cluster) -> list[tuple[str, list[str]]]:
    one = {"redis_url": f"redis://127.0.0.1:{single.port}/0", **LIMIT}
    many = {"redis_cluster_nodes": cluster.seeds, **LIMIT}

    def chain(conf: dict[str, Any] | None) -> list[str]:
        if conf is None:
            return ["--chain", "stop:{}"]
        return ["--chain", "redis-limit:" + json.dumps(conf)]

    return [
        ("stop plugin, no Redis (floor)", chain(None)),
        ("single, sliding log (exact)", chain(one)),
        ("single, fixed window (exact)", chain({**one, "window_type": "fixed"})),
        ("cluster, sliding log (exact)", chain(many)),
        ("cluster, fixed window (exact)", chain({**many, "window_type": "fixed"})),
        ("single, sync_interval 0.1 s", chain({**one, "sync_interval": 0.1})),
        ("cluster, sync_interval 0.1 s", chain({**many, "sync_interval": 0.1})),
    ]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def script_calls(servers: list[RedisProcess]) -> int:
    calls = 0
    for server in servers:
        with server.client() as r:
            stats = r.info("commandstats")
        calls += sum(
            int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval")
        )
    return calls


def measure(args: argparse.Namespace, chain: list[str], servers: list[RedisProcess],
            out: Path) -> dict[str, Any]:  # fmt: skip
    pids = [s.proc.pid for s in servers if s.proc is not None]
    cpu, calls = cpu_seconds(pids), script_calls(servers)
    argv = [sys.executable, "-m", "bench.loadgen", "--workers", str(args.workers), *chain,
            "--connections", str(args.connections), "--duration", str(args.duration),
            "--json", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    # Redis work during the whole run (warm-up included), per measured request:
    # an upper bound, as loadgen's warm-up second is not in ``requests``.
    warm = result["requests"] * (1 + 1 / args.duration)
    result["redis_cpu_us_per_req"] = (cpu_seconds(pids) - cpu) / warm * 1e6
    result["scripts_per_req"] = (script_calls(servers) - calls) / warm
    result["errors_total"] = sum(result["errors"].values())
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    if (reason := missing("redis-server", "redis-cli")) is not None:
        print(f"bench_redis_limit: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="redis-limit-bench-") as tmp:
        base = Path(tmp)
        single = start_redis(base / "single")
        cluster = Cluster(base / "cluster").start()
        try:
            table = rows(single, cluster)
            figures: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in table}
            for round_ in range(args.rounds):
                for name, chain in table:
                    servers = cluster.nodes if name.startswith("cluster") else [single]
                    out = base / f"{round_}-{len(figures[name])}-{time.monotonic_ns()}.json"
                    figures[name].append(measure(args, chain, servers, out))
        finally:
            cluster.stop()
            single.stop()
    print(f"\nredis-limit, {args.workers} runner workers, {args.connections} connections, "
          f"{args.duration:g} s x {args.rounds} rounds (medians), "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| configuration | requests/s | runner CPU/req | Redis CPU/req | scripts/req | "
          "p99 | errors |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for name, results in figures.items():

        def med(key: str, results: list[dict[str, Any]] = results) -> float:
            return statistics.median(float(r[key] or 0) for r in results)

        row = {
            "requests_per_s": med("requests_per_s"),
            "runner_cpu_us_per_req": med("runner_cpu_us_per_req"),
            "redis_cpu_us_per_req": med("redis_cpu_us_per_req"),
            "scripts_per_req": med("scripts_per_req"),
            "p99_us": statistics.median(r["latency_us"]["p99"] for r in results),
            "errors": sum(r["errors_total"] for r in results),
        }
        summary[name] = row
        print(f"| {name} | {row['requests_per_s']:,.0f} | {row['runner_cpu_us_per_req']:.1f} us "
              f"| {row['redis_cpu_us_per_req']:.1f} us | {row['scripts_per_req']:.3f} "
              f"| {row['p99_us'] / 1000:.2f} ms | {row['errors']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

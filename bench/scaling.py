"""How the runner scales with its workers: the load generator for every
(workers, connections) pair, one Markdown row each.

    python -m bench.scaling [--workers 1,2,4,8,16] [--connections 16,64,256]
        [--duration 5] [--warmup 1] [--rounds 1] [--workload stop]
        [--processes P] [--json OUT]

For each round and each worker count it starts a runner (`bench.loadgen`'s
managed runner, bench/plugins loaded), runs `bench.loadgen.run` against it at
every connection count, and stops it. Rounds are interleaved (every pair,
then every pair again) and the table shows the medians.

Besides the load generator's figures (req/s, runner CPU per request,
latency), each row shows what the runner's side looked like while the load
ran, read from /proc by a thread of this process:

* connections per worker, counted once in the middle of the measured window
  (after the warm-up), worker by worker in pid order;
* each worker's share of the workers' CPU seconds (utime + stime deltas of
  /proc/<pid>/stat) over about the measured window, in the same order;
* the ratio of req/s to the row with the fewest workers (1 by default) at
  the same connection count.

With several rounds the two spreads are those of the round with the median
req/s (every round's are in --json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import loadgen

POLL_S = 0.01  # how often the sampler looks for the clients' connections
# loadgen starts its clients 0.05 s after the last one reports ready (which is
# just after it connected); the sampler's window starts this much later.
START_LEAD_S = 0.1
# The CPU window is kept this far inside the load generator's own window, so
# that neither the start nor the drain of the load falls in it.
WINDOW_MARGIN_S = 0.1
WORKERS_DEADLINE_S = 15.0
# A worker is forked a few ms before it accepts; after the last fork, give
# them all this long so that none misses the clients' first connections.
SETTLE_S = 0.25
# /proc/net/unix "St" column: a connection a worker accepted, and one that a
# client's connect() has completed but no worker has accepted yet (it waits
# in the listening socket's backlog, with inode 0).
SS_CONNECTING, SS_CONNECTED = "02", "03"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, from the ppid field of /proc/*/stat.

    /proc/<pid>/task/*/children would be cheaper but needs a kernel built
    with CONFIG_PROC_CHILDREN, which not every machine has; `ps --ppid` does
    this same scan in a subprocess.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def runner_workers(supervisor: int) -> list[int]:
    """The runner's worker pids: all the supervisor's children.

    The only other child it forks is the metrics exporter, and only when
    metrics are enabled, which the runner started here (its default config)
    never is. Read anew at each sample: a worker may be replaced.
    """
    return children(supervisor)


def wait_for_workers(supervisor: int, expected: int) -> None:
    deadline = time.monotonic() + WORKERS_DEADLINE_S
    while len(workers := runner_workers(supervisor)) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"runner has {len(workers)} of {expected} workers after 15 s")
        time.sleep(POLL_S)
    time.sleep(SETTLE_S)


@dataclasses.dataclass(frozen=True)
class ServerEnds:
    """The runner's ends of the connections made to its socket."""

    accepted: set[int]  # inodes of the sockets the workers accepted
    queued: int  # connected by a client, still in the backlog

    @property
    def total(self) -> int:
        return len(self.accepted) + self.queued


def server_ends(path: str) -> ServerEnds:
    """Read from /proc/net/unix, which lists every Unix socket with its address.

    A socket the runner accepted carries the listening socket's path, the
    client's end has none (APISIX and the load generator never bind), and
    the listening socket itself is unconnected (St 01). So a line with the
    path is, besides the listener, one connection: St 03 once a worker
    accepted it, St 02 while it waits in the backlog. A client's connect()
    returns as soon as its connection is queued, so the clients may already
    be sending while the runner has not accepted them all.
    """
    accepted, queued = set(), 0
    with open("/proc/net/unix") as f:
        next(f)  # header: Num RefCount Protocol Flags Type St Inode Path
        for line in f:
            fields = line.rstrip("\n").split(maxsplit=7)  # a path may hold spaces
            if len(fields) < 8 or fields[7] != path:
                continue
            if fields[5] == SS_CONNECTED:
                accepted.add(int(fields[6]))
            elif fields[5] == SS_CONNECTING:
                queued += 1
    return ServerEnds(accepted, queued)


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds (once each, however many fds)."""
    found = set()
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):  # the process exited
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):  # the fd was closed meanwhile
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


@dataclasses.dataclass(frozen=True)
class Connections:
    per_worker: dict[int, int]  # worker pid -> connections it holds
    elsewhere: int  # open but held by no worker: in the backlog, or being handed over

    def to_json(self) -> dict[str, Any]:
        return {"per_worker": _by_pid(self.per_worker), "elsewhere": self.elsewhere}


def count_connections(path: str, workers: list[int]) -> Connections:
    """How many of the runner's connections each worker holds.

    Counted from the kernel's tables rather than from ``ss -xp`` output: ss
    walks the same /proc/<pid>/fd links to name a socket's users, its
    columns move between versions, and iproute2 is missing from slim images.
    A connection handed from one worker to another is briefly open in both,
    or in neither while in flight: it counts once, for the first worker that
    holds it, or as elsewhere, so the counts add up to the connections open.
    """
    ends = server_ends(path)
    unclaimed = set(ends.accepted)
    per_worker = {}
    for pid in workers:
        held = socket_inodes(pid) & unclaimed
        unclaimed -= held
        per_worker[pid] = len(held)
    return Connections(per_worker, len(unclaimed) + ends.queued)


# --------------------------------------------------------------------------- one run


class Sampler(threading.Thread):
    """Watches one load run from the runner's side.

    `loadgen.run` blocks until the run is over, so this thread follows it:
    it waits until every client connection is open (the clients start
    sending right after), then samples the workers' CPU at the start
    and the end of about the measured window and the connections once in
    its middle. Results stay None if the run ended before they were taken.
    """

    def __init__(
        self, path: str, supervisor: int, connections: int, warmup: float, duration: float
    ) -> None:
        super().__init__(name="scaling-sampler", daemon=True)
        self.path, self.supervisor, self.connections = path, supervisor, connections
        self.warmup, self.duration = warmup, duration
        self.finished = threading.Event()
        self.conns: Connections | None = None
        self.cpu_s: dict[int, float] | None = None

    def stop(self) -> None:
        self.finished.set()
        self.join()

    def run(self) -> None:
        if not self._wait_connected():
            return
        start = time.monotonic() + START_LEAD_S + self.warmup
        if self._sleep_until(start + WINDOW_MARGIN_S):
            return
        before = loadgen.cpu_ticks(runner_workers(self.supervisor))
        if not self._sleep_until(start + self.duration / 2):
            self.conns = count_connections(self.path, runner_workers(self.supervisor))
        # If the run ends early the window ends with it: the drain adds idle
        # time, which leaves the workers' shares as they were.
        self._sleep_until(start + self.duration - WINDOW_MARGIN_S)
        after = loadgen.cpu_ticks(list(before))  # a worker that exited counts for nothing
        self.cpu_s = {pid: (after[pid] - t) / CLK_TCK for pid, t in before.items() if pid in after}

    def _wait_connected(self) -> bool:
        """Wait until every client connection is open (accepted or queued):
        the clients report ready then, and the load starts right after."""
        while server_ends(self.path).total < self.connections:
            if self.finished.wait(POLL_S):
                return False
        return True

    def _sleep_until(self, t: float) -> bool:
        """Sleep until monotonic time ``t``; True if the run ended first."""
        return self.finished.wait(max(0.0, t - time.monotonic()))


@dataclasses.dataclass
class Run:
    result: loadgen.Result
    conns: Connections | None  # mid-window
    cpu_s: dict[int, float] | None  # worker pid -> CPU seconds in the window

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result.to_json(),
            "connections": None if self.conns is None else self.conns.to_json(),
            "cpu_s_per_worker": _by_pid(self.cpu_s),
        }


def _by_pid(values: dict[int, int] | dict[int, float] | None) -> dict[str, float] | None:
    return None if values is None else {str(pid): v for pid, v in sorted(values.items())}


@dataclasses.dataclass(frozen=True)
class ScalingOptions:
    workers: tuple[int, ...] = (1, 2, 4, 8, 16)
    connections: tuple[int, ...] = (16, 64, 256)
    duration: float = 5.0
    warmup: float = 1.0
    rounds: int = 1
    workload: str = "stop"
    # client processes; 0: loadgen's choice (1, or 2 above 16 connections; at
    # most the clients' CPUs)
    processes: int = 0


def measure(s: ScalingOptions, path: str, supervisor: int, connections: int) -> Run:
    """One load run at ``connections`` against the runner at ``path``."""
    w = loadgen.WORKLOADS[s.workload]
    opts = loadgen.Options(
        socket=path,
        pids=(supervisor,),
        conf=w.conf,
        connections=connections,
        duration=s.duration,
        processes=s.processes,
        warmup=s.warmup,
        variables=loadgen.SUITE_VARS,
    )
    sampler = Sampler(path, supervisor, connections, s.warmup, s.duration)
    sampler.start()
    try:
        result = loadgen.run(opts)
    finally:
        sampler.stop()
    return Run(result, sampler.conns, sampler.cpu_s)


# --------------------------------------------------------------------------- all pairs


@dataclasses.dataclass
class Pair:
    workers: int
    connections: int
    runs: list[Run]

    def median(self, get: Callable[[loadgen.Result], float | None]) -> float | None:
        values = [v for v in (get(r.result) for r in self.runs) if v is not None]
        return statistics.median(values) if values else None

    def median_run(self) -> Run:
        """The run with the median req/s (the lower one of an even count)."""
        ordered = sorted(self.runs, key=lambda r: r.result.requests_per_s)
        return ordered[(len(ordered) - 1) // 2]


def run_pairs(s: ScalingOptions) -> list[Pair]:
    """Every (workers, connections) pair, ``s.rounds`` times, interleaved.

    One runner per worker count and round: only the runner being measured
    is alive, and a noisy minute on a shared machine hits every pair of a
    round rather than all rounds of one pair.
    """
    pairs = {(w, c): Pair(w, c, []) for w in s.workers for c in s.connections}
    for rnd in range(s.rounds):
        for w in s.workers:
            with loadgen.managed_runner(w, (loadgen.BENCH_PLUGINS,)) as (path, supervisor):
                wait_for_workers(supervisor, w)
                for c in s.connections:
                    _say(f"round {rnd + 1}/{s.rounds}: {w} workers, {c} connections")
                    pairs[(w, c)].runs.append(measure(s, path, supervisor, c))
    return list(pairs.values())


def _say(text: str) -> None:
    # stderr: stdout is the table, to be pasted or diffed as is.
    print(f"scaling: {text}", file=sys.stderr, flush=True)


def _loadgen_cores(r: loadgen.Result) -> float | None:
    """Busy cores of the load generator's own processes over the window."""
    if r.loadgen_cpu_us_per_req is None or not r.duration_s:
        return None
    return r.loadgen_cpu_us_per_req * r.requests / 1e6 / r.duration_s


def _in_pid_order(conns: Connections | None) -> list[int] | None:
    return None if conns is None else [n for _, n in sorted(conns.per_worker.items())]


def _shares(cpu_s: dict[int, float] | None) -> list[float] | None:
    """Each worker's percentage of the workers' CPU, in pid order."""
    total = sum(cpu_s.values()) if cpu_s else 0.0
    if not cpu_s or total <= 0:
        return None
    return [100 * v / total for _, v in sorted(cpu_s.items())]


def pair_json(p: Pair, base: Pair | None) -> dict[str, Any]:
    """A row's medians, its spreads (from the median run) and every run."""
    rps = p.median(lambda r: r.requests_per_s)
    base_rps = base.median(lambda r: r.requests_per_s) if base else None
    mid = p.median_run()
    return {
        "workers": p.workers,
        "connections": p.connections,
        "requests_per_s": rps,
        "vs_base": rps / base_rps if rps is not None and base_rps else None,
        "runner_cpu_us_per_req": p.median(lambda r: r.runner_cpu_us_per_req),
        "p50_us": p.median(lambda r: r.latency_us["p50"]),
        "p99_us": p.median(lambda r: r.latency_us["p99"]),
        "runner_cpu_cores": p.median(lambda r: r.runner_cpu_cores),
        "loadgen_cpu_cores": p.median(_loadgen_cores),
        "errors": sum(sum(r.result.errors.values()) for r in p.runs),
        "connections_per_worker": _in_pid_order(mid.conns),
        "connections_elsewhere": None if mid.conns is None else mid.conns.elsewhere,
        "cpu_share_per_worker": _shares(mid.cpu_s),
        "runs": [r.to_json() for r in p.runs],
    }


def run_scaling(s: ScalingOptions) -> dict[str, Any]:
    """Measure every pair; returns JSON-ready data (see format_table)."""
    pairs = run_pairs(s)
    base_workers = min(s.workers)
    bases = {p.connections: p for p in pairs if p.workers == base_workers}
    return {
        "options": dataclasses.asdict(s),
        "cpus": available_cpus(),
        "base_workers": base_workers,
        "rows": [pair_json(p, bases.get(p.connections)) for p in pairs],
    }


def available_cpus() -> int:
    """The cores this process (and the runner it starts) may run on."""
    return len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- output


def contention_note(workers: tuple[int, ...], cpus: int) -> str | None:
    if max(workers) <= cpus:
        return None
    return (
        f"note: {cpus} cores here; rows with more than {cpus} workers measure "
        "contention, not scaling."
    )


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _spread(values: list[int] | list[float] | None) -> str:
    return "n/a" if values is None else "/".join(f"{v:.0f}" for v in values)


def _elsewhere(row: dict[str, Any]) -> str:
    """Connections that no worker held (backlog, handover) as " +N", else ""."""
    n = row["connections_elsewhere"]
    return f" +{n}" if n else ""


def format_table(data: dict[str, Any]) -> str:
    """The rows as Markdown: medians, spreads in worker pid order."""
    base = data["base_workers"]
    lines = [
        f"| workers | connections | req/s | vs {base} worker{'s' if base != 1 else ''} "
        "| runner CPU us/req | p50 us | p99 us | connections per worker "
        "| CPU % per worker | cores runner / loadgen | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        ratio = row["vs_base"]
        lines.append(
            f"| {row['workers']} | {row['connections']} "
            f"| {_num(row['requests_per_s'], ',.0f')} "
            f"| {'n/a' if ratio is None else f'{ratio:.2f}x'} "
            f"| {_num(row['runner_cpu_us_per_req'], '.2f')} "
            f"| {_num(row['p50_us'], ',.0f')} | {_num(row['p99_us'], ',.0f')} "
            f"| {_spread(row['connections_per_worker'])}{_elsewhere(row)} "
            f"| {_spread(row['cpu_share_per_worker'])} "
            f"| {_num(row['runner_cpu_cores'], '.2f')} / {_num(row['loadgen_cpu_cores'], '.2f')} "
            f"| {row['errors']} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _counts(text: str) -> tuple[int, ...]:
    """Parse "1,2,4" into (1, 2, 4): positive, each once, in the order given."""
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scaling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ScalingOptions()
    p.add_argument("--workers", type=_counts, default=defaults.workers, metavar="1,2,4,8,16")
    p.add_argument("--connections", type=_counts, default=defaults.connections, metavar="16,64,256")
    p.add_argument("--duration", type=float, default=defaults.duration, help="measured seconds")
    p.add_argument("--warmup", type=float, default=defaults.warmup, help="seconds before that")
    p.add_argument("--rounds", type=int, default=defaults.rounds, help="medians of R rounds")
    p.add_argument("--workload", choices=list(loadgen.WORKLOADS), default=defaults.workload)
    p.add_argument(
        "--processes",
        type=int,
        default=defaults.processes,
        help="load generator processes (default: 1, or 2 above 16 connections)",
    )
    p.add_argument("--json", metavar="OUT", help="also write every run's figures as JSON")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[ScalingOptions, str | None]:
    p = _parser()
    a = p.parse_args(argv)
    if a.duration <= 0 or a.warmup < 0 or a.rounds < 1 or a.processes < 0:
        p.error("--duration must be > 0, --warmup >= 0, --rounds >= 1, --processes >= 0")
    opts = ScalingOptions(
        workers=a.workers,
        connections=a.connections,
        duration=a.duration,
        warmup=a.warmup,
        rounds=a.rounds,
        workload=a.workload,
        processes=a.processes,
    )
    return opts, a.json


def main(argv: list[str] | None = None) -> int:
    s, json_out = parse_args(argv)
    try:
        data = run_scaling(s)
    except (RuntimeError, OSError, loadgen.PrepareError) as exc:
        print(f"scaling: {exc}", file=sys.stderr)
        return 1
    data["command"] = " ".join(["python -m bench.scaling", *(argv or sys.argv[1:])])
    if note := contention_note(s.workers, data["cpus"]):
        print(note)
    print(format_table(data))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

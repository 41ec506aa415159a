"""Per-worker metrics: plain Python counters on the hot path, a file snapshot
for the exporter.

Counting must cost next to nothing per request (the whole call costs ~7 us),
so a worker only bumps ints in its own memory: no locks, no shared memory,
no syscalls. Every ``FLUSH_EVERY`` seconds it writes a msgpack snapshot of
everything to ``<metrics dir>/worker-<pid>.msgpack`` (atomic rename). The
exporter process (:mod:`runner.ops.exporter`) sums the snapshots of all workers,
plus the totals of workers that have exited, which the supervisor folds in
when it reaps them. A worker killed with SIGKILL loses at most its last
``FLUSH_EVERY`` seconds of counts.

Snapshot layout (msgpack, read only by the exporter)::

    {"pid": int, "boot": str,
     "counters": [[metric, [label values...], value], ...],
     "gauges":   [[metric, [label values...], value], ...],
     "histograms": [[metric, [label values...], [bucket counts...], sum], ...]}
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
from collections.abc import Iterator
from typing import Any, Final

import msgspec

# Latency buckets (seconds): a stop plugin answers in ~10 us, a Redis or HTTP
# call takes milliseconds, the call deadline is seconds.
BUCKETS: Final = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
FLUSH_EVERY: Final = 0.1
STATUS_FILE: Final = "supervisor.msgpack"  # the supervisor's numbers

RPC_NAMES: Final = {1: "prepare_conf", 2: "http_req_call", 4: "http_resp_call"}
INFO_NAMES: Final = {1: "var", 2: "req_body", 3: "resp_body"}


class Histogram:
    """Bucket counts (the last one is +Inf) and the sum of observations.
    Hot paths update ``counts``/``sum`` inline (``bisect_left(BUCKETS, s)``)
    rather than calling :meth:`observe`: a method call is a tenth of the
    budget metrics have per request."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class RpcStats(Histogram):
    """One RPC type's answers: ``ok`` and error codes, and their latency."""

    __slots__ = ("errors", "ok")

    def __init__(self) -> None:
        super().__init__()
        self.ok = 0
        self.errors: dict[str, int] = {}

    def outcomes(self) -> Iterator[tuple[str, int]]:
        if self.ok:
            yield "ok", self.ok
        yield from self.errors.items()


class PluginStats(Histogram):
    """One plugin's calls by outcome, and the time spent in it. A Step holds
    a reference, so the dispatcher updates it without a lookup."""

    __slots__ = ("other", "passed", "rewrite", "stop")

    def __init__(self) -> None:
        super().__init__()
        self.stop = 0
        self.rewrite = 0
        self.passed = 0
        self.other: dict[str, int] = {}  # error, timeout, skipped

    def count(self, outcome: str, seconds: float) -> None:
        """The slow path (failures, response phase)."""
        if outcome == "pass":
            self.passed += 1
        else:
            self.other[outcome] = self.other.get(outcome, 0) + 1
        self.observe(seconds)

    def outcomes(self) -> Iterator[tuple[str, int]]:
        for outcome, n in (("stop", self.stop), ("rewrite", self.rewrite), ("pass", self.passed)):
            if n:
                yield outcome, n
        yield from self.other.items()


#: Events plugins count, (plugin, event) -> n: backend outages, the requests
#: they failed (see runner.ops.outage). Per process: every worker reports its own.
EVENTS: dict[tuple[str, str], int] = {}


def count_event(plugin: str, event: str, n: int = 1) -> None:
    """Count ``n`` events of a plugin; /metrics shows the sum over the workers as
    ``apisix_runner_plugin_events_total{plugin, event}``."""
    key = (plugin, event)
    EVENTS[key] = EVENTS.get(key, 0) + n


class WorkerMetrics:
    """Everything one worker counts. Attributes are bumped directly by the
    connection code; ``snapshot`` turns them into the exporter's format."""

    def __init__(self) -> None:
        # Tells this worker's snapshots apart from a later process that gets
        # the same pid (the supervisor folds exited workers in by this id).
        self.boot = os.urandom(8).hex()
        self.rpc: dict[str, RpcStats] = {name: RpcStats() for name in RPC_NAMES.values()}
        self.plugins: dict[str, PluginStats] = {}
        self.extra_info: dict[str, int] = {}
        self.conf_hits = 0
        self.conf_misses = 0  # tokens loaded from the shared store into this worker
        self.conf_not_found = 0  # unknown or expired tokens (CONF_TOKEN_NOT_FOUND)
        self.conf_expired = 0  # tokens removed from the shared store: TTL ran out
        self.conf_evicted = 0  # ... or max_entries reached (least recently used)
        self.malformed = 0
        self.connections = 0

    def plugin(self, name: str) -> PluginStats:
        stats = self.plugins.get(name)
        if stats is None:
            stats = self.plugins[name] = PluginStats()
        return stats

    def count_extra_info(self, info_type: int) -> None:
        kind = INFO_NAMES.get(info_type, str(info_type))
        self.extra_info[kind] = self.extra_info.get(kind, 0) + 1

    # -- snapshot

    def _counters(self) -> Iterator[list[Any]]:
        for rpc, rpc_stats in self.rpc.items():
            for outcome, n in rpc_stats.outcomes():
                yield ["rpc", [rpc, outcome], n]
        for name, stats in self.plugins.items():
            for outcome, n in stats.outcomes():
                yield ["plugin_calls", [name, outcome], n]
        for kind, n in self.extra_info.items():
            yield ["extra_info", [kind], n]
        yield ["conf_lookups", ["hit"], self.conf_hits]
        yield ["conf_lookups", ["miss"], self.conf_misses]
        yield ["conf_lookups", ["not_found"], self.conf_not_found]
        yield ["conf_removed", ["expired"], self.conf_expired]
        yield ["conf_removed", ["evicted"], self.conf_evicted]
        yield ["frames_malformed", [], self.malformed]
        for (plugin, event), n in EVENTS.items():
            yield ["plugin_events", [plugin, event], n]

    def _histograms(self) -> Iterator[list[Any]]:
        for rpc, h in self.rpc.items():
            if any(h.counts):
                yield ["rpc_duration", [rpc], h.counts, h.sum]
        for name, p in self.plugins.items():
            if any(p.counts):
                yield ["plugin_duration", [name], p.counts, p.sum]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            {
                "pid": os.getpid(),
                "boot": self.boot,
                "counters": list(self._counters()),
                "gauges": [["connections_open", [], self.connections]],
                "histograms": list(self._histograms()),
            }
        )

    def flush(self, directory: str) -> None:
        """Write the snapshot atomically: the exporter never reads half a file."""
        final = os.path.join(directory, f"worker-{os.getpid()}.msgpack")
        tmp = final + ".tmp"
        with contextlib.suppress(OSError):  # metrics must never break serving
            with open(tmp, "wb") as f:
                f.write(self.snapshot())
            os.replace(tmp, final)


# --------------------------------------------------------------------------- reading

Key = tuple[str, tuple[str, ...]]


class Totals:
    """Sums of snapshots (and of folded totals)."""

    def __init__(self) -> None:
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, float] = {}
        self.hists: dict[Key, tuple[list[int], float]] = {}

    def add(self, snap: dict[str, Any], gauges: bool = True) -> None:
        for name, labels, value in snap.get("counters", ()):
            key = (name, tuple(labels))
            self.counters[key] = self.counters.get(key, 0) + value
        if gauges:
            for name, labels, value in snap.get("gauges", ()):
                key = (name, tuple(labels))
                self.gauges[key] = self.gauges.get(key, 0) + value
        for name, labels, counts, total in snap.get("histograms", ()):
            key = (name, tuple(labels))
            old = self.hists.get(key)
            if old is None:
                self.hists[key] = (list(counts), total)
            else:
                self.hists[key] = ([a + b for a, b in zip(old[0], counts, strict=True)],
                                   old[1] + total)  # fmt: skip

    def as_snapshot(self) -> dict[str, Any]:
        """Counters and histograms in snapshot form (what the supervisor keeps
        of exited workers; their gauges died with them)."""
        return {
            "counters": [[n, list(labels), v] for (n, labels), v in self.counters.items()],
            "histograms": [[n, list(labels), c, s] for (n, labels), (c, s) in self.hists.items()],
        }


def read_snapshot(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = msgspec.msgpack.decode(f.read())
    except (OSError, msgspec.DecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.msgpack.encode(data))
    os.replace(tmp, path)


def gather(directory: str) -> tuple[Totals, dict[str, Any]]:
    """Everything for one scrape. Worker files are read *before* the status:
    the supervisor writes a folded worker into the status before deleting its
    file, so a worker is never counted twice (and never missed)."""
    snaps = [read_snapshot(p) for p in glob.glob(os.path.join(directory, "worker-*.msgpack"))]
    status = read_snapshot(os.path.join(directory, STATUS_FILE)) or {}
    folded = set(status.get("folded_boots", ()))
    totals = Totals()
    totals.add(status.get("retired", {}), gauges=False)
    for snap in snaps:
        if snap is not None and snap.get("boot") not in folded:
            totals.add(snap)
    for name in ("workers_alive", "workers_ready", "workers_expected"):
        totals.gauges[(name, ())] = status.get(name, 0)
    for name in ("worker_respawns", "worker_recycles"):
        totals.counters[(name, ())] = status.get(name, 0)
    return totals, status

"""The Prometheus endpoint: ``/metrics`` and ``/healthz``, one small process.

The supervisor binds the address (so a taken port fails start-up with a
message) and forks this process, which serves it with wsgiref, one request at
a time. On each scrape it sums the workers' snapshot files (see
:mod:`runner.ops.metrics`) and the supervisor's ``supervisor.msgpack``: the
supervisor's own numbers (workers alive, respawns, readiness) and the totals
of workers that have exited, so counters never go back when a worker is
replaced. Exposition format and HTTP details come from prometheus_client.
"""

from __future__ import annotations

import os
import socket
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from runner.ops.metrics import BUCKETS, STATUS_FILE, Totals, gather, read_snapshot

PREFIX: Final = "apisix_runner_"

# family -> (help, label names)
COUNTERS: Final[dict[str, tuple[str, list[str]]]] = {
    "rpc": ("Calls answered, by RPC type and outcome (ok or the error code)", ["type", "outcome"]),
    "plugin_calls": (
        "Plugin calls by outcome: stop, rewrite, pass, error, timeout, skipped (fail_open)",
        ["plugin", "outcome"],
    ),
    "extra_info": ("ExtraInfo round trips to APISIX, by kind", ["kind"]),
    "conf_lookups": ("Conf token lookups: worker cache hit, miss, not_found", ["result"]),
    "conf_removed": ("Conf tokens removed from the shared store: expired, evicted", ["reason"]),
    "frames_malformed": ("Frames rejected as malformed", []),
    "plugin_events": (
        "Events plugins count: outages of a backend they call, requests failed meanwhile",
        ["plugin", "event"],
    ),
    "worker_respawns": ("Workers that exited unexpectedly and were replaced", []),
    "worker_recycles": ("Workers replaced after max_requests", []),
}
HISTOGRAMS: Final[dict[str, tuple[str, list[str]]]] = {
    "rpc_duration_seconds": ("Time from a call's frame to its answer, by RPC type", ["type"]),
    "plugin_duration_seconds": ("Time in each plugin's filter", ["plugin"]),
}
_HIST_KEYS: Final = {"rpc_duration": "rpc_duration_seconds",
                     "plugin_duration": "plugin_duration_seconds"}  # fmt: skip
GAUGES: Final[dict[str, tuple[str, list[str]]]] = {
    "connections_open": ("Open APISIX connections, all workers", []),
    "workers_alive": ("Worker processes alive", []),
    "workers_ready": ("Worker processes accepting connections", []),
    "workers_expected": ("Worker processes configured", []),
}


def _families(totals: Totals, extra_gauges: Iterable[tuple[str, str, float]]) -> Iterator[Metric]:
    for family, (doc, labels) in COUNTERS.items():
        c = CounterMetricFamily(PREFIX + family, doc, labels=labels)
        for (name, values), v in sorted(totals.counters.items()):
            if name == family:
                c.add_metric(list(values), v)
        yield c
    for family, (doc, labels) in GAUGES.items():
        g = GaugeMetricFamily(PREFIX + family, doc, labels=labels)
        for (name, values), v in sorted(totals.gauges.items()):
            if name == family:
                g.add_metric(list(values), v)
        yield g
    for name, doc, value in extra_gauges:
        yield GaugeMetricFamily(PREFIX + name, doc, value=value)
    bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
    for family, (doc, labels) in HISTOGRAMS.items():
        h = HistogramMetricFamily(PREFIX + family, doc, labels=labels)
        for (name, values), (counts, total) in sorted(totals.hists.items()):
            if _HIST_KEYS.get(name) == family:
                running, buckets = 0, []
                for bound, n in zip(bounds, counts, strict=True):
                    running += n
                    buckets.append((bound, running))
                h.add_metric(list(values), buckets, total)
        yield h


class RunnerCollector(Collector):
    def __init__(self, directory: str, conf_tokens: Callable[[], int | None]) -> None:
        self._dir = directory
        self._conf_tokens = conf_tokens

    def collect(self) -> Iterable[Metric]:
        totals, _ = gather(self._dir)
        extra: list[tuple[str, str, float]] = []
        tokens = self._conf_tokens()
        if tokens is not None:
            extra.append(("conf_tokens", "Live conf tokens in the shared store", tokens))
        return _families(totals, extra)


def healthy(directory: str) -> bool:
    """Ready: every configured worker accepts connections."""
    status = read_snapshot(os.path.join(directory, STATUS_FILE)) or {}
    expected = status.get("workers_expected", 0)
    return bool(expected) and status.get("workers_ready", 0) >= expected


def make_app(
    directory: str,
    conf_tokens: Callable[[], int | None],
    socket_ok: Callable[[], bool] = lambda: True,
) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunnerCollector(directory, conf_tokens))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            reachable = socket_ok()
            ok = reachable and healthy(directory)
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])  # fmt: skip
            if not reachable:  # removed, or taken by another process: APISIX can't reach us
                return [b"the socket path no longer leads to this runner\n"]
            return [b"ok\n" if ok else b"starting or degraded\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /metrics or /healthz\n"]

    return app


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the runner's log


def serve(
    sock: socket.socket,
    directory: str,
    conf_tokens: Callable[[], int | None],
    socket_ok: Callable[[], bool],
) -> None:
    """The body of the exporter process (never returns)."""
    host, port = sock.getsockname()[:2]
    server = wsgiref.simple_server.WSGIServer((host, port), _QuietHandler, bind_and_activate=False)
    # Serve the socket the supervisor bound (and already listens on).
    server.socket.close()
    server.socket = sock
    server.server_address = (host, port)
    server.server_name, server.server_port = host, port
    server.setup_environ()
    server.set_app(make_app(directory, conf_tokens, socket_ok))
    server.serve_forever()

"""One worker process: plugins started, a uvloop server on the listening socket,
and a bounded, staged shutdown.

Everything here happens after a fork (or in the only process): the event
loop is created here and nowhere earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
from collections.abc import Mapping

import uvloop

from runner.api.plugin import Plugin, run_hooks
from runner.conf.confstore import Backend, ConfStore
from runner.conf.sharedstore import SqliteBackend
from runner.ops import logs
from runner.ops.metrics import FLUSH_EVERY, WorkerMetrics
from runner.server.balance import Balancer
from runner.server.conn import ServerState, make_factory
from runner.server.pool import Seat
from runner.server.watchdog import Watchdog
from runner.settings import Settings

log = logging.getLogger("runner.worker")

WORKER_BOOT_ERROR = 4  # exit code: the supervisor stops instead of respawning

# A retiring worker (SIGHUP, max_requests) hands each connection over to a
# serving worker at its next idle point, looking every HANDOVER_EVERY, and
# gives up on the stragglers after RETIRE_SECONDS. Only when no worker serves
# (none for NO_PEER_GRACE) does it close idle connections instead: a closed
# idle connection can race with APISIX reusing it.
HANDOVER_EVERY = 0.02
NO_PEER_GRACE = 2.0
IDLE_CLOSE = 0.1
RETIRE_SECONDS = 30.0

# APISIX SIGKILLs its runner 1 s after SIGTERM (docs/protocol.md §10.2): in-flight
# calls get this long to finish, the rest of the second is for exiting.
DRAIN_SECONDS = 0.7

# The worker asks the supervisor for a replacement with this byte on its
# ready pipe (max_requests reached); it retires once told to (SIGUSR2).
RECYCLE = b"R"
# Also how often a worker above its share hands connections over.
HOUSEKEEPING_EVERY = 0.25


class Worker:
    def __init__(
        self,
        settings: Settings,
        plugins: Mapping[str, Plugin],
        sock: socket.socket,
        backend: Backend,
        seat: Seat,
        ready_fd: int = -1,
        metrics_dir: str | None = None,
        max_requests: int = 0,
    ) -> None:
        self.settings = settings
        self.plugins = plugins
        self.sock = sock
        self.backend = backend
        self.seat = seat
        self.balancer: Balancer | None = None
        self.metrics = WorkerMetrics() if metrics_dir else None
        self._metrics_dir = metrics_dir
        # The worker's cache re-checks a token with the store well inside its
        # lifetime, so an idle token expires on time in every worker.
        touch_every = min(60.0, settings.token_ttl / 4)
        # Never more chains than the store keeps tokens: a worker would go on
        # serving tokens the store has evicted.
        cache_size = min(settings.conf_cache.worker_cache, settings.conf_cache.max_entries)
        store = ConfStore(
            plugins, backend, cache_size, touch_every,
            options=settings.plugin_options, metrics=self.metrics,
        )  # fmt: skip
        self.state = ServerState(store, settings.call_timeout)
        self._watchdog = Watchdog(self.state, settings.inline_timeout)
        self._max_requests = max_requests
        self._ready_fd = ready_fd
        self._stop: asyncio.Event | None = None
        self._retiring: asyncio.Future[None] | None = None

    def run(self) -> None:
        if self.settings.profile_dir is None:
            uvloop.run(self._main())
            return
        # --profile: the whole life of the worker under cProfile, written at
        # exit (SIGTERM drains and returns here); read it with pstats.
        import cProfile

        profiler = cProfile.Profile()
        try:
            profiler.runcall(uvloop.run, self._main())
        finally:
            os.makedirs(self.settings.profile_dir, exist_ok=True)
            path = os.path.join(self.settings.profile_dir, f"worker-{os.getpid()}.prof")
            profiler.dump_stats(path)
            log.info("CPU profile written to %s", path)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        # A task a plugin starts logs under its own call's request id (logs.task_factory).
        loop.set_task_factory(logs.task_factory)
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await run_hooks(self.plugins, "startup")
        except Exception:
            log.exception("a plugin's startup() failed")
            raise SystemExit(WORKER_BOOT_ERROR) from None
        seat = self.seat
        balancer = self.balancer = Balancer(
            loop, self.sock, seat.table, seat.slot, seat.directory,
            self.state, make_factory(self.state),
        )  # fmt: skip
        balancer.start()
        log.info("serving on %s", self.settings.socket_path)
        self._watchdog.start()
        self._signal_ready()
        loop.add_signal_handler(signal.SIGUSR2, self._start_retiring, balancer)
        housekeeping = asyncio.ensure_future(self._housekeeping())
        try:
            await self._stop.wait()
        finally:
            housekeeping.cancel()
            await self._shutdown(balancer)
            logs.flush(final=True)
            self._watchdog.stop()
            self._flush_metrics()

    async def _housekeeping(self) -> None:
        """Metrics snapshots, rebalancing and the max_requests check, off the
        hot path."""
        flush_every = FLUSH_EVERY if self.metrics is not None else HOUSEKEEPING_EVERY
        flushed = asyncio.get_running_loop().time()
        asked = False
        store = self.state.store
        store.coarse_clock()
        while True:
            await asyncio.sleep(HOUSEKEEPING_EVERY)
            store.tick()
            logs.flush()  # summaries of repeated log lines, even when no repeat follows
            if self.balancer is not None and self._retiring is None:
                self.balancer.rebalance()
                self.balancer.recheck()  # a worker that died no longer counts
                self.balancer.rescue()
            now = asyncio.get_running_loop().time()
            if now - flushed >= flush_every:
                flushed = now
                self._flush_metrics()
            if not asked and self._max_requests and self.state.calls >= self._max_requests:
                asked = True
                log.info("served %d calls (max_requests); asking for a replacement",
                         self.state.calls)  # fmt: skip
                self._tell_supervisor(RECYCLE)

    def _flush_metrics(self) -> None:
        metrics = self.metrics
        if metrics is None or self._metrics_dir is None:
            return
        if isinstance(self.backend, SqliteBackend):
            metrics.conf_expired = self.backend.expired
            metrics.conf_evicted = self.backend.evicted
        metrics.flush(self._metrics_dir)

    def _tell_supervisor(self, message: bytes) -> None:
        if self._ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, message)

    def _start_retiring(self, balancer: Balancer) -> None:
        if self._retiring is None:
            self._retiring = asyncio.ensure_future(self._retire(balancer))

    async def _retire(self, balancer: Balancer) -> None:
        """Stop accepting, then hand each connection over to a serving worker
        at its next idle point; busy connections keep being served until then."""
        assert self._stop is not None
        balancer.leave()
        log.info("retiring: no new connections; handing the %d open ones over", balancer.count)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETIRE_SECONDS
        alone_since: float | None = None
        while balancer.count and not self._stop.is_set():
            now = loop.time()
            if now > deadline:
                log.warning("%d connections still busy after %.0f s",
                            balancer.count, RETIRE_SECONDS)  # fmt: skip
                break
            if balancer.rebalance() or self.seat.table.serving():
                alone_since = None
            elif alone_since is None:
                alone_since = now
            elif now - alone_since > NO_PEER_GRACE:
                await self._close_idle()  # no worker to take them
                continue
            await asyncio.sleep(HANDOVER_EVERY)
        log.info("retired: %d connections handed over", balancer.handed_over)
        self._stop.set()  # then the usual shutdown: drain and close the rest

    async def _close_idle(self) -> None:
        """Close each connection once it has been idle for IDLE_CLOSE: APISIX
        has no call on it then, and drops the closed connection from its pool."""
        seen = {conn: conn.reads for conn in self.state.connections}
        await asyncio.sleep(IDLE_CLOSE)
        for conn in list(self.state.connections):
            if conn.idle and seen.get(conn) == conn.reads:
                conn.close()

    def _signal_ready(self) -> None:
        # One byte to the supervisor: this worker accepts connections now. The
        # pipe stays open for the recycle request.
        self._tell_supervisor(b"1")

    async def _shutdown(self, balancer: Balancer) -> None:
        balancer.close()  # stop accepting; the socket file stays for the next runner
        state = self.state
        if state.busy:
            state.idle_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(state.idle_waiter, DRAIN_SECONDS)
            except TimeoutError:
                log.warning("%d calls still running at shutdown; cancelled", state.busy)
        for conn in list(state.connections):
            conn.close()
        state.store.close()  # routes' configs release what they hold
        await asyncio.sleep(0)  # ... which may take a loop round (closing sessions)
        await run_hooks(self.plugins, "shutdown")
        log.info("worker stopped")


def serve_worker(
    settings: Settings,
    plugins: Mapping[str, Plugin],
    sock_fd: int,
    store_path: str,
    ready_fd: int,
    seat: Seat,
) -> None:
    """The body of a forked worker process."""
    sock = socket.socket(fileno=os.dup(sock_fd))
    sock.setblocking(False)
    backend = SqliteBackend(store_path, settings.token_ttl, settings.conf_cache.max_entries)
    metrics_dir = os.path.join(os.path.dirname(store_path), "metrics")
    max_requests = settings.max_requests
    if max_requests:
        max_requests += random.randint(0, settings.max_requests_jitter)
    try:
        Worker(
            settings, plugins, sock, backend, seat, ready_fd,
            metrics_dir if settings.metrics.address else None, max_requests,
        ).run()  # fmt: skip
    finally:
        backend.close()
        sock.close()

"""One worker process: plugins started, a uvloop server on the listening socket,
and a bounded, staged shutdown.

Everything here happens after a fork (or in the only process): the event
loop is created here and nowhere earlier.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
from collections.abc import Mapping

import uvloop

from .confstore import ConfStore, LocalBackend
from .conn import ServerState, make_factory
from .plugins import Plugin
from .settings import Settings

log = logging.getLogger("runner.worker")

# APISIX SIGKILLs its runner 1 s after SIGTERM (PROTOCOL.md §6.9): in-flight
# calls get this long to finish, the rest of the second is for exiting.
DRAIN_SECONDS = 0.7


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


async def _run_hooks(plugins: Mapping[str, Plugin], hook: str) -> None:
    for name, plugin in plugins.items():
        try:
            await _maybe_await(getattr(plugin, hook)())
        except Exception:
            if hook == "startup":
                raise
            log.exception("plugin %r: %s failed", name, hook)


class Worker:
    def __init__(self, settings: Settings, plugins: Mapping[str, Plugin], sock: socket.socket):
        self.settings = settings
        self.plugins = plugins
        self.sock = sock
        backend = LocalBackend(settings.token_ttl, settings.conf_cache.max_entries)
        store = ConfStore(plugins, backend, settings.conf_cache.worker_cache)
        self.state = ServerState(store, settings.call_timeout)
        self._stop: asyncio.Event | None = None

    def run(self) -> None:
        uvloop.run(self._main())

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await _run_hooks(self.plugins, "startup")
        server = await loop.create_unix_server(make_factory(self.state), sock=self.sock)
        log.info("serving on %s", self.settings.socket_path)
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(server)

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()  # stop accepting; the socket file stays for the next runner
        state = self.state
        if state.busy:
            state.idle_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(state.idle_waiter, DRAIN_SECONDS)
            except TimeoutError:
                log.warning("%d calls still running at shutdown; cancelled", state.busy)
        for conn in list(state.connections):
            conn.close()
        await _run_hooks(self.plugins, "shutdown")
        log.info("worker stopped")

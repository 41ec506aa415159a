"""What the runner does with a plugin that fails, hangs or blocks.

Set per plugin in ``config.yaml`` (``plugin_options``) or by the plugin class
itself (``blocking = True`` on a plugin whose ``def filter`` does blocking I/O)::

    plugin_options:
      geoip:      {fail_open: true, timeout: 0.2}   # skipped when it fails or is late
      legacy-db:  {blocking: true}                  # its def filter runs in a thread
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

# Threads for blocking plugins, per worker. A plugin stuck forever keeps its
# thread; once all are stuck, calls wait and hit their deadline (503) while
# the event loop keeps serving every other route.
BLOCKING_THREADS = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None


class PluginOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # true: when the plugin raises or misses its deadline, log it, count it and
    # go on with the rest of the chain; false (default): the call fails (503).
    fail_open: bool = False
    # The plugin's own deadline in seconds (async and blocking plugins);
    # default: the call's (call_timeout).
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Run a plain `def` filter in a thread so blocking I/O cannot freeze the loop.
    blocking: bool = False

    @classmethod
    def of(cls, plugin: object) -> PluginOptions | None:
        """Options a plugin class declares for itself (class attributes)."""
        blocking = bool(getattr(plugin, "blocking", False))
        fail_open = bool(getattr(plugin, "fail_open", False))
        if not (blocking or fail_open):
            return None
        return cls(blocking=blocking, fail_open=fail_open)


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    # Created on first use, i.e. in the worker after the fork: threads do not
    # survive a fork.
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(
            BLOCKING_THREADS, thread_name_prefix="blocking-plugin"
        )
    return _pool


def in_thread(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """An async version of a blocking ``def``: it runs in the worker's pool,
    so the call's deadline can fire and other connections keep being served."""

    @functools.wraps(fn)
    async def run(*args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_threads(), functools.partial(fn, *args))

    return run

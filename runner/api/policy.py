"""Where a blocking plugin runs: a ``def filter`` marked ``blocking``
(``plugin_options`` in config.yaml, or ``blocking = True`` on the class; see
:class:`runner.settings.PluginOptions`) runs in a thread of the worker's pool,
so its blocking I/O cannot freeze the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable
from typing import Any

# Threads for blocking plugins, per worker. A plugin stuck forever keeps its
# thread; once all are stuck, calls wait and hit their deadline (503) while
# the event loop keeps serving every other route.
BLOCKING_THREADS = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None


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

"""log-async: an async plugin that logs in each of its steps and from a task it
leaves running after its call (log lines must name their own request).

Config ``{"var": "remote_addr", "child_delay": 0.0, "hold": 0.0}``: logs, asks
for ``var``, logs again, starts a task that logs after ``child_delay``
seconds, sleeps ``hold`` seconds and stops with 200.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from runner import Plugin, Request, Response

log = logging.getLogger("plugins.log_async")
_tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references


class LogAsyncConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    var: str = "remote_addr"
    child_delay: float = 0.0
    hold: float = 0.0


async def _later(delay: float, var: str | None) -> None:
    await asyncio.sleep(delay)
    log.warning("log-async child done (var %s)", var)


class LogAsync(Plugin):
    name = "log-async"
    Config = LogAsyncConfig

    async def filter(self, conf: LogAsyncConfig, request: Request, response: Response) -> None:
        log.warning("log-async before the var")
        value = await request.var(conf.var)
        log.warning("log-async after the var")
        task = asyncio.get_running_loop().create_task(_later(conf.child_delay, value))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        if conf.hold:
            await asyncio.sleep(conf.hold)
        response.stop(200, value or "")

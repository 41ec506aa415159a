"""Plugins that take their time: ``{"seconds": 0.5}``.

``sleepy-sync`` blocks the event loop (time.sleep), ``sleepy-async`` awaits,
``sleepy-blocking`` declares itself blocking (it runs in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from runner import Plugin, Request, Response

log = logging.getLogger("sleepy")


class SleepConfig(msgspec.Struct, frozen=True):
    seconds: float = 0.0


class SleepySync(Plugin):
    name = "sleepy-sync"
    Config = SleepConfig

    def filter(self, conf: SleepConfig, request: Request, response: Response) -> None:
        log.warning("sleepy-sync sleeping %.2f s", conf.seconds)
        time.sleep(conf.seconds)
        request.headers["X-Slept"] = "sync"


class SleepyAsync(Plugin):
    name = "sleepy-async"
    Config = SleepConfig

    async def filter(self, conf: SleepConfig, request: Request, response: Response) -> None:
        await asyncio.sleep(conf.seconds)
        request.headers["X-Slept"] = "async"


class SleepyBlocking(Plugin):
    name = "sleepy-blocking"
    Config = SleepConfig
    blocking = True

    def filter(self, conf: SleepConfig, request: Request, response: Response) -> None:
        time.sleep(conf.seconds)
        response.stop(200, "slept in a thread")

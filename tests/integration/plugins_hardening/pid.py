"""Plugins that tell which worker served a call: ``h-pid`` (plain ``def``) and
``h-slow-pid`` (``async def``, sleeps ``conf`` milliseconds first, default 50),
both stopping with the worker's pid as the body."""

from __future__ import annotations

import asyncio
import os

from runner import Plugin, Request, Response


class Pid(Plugin):
    name = "h-pid"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.stop(200, str(os.getpid()))


class SlowPid(Plugin):
    name = "h-slow-pid"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await asyncio.sleep(int(conf or "50") / 1000)
        response.stop(200, str(os.getpid()))

"""Plugins that raise: plain, async, and in the response phase (each message
is a unique marker)."""

from __future__ import annotations

import asyncio

from runner import Plugin, Request, Response, UpstreamResponse


class Failing(Plugin):
    name = "failing-plugin"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        raise RuntimeError("kaboom-sync-marker")


class FailingAsync(Plugin):
    name = "failing-async-plugin"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("kaboom-async-marker")


class FailingResponse(Plugin):
    name = "failing-resp-plugin"

    def response_filter(self, conf: str, response: UpstreamResponse) -> None:
        raise RuntimeError("kaboom-resp-marker")

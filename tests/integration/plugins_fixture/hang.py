"""hang: an async plugin that never finishes (for call_timeout)."""

from __future__ import annotations

import asyncio

from runner import Plugin, Request, Response


class Hang(Plugin):
    name = "hang"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await asyncio.Event().wait()

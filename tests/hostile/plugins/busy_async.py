"""An async plugin that computes for `conf` seconds between two awaits, as a
quadratic algorithm on a client's input would."""

import asyncio
import time

from runner import Plugin, Request, Response


class BusyAsync(Plugin):
    name = "busy-async"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await asyncio.sleep(0)
        deadline = time.monotonic() + float(conf)
        while time.monotonic() < deadline:  # holds the loop: no await
            pass
        response.status = 200

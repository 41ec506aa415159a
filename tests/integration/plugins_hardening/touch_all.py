"""Plugins that decode every field of the request (``h-touch-all`` plain,
``h-touch-all-async`` after an await) and stop with ``ok``: a malformed field
anywhere in an HTTPReqCall is then found by the runner's decoder."""

from __future__ import annotations

import asyncio

from runner import Plugin, Request, Response


def _touch(request: Request) -> None:
    _ = (request.method, request.path, request.src_ip)
    _ = (list(request.args.multi_items()), list(request.headers.multi_items()))


class TouchAll(Plugin):
    name = "h-touch-all"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        _touch(request)
        response.stop(200, "ok")


class TouchAllAsync(Plugin):
    name = "h-touch-all-async"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        await asyncio.sleep(0)
        _touch(request)
        response.stop(200, "ok")

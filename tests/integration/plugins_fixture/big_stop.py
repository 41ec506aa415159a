"""big-stop: stops with a body of ``conf`` bytes (an integer config)."""

from __future__ import annotations

from runner import Plugin, Request, Response


class BigStop(Plugin):
    name = "big-stop"
    Config = int

    def filter(self, conf: int, request: Request, response: Response) -> None:
        response.stop(200, b"x" * conf)

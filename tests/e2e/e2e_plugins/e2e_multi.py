"""e2e-multi: a response header with two values (``X-Same: one`` and
``X-Same: two``); with the config ``"stop"`` in a Stop, otherwise as
Rewrite resp_headers on the proxied response."""

from __future__ import annotations

from runner import Plugin, Request, Response


class Multi(Plugin):
    name = "e2e-multi"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.headers.add("X-Same", "one")
        response.headers.add("X-Same", "two")
        if conf == "stop":
            response.stop(200, "stopped")

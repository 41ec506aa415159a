"""append-header: appends its raw config string to the response header X-Order."""

from __future__ import annotations

from runner import Plugin, Request, Response


class AppendHeader(Plugin):
    name = "append-header"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.headers.add("X-Order", conf)

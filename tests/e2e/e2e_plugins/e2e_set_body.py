"""e2e-set-body: replaces the request body sent upstream with its raw config string."""

from __future__ import annotations

from runner import Plugin, Request, Response


class SetBody(Plugin):
    name = "e2e-set-body"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        request.set_body(conf)

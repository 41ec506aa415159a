"""Copies what it reads into a rewrite: the path (prefixed) and the cookie."""

from runner import Plugin, Request, Response


class EchoBytes(Plugin):
    name = "echo-bytes"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        request.path = "/moved" + request.path
        request.headers["X-Cookie"] = request.headers.get("cookie") or ""

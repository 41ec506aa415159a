"""rewrite: change the request before it goes upstream.

Route config (every key optional)::

    {"path": "/v2/users",
     "headers": {"X-Api-Version": "2", "X-Debug": null},   # null deletes
     "args": {"lang": "en", "debug": null},                # null deletes
     "resp_headers": {"X-Served-By": "python"}}            # added to the client response
"""

from __future__ import annotations

import msgspec

from runner import Plugin, Request, Response
from runner.api.multidict import MultiDict


class RewriteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    path: str | None = None
    headers: dict[str, str | None] = msgspec.field(default_factory=dict)
    args: dict[str, str | None] = msgspec.field(default_factory=dict)
    resp_headers: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path is not None and (not self.path.startswith("/") or "?" in self.path):
            raise msgspec.ValidationError(
                f"path must start with '/' and hold no query (use args), got {self.path!r}"
            )


def _apply(target: MultiDict, changes: dict[str, str | None]) -> None:
    # Set or discard without reading the request's own entries: no decoding.
    for name, value in changes.items():
        if value is None:
            target.discard(name)
        else:
            target[name] = value


class Rewrite(Plugin):
    name = "rewrite"
    Config = RewriteConfig

    def filter(self, conf: RewriteConfig, request: Request, response: Response) -> None:
        if conf.path is not None:
            request.path = conf.path
        _apply(request.headers, conf.headers)
        _apply(request.args, conf.args)
        for name, value in conf.resp_headers.items():
            response.headers[name] = value

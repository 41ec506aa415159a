"""stop: answer the client at once, without going upstream.

Route config: ``{"status": 403, "headers": {"X-Reason": "blocked"}, "body": "no"}``;
every key optional (status 200, no headers, empty body).
"""

from __future__ import annotations

import msgspec

from runner import Plugin, Request, Response


class StopConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    status: int = msgspec.field(default=200)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str = ""

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise msgspec.ValidationError(f"status must be 100..599, got {self.status}")


class Stop(Plugin):
    name = "stop"
    Config = StopConfig

    def filter(self, conf: StopConfig, request: Request, response: Response) -> None:
        response.stop(conf.status, conf.body, conf.headers)

"""response-rewrite: change the upstream's response (``ext-plugin-post-resp``).

Route config, every key optional::

    {"status": 200,
     "headers": {"X-Cache": "miss", "Server": null},   # null deletes
     "body": "replaced"}

The upstream's other headers reach the client unchanged (the runner sends
APISIX the complete merged header set, which the Go and Java runners do not).
"""

from __future__ import annotations

import msgspec

from runner import Plugin, UpstreamResponse


class ResponseRewriteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    status: int | None = None
    headers: dict[str, str | None] = msgspec.field(default_factory=dict)
    body: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise msgspec.ValidationError(f"status must be 100..599, got {self.status}")


class ResponseRewrite(Plugin):
    name = "response-rewrite"
    Config = ResponseRewriteConfig

    def response_filter(self, conf: ResponseRewriteConfig, response: UpstreamResponse) -> None:
        if conf.status is not None:
            response.status = conf.status
        for name, value in conf.headers.items():
            if value is None:
                response.headers.discard(name)
            else:
                response.headers[name] = value
        if conf.body is not None:
            response.set_body(conf.body)

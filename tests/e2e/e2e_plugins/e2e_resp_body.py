"""e2e-resp-body: a post-resp plugin that reads the upstream body (ExtraInfo
RespBody), reports the upstream status and body length in headers and sends
the body upper-cased."""

from __future__ import annotations

from runner import Plugin, UpstreamResponse


class RespBody(Plugin):
    name = "e2e-resp-body"

    async def response_filter(self, conf: str, response: UpstreamResponse) -> None:
        body = await response.body()
        response.headers["X-Upstream-Status"] = str(response.status)
        response.headers["X-Body-Len"] = str(len(body))
        response.set_body(body.upper())

"""resp-body: an async post-resp plugin that fetches the upstream body
(ExtraInfo RespBody), reports its sha256 in X-Body-Sha256 and replaces the
body with ``seen:`` + the original."""

from __future__ import annotations

import hashlib

from runner import Plugin, UpstreamResponse


class RespBody(Plugin):
    name = "resp-body"

    async def response_filter(self, conf: str, response: UpstreamResponse) -> None:
        body = await response.body()
        response.headers["X-Body-Sha256"] = hashlib.sha256(body).hexdigest()
        response.set_body(b"seen:" + body)

"""body-digest: an async plugin that fetches the request body (ExtraInfo
ReqBody) and stops with a JSON object of its length and sha256."""

from __future__ import annotations

import hashlib
import json

from runner import Plugin, Request, Response


class BodyDigest(Plugin):
    name = "body-digest"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        body = await request.body()
        again = await request.body()  # cached: no second ExtraInfo round trip
        digest = {
            "type": type(body).__name__,
            "len": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "same": again == body,
        }
        response.stop(200, json.dumps(digest))

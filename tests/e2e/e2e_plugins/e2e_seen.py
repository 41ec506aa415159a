"""e2e-seen: answers with what the runner was sent (method, path, args,
headers, src_ip, id) as JSON, so tests see what the Lua client put into
HTTPReqCall."""

from __future__ import annotations

import json

from runner import Plugin, Request, Response


class Seen(Plugin):
    name = "e2e-seen"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        seen = {
            "method": request.method,
            "path": request.path,
            "args": list(request.args.multi_items()),
            "headers": list(request.headers.multi_items()),
            "src_ip": request.src_ip,
            "id": request.id,
        }
        response.stop(200, json.dumps(seen), {"Content-Type": "application/json"})

"""echo: stops with a JSON description of the request as the runner decoded it."""

from __future__ import annotations

import json

from runner import Plugin, Request, Response


class Echo(Plugin):
    name = "echo"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        seen = {
            "conf": conf,
            "id": request.id,
            "conf_token": request.conf_token,
            "method": request.method,
            "path": request.path,
            "src_ip": request.src_ip,
            "args": [list(item) for item in request.args.multi_items()],
            "headers": [list(item) for item in request.headers.multi_items()],
        }
        response.stop(200, json.dumps(seen))

# Old-runner style: reads an nginx variable and the request body (ExtraInfo),
# which the old API does synchronously.

import json
from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class BodyGuard(PluginBase):
    def name(self) -> str:
        return "body-guard"

    def config(self, conf: Any) -> Any:
        return json.loads(conf)

    def filter(self, conf: Any, request: Request, response: Response):
        body = request.get_body()
        client = request.get_var(conf.get("var", "remote_addr"))
        if conf["deny"] in body:
            response.set_status_code(403)
            response.set_body(f"{client} sent a forbidden word: {body}")
            return False
        request.set_header("X-Body-Chars", str(len(body)))
        request.set_header("X-Client", client or "unknown")
        return True

# Old-runner style: config() keeps the route's settings on self, which worked
# there because every request got a fresh instance with config() run on it.

import json
from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class TokenAuth(PluginBase):
    config_calls = 0

    def name(self) -> str:
        return "token-auth"

    def config(self, conf: Any) -> Any:
        TokenAuth.config_calls += 1
        settings = json.loads(conf)
        self.token = settings["token"]
        return settings

    def filter(self, conf: Any, request: Request, response: Response):
        if request.get_header("authorization") != "Bearer " + self.token:
            response.set_status_code(401)
            response.set_body(json.dumps({"error": "bad token"}))
            response.set_header("WWW-Authenticate", "Bearer")
            return
        request.set_header("X-User", conf.get("user", "anonymous"))

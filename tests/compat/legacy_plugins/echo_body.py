# Old-runner style: answers with the request body it read.

from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class EchoBody(PluginBase):
    def name(self) -> str:
        return "echo-body"

    def config(self, conf: Any) -> Any:
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        body = request.get_body()
        response.set_status_code(200)
        response.set_body(body)

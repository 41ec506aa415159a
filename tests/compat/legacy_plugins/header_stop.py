# Old-runner style: a response header alone answers the client (status 200).

from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class HeaderStop(PluginBase):
    def name(self) -> str:
        return "header-stop"

    def config(self, conf: Any) -> Any:
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        response.set_header("X-Blocked", "yes")

# Old-runner style: a filter that raises.

from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class Boom(PluginBase):
    def name(self) -> str:
        return "boom"

    def config(self, conf: Any) -> Any:
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        raise ValueError("broken old-style plugin")

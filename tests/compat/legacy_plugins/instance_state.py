# Old-runner style: per-request state kept on self (the old runner created a
# plugin instance per request, so this always counted 1).

from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class InstanceState(PluginBase):
    def name(self) -> str:
        return "instance-state"

    def config(self, conf: Any) -> Any:
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        self.calls = getattr(self, "calls", 0) + 1
        request.set_header("X-Calls", str(self.calls))

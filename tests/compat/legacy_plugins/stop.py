# Written the way apache/apisix-python-plugin-runner's example plugins are
# (apisix/plugins/stop.py): it runs unchanged on apisix-runner via runner.compat.

from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class Stop(PluginBase):
    def name(self) -> str:
        """
        Name the routes use for this plugin
        :return:
        """
        return "stop"

    def config(self, conf: Any) -> Any:
        """
        Parse the route's configuration (unused here)
        :param conf:
        :return:
        """
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        """
        Answer the client directly
        :param conf:
            the parsed configuration
        :param request:
            the client's request
        :param response:
            the answer; setting anything on it stops the request
        :return:
        """
        response.set_header("X-Resp-A6-Runner", "Python")
        response.set_body("Hello, Python Runner of APISIX")
        response.set_status_code(201)

# Written the way apache/apisix-python-plugin-runner's example plugins are
# (apisix/plugins/rewrite.py): it runs unchanged on apisix-runner via runner.compat.

from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class Rewrite(PluginBase):
    def name(self) -> str:
        """
        Name the routes use for this plugin
        :return:
        """
        return "rewrite"

    def config(self, conf: Any) -> Any:
        """
        Parse the route's configuration (unused here)
        :param conf:
        :return:
        """
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        """
        Change the request before it goes upstream
        :param conf:
            the parsed configuration
        :param request:
            the client's request
        :param response:
            the answer (left alone: the request continues)
        :return:
        """
        request.set_header("X-Resp-A6-Runner", "Python")
        request.set_arg("a6_runner", "Python")
        request.set_uri("/a6/python/runner")

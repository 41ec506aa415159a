# The guide's configurable header rewrite: set_config, then add and delete headers.
import json

from apisix.plugin.request import Request
from apisix.plugin.response import Response
from apisix.plugin.runner import Plugin, PluginRunner


class HeaderRewritePlugin(Plugin):
    def __init__(self):
        self.name = "guide-header-rewrite"
        self.config = {}

    def set_config(self, conf: str):
        self.config = json.loads(conf)

    def filter(self, request: Request, response: Response):
        if "add_headers" in self.config:
            for key, value in self.config["add_headers"].items():
                request.headers[key] = value
        if "remove_headers" in self.config:
            for key in self.config["remove_headers"]:
                if key in request.headers:
                    del request.headers[key]
        return True


if __name__ == "__main__":
    runner = PluginRunner()
    runner.register(HeaderRewritePlugin())
    runner.run()

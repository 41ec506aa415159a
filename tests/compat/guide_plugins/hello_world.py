# The guide's first plugin, in its shape (apisix.plugin.* API).
from apisix.plugin.request import Request
from apisix.plugin.response import Response
from apisix.plugin.runner import Plugin, PluginRunner


class HelloWorldPlugin(Plugin):
    def __init__(self):
        self.name = "hello-world"

    def filter(self, request: Request, response: Response):
        response.headers["X-Python-Plugin"] = "hello-world"
        if request.path == "/hello":
            response.status_code = 200
            response.body = "Hello from Python plugin!"
            return
        return True


if __name__ == "__main__":
    runner = PluginRunner()
    runner.register(HelloWorldPlugin())
    runner.run()

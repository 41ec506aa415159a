# The 0.1 runner's Rewrite example: headers, args and path go upstream.
from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.base import Base


class Rewrite(Base):
    def __init__(self):
        super().__init__(self.__class__.__name__)

    def filter(self, request: Request, response: Response):
        headers = request.headers
        headers["X-Resp-A6-Runner"] = "Python"
        response.headers = headers
        args = request.args
        args["a6_runner"] = "Python"
        response.args = args
        response.path = "/rewritten" + request.path
        self.rewrite()

# The 0.1 runner's Stop example (apisix.runner.plugin.base.Base).
from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.base import Base


class Stop(Base):
    def __init__(self):
        super().__init__(self.__class__.__name__)

    def filter(self, request: Request, response: Response):
        headers = {"X-Resp-A6-Runner": "Python", "X-Config": str(self.config.get("k", ""))}
        response.headers = headers
        response.body = "Hello, Python Runner of APISIX"
        response.status_code = 201
        self.stop()

# A plain `def filter` that reads request.body (fetched before it runs) and
# stops with `return False` after setting the status.
import json

from apisix.plugin.request import Request
from apisix.plugin.response import Response
from apisix.plugin.runner import Plugin


class BodyCheckPlugin(Plugin):
    def __init__(self):
        self.name = "guide-body-check"
        self.config = {}

    def set_config(self, conf: str):
        self.config = json.loads(conf)
        if "required" not in self.config:
            raise ValueError("Missing required config: required")

    def filter(self, request: Request, response: Response):
        if request.method != "POST":
            return True
        try:
            body = json.loads(request.body or "{}")
        except json.JSONDecodeError:
            response.status_code = 400
            response.body = "Invalid JSON format"
            return False
        missing = [k for k in self.config["required"] if k not in body]
        if missing:
            response.status_code = 400
            response.body = f"missing: {','.join(missing)}"
            return False
        return True

# Old-runner style: edits the dicts that get_headers()/get_args() return, in
# place and through set_args(); a shared base class without a name.

import json
from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class JsonConfigPlugin(PluginBase):
    """A base class: no name(), so it is not a plugin itself."""

    def config(self, conf: Any) -> Any:
        return json.loads(conf) if conf else {}


class DictStyle(JsonConfigPlugin):
    def name(self) -> str:
        return "dict-style"

    def filter(self, conf: Any, request: Request, response: Response):
        headers = request.get_headers()
        headers[conf.get("header", "x-added")] = conf.get("value", "1")
        args = request.get_args()
        args["page"] = conf.get("page", "2")
        request.set_args(args)
        return {"the old runner": "ignored this value"}

# Old-runner style: every request getter, answered back as a JSON body.

import json
from typing import Any

from apisix.runner.http.request import Request
from apisix.runner.http.response import Response
from apisix.runner.plugin.core import PluginBase


class Inspect(PluginBase):
    def name(self) -> str:
        return "inspect"

    def config(self, conf: Any) -> Any:
        return conf

    def filter(self, conf: Any, request: Request, response: Response):
        report = {
            "uri": request.get_uri(),
            "method": request.get_method(),
            "remote_addr": request.get_remote_addr(),
            "conf_token": request.get_conf_token(),
            "id": request.get_id(),
            "headers": request.get_headers(),
            "args": request.get_args(),
            "host": request.get_header("host"),
            "Host": request.get_header("Host"),
            "missing_header": request.get_header("x-none"),
            "page": request.get_arg("page"),
            "flag": request.get_arg("flag"),
            "missing_arg": request.get_arg("none"),
            "conf": conf,
        }
        response.set_header("Content-Type", "application/json")
        response.set_body(json.dumps(report))

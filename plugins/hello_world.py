"""hello-world: the guide's first plugin.

Adds ``X-Python-Plugin: hello-world`` to every response and answers
``/hello`` itself with 200 ``Hello from Python plugin!``. Takes no config
(``"{}"`` or any JSON object is accepted).
"""

from __future__ import annotations

from typing import Any

from runner import Plugin, Request, Response


class HelloWorld(Plugin):
    name = "hello-world"
    Config = dict[str, Any]

    def filter(self, conf: dict[str, Any], request: Request, response: Response) -> None:
        response.headers["X-Python-Plugin"] = "hello-world"
        if request.path == "/hello":
            response.stop(200, "Hello from Python plugin!")

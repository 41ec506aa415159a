"""A fast Python plugin runner for Apache APISIX.

Plugin authors need only this module::

    import msgspec
    from runner import Plugin, Request, Response

    class AddHeader(Plugin):
        name = "add-header"

        class Config(msgspec.Struct):
            header: str
            value: str

        def filter(self, conf: Config, request: Request, response: Response) -> None:
            request.headers[conf.header] = conf.value
"""

from runner.api.http import Request, Response, UpstreamResponse
from runner.api.multidict import Args, Headers
from runner.api.plugin import ConfError, Plugin

__all__ = ["Args", "ConfError", "Headers", "Plugin", "Request", "Response", "UpstreamResponse"]
__version__ = "0.1.0"

"""bench-rewrite: rewrites 2 headers and 1 arg with values computed per request.

The "rewrite" workload of the issue: unlike the bundled ``rewrite`` plugin,
whose values are constants of the route config, each value here depends on the
request (its id and path), so nothing can be precomputed at PrepareConf::

    x-request-path: <path>          (replaces nothing: a new header)
    x-runner-request: r-<id>        (a new header)
    rid=<id>                        (a new query arg)

Config: ``{"prefix": "r-"}`` (optional).
"""

from __future__ import annotations

import msgspec

from runner import Plugin, Request, Response


class RewriteDynamicConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    prefix: str = "r-"


class RewriteDynamic(Plugin):
    name = "bench-rewrite"
    Config = RewriteDynamicConfig

    def filter(self, conf: RewriteDynamicConfig, request: Request, response: Response) -> None:
        rid = str(request.id)
        headers = request.headers
        headers["x-request-path"] = request.path
        headers["x-runner-request"] = conf.prefix + rid
        request.args["rid"] = rid

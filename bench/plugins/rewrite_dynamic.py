"""bench-rewrite: rewrites 2 headers and 1 arg with values computed per request.

The load generator's "rewrite" workload: unlike the bundled ``rewrite`` plugin,
whose values are constants of the route config, the values here change from
call to call, so nothing can be precomputed at PrepareConf, and no reply is
the same as the last one (the runner answers a route's repeated Rewrite from
its last frame: runner/proto/replymemo.py)::

    x-request-path: <path>          (replaces nothing: a new header)
    x-runner-request: r-<n>         (a new header)
    rid=<n>                         (a new query arg)

``n`` counts the worker's calls, not the request's id: APISIX gives every
request its own id, but the load generator sends one frame, one id, throughout.

Config: ``{"prefix": "r-"}`` (optional).
"""

from __future__ import annotations

import itertools

import msgspec

from runner import Plugin, Request, Response

_CALLS = itertools.count(1)


class RewriteDynamicConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    prefix: str = "r-"


class RewriteDynamic(Plugin):
    name = "bench-rewrite"
    Config = RewriteDynamicConfig

    def filter(self, conf: RewriteDynamicConfig, request: Request, response: Response) -> None:
        rid = str(next(_CALLS))
        headers = request.headers
        headers["x-request-path"] = request.path
        headers["x-runner-request"] = conf.prefix + rid
        request.args["rid"] = rid

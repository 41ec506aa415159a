"""Body plugins for the size tests.

``h-req-body-echo``: fetches the request body (ExtraInfo ReqBody) and sends it
back upstream as the Rewrite body, with its length in X-Len (a response
header of the Rewrite). With the config ``digest`` it sends X-Len and
X-Sha256 instead of the body.

``h-resp-body-echo``: the same in the post-resp phase (ExtraInfo RespBody ->
HTTPRespCall body, X-Len among its headers; ``digest`` as above).

``h-sized``: config ``{"kind": "stop"|"rewrite"|"resp", "size": N}``: a reply
carrying a body of exactly N bytes, as a Stop, a Rewrite (request body) or an
HTTPRespCall body.
"""

from __future__ import annotations

import hashlib

import msgspec

from runner import Plugin, Request, Response, UpstreamResponse


class ReqBodyEcho(Plugin):
    name = "h-req-body-echo"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        body = await request.body()
        response.headers["X-Len"] = str(len(body))
        if conf == "digest":
            response.headers["X-Sha256"] = hashlib.sha256(body).hexdigest()
        else:
            request.set_body(body)


class RespBodyEcho(Plugin):
    name = "h-resp-body-echo"

    async def response_filter(self, conf: str, response: UpstreamResponse) -> None:
        body = await response.body()
        response.headers["X-Len"] = str(len(body))
        if conf == "digest":
            response.headers["X-Sha256"] = hashlib.sha256(body).hexdigest()
        else:
            response.set_body(body)


class SizedConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    kind: str
    size: int


class Sized(Plugin):
    name = "h-sized"
    Config = SizedConfig

    def filter(self, conf: SizedConfig, request: Request, response: Response) -> None:
        if conf.kind == "stop":
            response.stop(200, b"x" * conf.size)
        elif conf.kind == "rewrite":
            request.set_body(b"x" * conf.size)

    def response_filter(self, conf: SizedConfig, response: UpstreamResponse) -> None:
        if conf.kind == "resp":
            response.set_body(b"x" * conf.size)

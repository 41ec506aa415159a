"""e2e-extra: asks for nginx variables and the request body (ExtraInfo Var and
ReqBody) and answers with them as JSON: ``{"vars": {name: value}, "body": ...}``.

Config: ``{"vars": ["remote_addr", ...], "body": true}``.
"""

from __future__ import annotations

import json

import msgspec

from runner import Plugin, Request, Response


class ExtraConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    vars: list[str] = msgspec.field(default_factory=list)
    body: bool = False


class Extra(Plugin):
    name = "e2e-extra"
    Config = ExtraConfig

    async def filter(self, conf: ExtraConfig, request: Request, response: Response) -> None:
        out: dict[str, object] = {"vars": {n: await request.var(n) for n in conf.vars}}
        if conf.body:
            out["body"] = (await request.body()).decode("latin-1")
        response.stop(200, json.dumps(out), {"Content-Type": "application/json"})

"""bench-var-stop: asks APISIX for one variable (ExtraInfo), then stops.

The "reads one var through ExtraInfo then stops" workload of the issue: an
``async def`` filter, so the call runs as a task and costs one extra round
trip to APISIX. Answers 200 with the variable's value as the body (empty when
APISIX has none). Config: ``{"var": "remote_addr"}`` (optional).
"""

from __future__ import annotations

import msgspec

from runner import Plugin, Request, Response


class VarStopConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    var: str = "remote_addr"
    status: int = 200


class VarStop(Plugin):
    name = "bench-var-stop"
    Config = VarStopConfig

    async def filter(self, conf: VarStopConfig, request: Request, response: Response) -> None:
        value = await request.var(conf.var)
        response.stop(conf.status, value or "")

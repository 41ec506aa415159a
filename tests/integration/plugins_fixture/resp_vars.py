"""resp-vars: an async post-resp plugin that reads nginx vars through
ExtraInfo (extra-info.t TESTs 6-7).

Config ``{"names": [...], "repeat": 2}``: reads every name ``repeat`` times and
sets the response header ``X-Var-<name>`` to the values read, joined by ``|``
(``<nil>`` for an unset var).
"""

from __future__ import annotations

import msgspec

from runner import Plugin, UpstreamResponse


class RespVarsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    names: list[str]
    repeat: int = 1


class RespVars(Plugin):
    name = "resp-vars"
    Config = RespVarsConfig

    async def response_filter(self, conf: RespVarsConfig, response: UpstreamResponse) -> None:
        for name in conf.names:
            values = [await response.var(name) for _ in range(conf.repeat)]
            response.headers[f"X-Var-{name}"] = "|".join(
                "<nil>" if v is None else v for v in values
            )

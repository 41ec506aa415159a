"""read-vars: an async plugin that reads nginx vars through ExtraInfo.

Config ``{"names": [...], "repeat": 2, "concurrent": true}``: reads every name
``repeat`` times (sequentially, or all at once with asyncio.gather) and stops
with a JSON object ``{name: value}``.
"""

from __future__ import annotations

import asyncio
import json

import msgspec

from runner import Plugin, Request, Response


class ReadVarsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    names: list[str]
    repeat: int = 1
    concurrent: bool = False


class ReadVars(Plugin):
    name = "read-vars"
    Config = ReadVarsConfig

    async def filter(self, conf: ReadVarsConfig, request: Request, response: Response) -> None:
        seen: dict[str, list[str | None]] = {name: [] for name in conf.names}
        for _ in range(conf.repeat):
            if conf.concurrent:
                values = await asyncio.gather(*(request.var(n) for n in conf.names))
            else:
                values = [await request.var(n) for n in conf.names]
            for name, value in zip(conf.names, values, strict=True):
                seen[name].append(value)
        response.stop(200, json.dumps(seen))

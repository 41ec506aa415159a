"""e2e-args: sets query args to several values and deletes others.

Config: ``{"set": {"a": ["foo", "bar"]}, "delete": ["d"]}``: the runner sends
a=foo, a=bar (APISIX replaces with the first and appends the rest) and d
without a value (APISIX deletes it).
"""

from __future__ import annotations

import msgspec

from runner import Plugin, Request, Response


class ArgsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    set: dict[str, list[str]] = msgspec.field(default_factory=dict)
    delete: list[str] = msgspec.field(default_factory=list)


class ArgsOps(Plugin):
    name = "e2e-args"
    Config = ArgsConfig

    def filter(self, conf: ArgsConfig, request: Request, response: Response) -> None:
        args = request.args
        for name in conf.delete:
            args.discard(name)
        for name, values in conf.set.items():
            args[name] = values[0]
            for value in values[1:]:
                args.add(name, value)

"""e2e-slow-conf: a plugin whose config takes a while to prepare (its config is
the number of seconds), like jwt-auth importing PyJWT on its first
PrepareConf; the filter answers 200 ``ok``."""

from __future__ import annotations

import time

from runner import Plugin, Request, Response


class SlowConf(Plugin):
    name = "e2e-slow-conf"

    def parse_conf(self, raw: str) -> float:
        seconds = float(raw)
        time.sleep(seconds)
        return seconds

    def filter(self, conf: float, request: Request, response: Response) -> None:
        response.stop(200, "ok")

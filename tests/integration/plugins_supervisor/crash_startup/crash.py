"""A plugin whose startup() kills its worker outright (as a crash in a C
extension would): no boot error is reported, so the supervisor respawns the
worker with a growing delay."""

from __future__ import annotations

import os

from runner import Plugin, Request, Response


class CrashOnStartup(Plugin):
    name = "crash-on-startup"

    def startup(self) -> None:
        os._exit(1)

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.stop(200, "unreachable")

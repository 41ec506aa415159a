"""A plugin whose startup() raises: every worker fails to boot, so the runner
must stop (exit code 3) instead of respawning workers forever."""

from __future__ import annotations

from runner import Plugin, Request, Response


class BoomOnStartup(Plugin):
    name = "boom-on-startup"

    def startup(self) -> None:
        raise RuntimeError("boom-startup-marker: backend unreachable")

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.stop(200, "unreachable")

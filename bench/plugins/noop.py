"""bench-noop: does nothing; the request goes upstream unchanged.

A chain of three measures the per-plugin cost of the dispatcher (the issue's
"chain of 3 no-op plugins" workload). Config: ``{}``.
"""

from __future__ import annotations

from runner import Plugin, Request, Response


class Noop(Plugin):
    name = "bench-noop"

    def parse_conf(self, raw: str) -> None:
        return None

    def filter(self, conf: None, request: Request, response: Response) -> None:
        return None

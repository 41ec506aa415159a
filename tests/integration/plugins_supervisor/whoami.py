"""whoami: stops every request with the pid of the worker that served it, so a
test can tell which worker process holds a connection."""

from __future__ import annotations

import os

from runner import Plugin, Request, Response


class WhoAmI(Plugin):
    name = "whoami"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.stop(200, str(os.getpid()))

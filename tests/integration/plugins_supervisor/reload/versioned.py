"""versioned: stops with ``"<VERSION>:<worker pid>"``. The SIGHUP test copies
this file, then rewrites ``VERSION`` and reloads the runner."""

from __future__ import annotations

import os

from runner import Plugin, Request, Response

VERSION = "v1"


class Versioned(Plugin):
    name = "versioned"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        response.stop(200, f"{VERSION}:{os.getpid()}")

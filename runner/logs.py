"""Logging set-up. In managed mode APISIX copies the runner's stdout/stderr
into its error.log at WARN level (PROTOCOL.md §6.9), so there only errors go
to stderr unless a log file is configured; ``--foreground`` logs to the
terminal at the configured level."""

from __future__ import annotations

import logging
import os
import sys

from .settings import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"


def setup_logging(conf: LoggingSettings, foreground: bool) -> None:
    handler: logging.Handler
    level = conf.level
    if conf.file:
        handler = logging.FileHandler(os.path.expanduser(conf.file))
    else:
        handler = logging.StreamHandler(sys.stderr)
        if not foreground:
            level = "ERROR"
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

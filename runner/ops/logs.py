"""Logging set-up. In managed mode APISIX copies the runner's stdout/stderr
into its error.log at WARN level (PROTOCOL.md §6.9), so there only errors go
to stderr unless a log file is configured; ``--foreground`` logs to the
terminal at the configured level.

Every line says which process wrote it (``supervisor``, ``exporter`` or
``worker N``) and, while a plugin runs, the request id and the plugin:

    2026-11-20 10:00:00,123 ERROR [worker 1] runner.dispatch: ... {request 42, plugin jwt-auth}

The request context costs one store per plugin call: a module global for
inline (sync) calls, a context variable for async ones (each call's task
has its own copy, so concurrent calls never see each other's ids).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys

from runner.settings import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s%(context)s"

_role = "runner"
# (request id, plugin name) of the inline call running now, if any.
inline_context: tuple[int, str] | None = None
task_context: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "apisix_runner_call", default=None
)


def set_role(role: str) -> None:
    """Name this process in every line it logs (after a fork)."""
    global _role
    _role = role


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = f"{_role} pid {record.process}"
        ctx = task_context.get() or inline_context
        record.context = f" {{request {ctx[0]}, plugin {ctx[1]}}}" if ctx else ""
        return True


def setup_logging(conf: LoggingSettings, foreground: bool) -> None:
    handler: logging.Handler
    level = conf.level
    if conf.file:
        handler = logging.FileHandler(os.path.expanduser(conf.file), encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
        if not foreground:
            level = "ERROR"
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    set_role("supervisor")

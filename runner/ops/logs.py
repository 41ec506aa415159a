"""Logging set-up, and log lines that repeat once per request.

In managed mode (APISIX starts the runner, no ``--foreground``) APISIX copies
the runner's stdout/stderr into its error.log at WARN level (docs/protocol.md
§10.1). There, unless a log file is configured, stderr gets warnings and
errors, plus the start-up summary (lines logged with ``extra=SUMMARY_LINE``:
the socket and worker count, the plugins loaded) from the supervisor; workers
log at WARNING or above, so no per-request INFO reaches error.log. ``--foreground`` logs to the
terminal at the configured level.

Every line says which process wrote it (``supervisor``, ``exporter`` or
``worker N``) and, while a plugin runs, the request id and the plugin:

    2026-11-20 10:00:00,123 ERROR [worker 1] runner.dispatch: ... {request 42, plugin jwt-auth}

The request context costs one store per plugin call: a module global for
inline (sync) calls; for async ones, a field of the connection's mark, which
each of its calls' contexts holds (each call has its own copy of the
context, so concurrent calls never see each other's ids). A task a plugin
starts gets the mark's value as it is then (:func:`task_factory`).

A failure that recurs on every request (a plugin that raises, a config APISIX
retries, malformed frames) goes through a :class:`LogLimiter`: the first one
is logged in full (traceback included), the repeats are counted and summed up
in at most one line per :data:`SUMMARY_EVERY` seconds. :func:`flush` writes
the summaries that are due when no further repeat comes to trigger them; the
worker calls it from its housekeeping.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, Protocol, TypeVar

from runner.settings import LoggingSettings

FORMAT = "%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s%(context)s"

# ``extra=SUMMARY_LINE`` on an INFO line that must still reach stderr in
# managed mode: what the runner serves, said once at start-up (the socket and
# workers, the plugins, the metrics address) and after a reload.
SUMMARY_LINE: Final = {"summary": True}

# A repeated log line is summed up at most once per this many seconds.
SUMMARY_EVERY: Final = 10.0
# Kinds of repeated lines a limiter follows one by one; beyond, they are
# counted together (a flood of distinct route keys cannot grow its table).
MAX_KINDS: Final = 1000

_role = "runner"
# The root logger's level in forked children (workers, exporter); None: as set.
_child_level: int | None = None


def _no_inline_call() -> tuple[int, str] | None:
    return None


_T = TypeVar("_T")


class CallMark(Protocol):
    """A connection's record of the request and plugin its call runs now
    (runner.api.dispatch.StepMark)."""

    @property
    def now(self) -> tuple[int, str] | None: ...


Where = tuple[int, str] | CallMark | None

# (request id, plugin name) of the inline call running now, if any: the
# dispatcher installs its reader here, so that running a plugin sets two
# fields of its own instead of a module attribute and a tuple.
inline_context: Callable[[], tuple[int, str] | None] = _no_inline_call
# An async call's (request id, plugin name): the connection's mark in its
# calls' contexts, the mark's value then in a task a plugin started, or the
# pair itself where a step set it (calls run without a connection: tests).
task_context: contextvars.ContextVar[Where] = contextvars.ContextVar(
    "apisix_runner_call", default=None
)


def where(value: Where) -> tuple[int, str] | None:
    """The (request id, plugin name) that ``task_context``'s value stands for."""
    if value is None or isinstance(value, tuple):
        return value
    return value.now


def task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
    /,
    **kwargs: Any,
) -> asyncio.Task[_T]:
    """A worker loop's tasks: asyncio's own, with the log context of a task a
    plugin starts fixed as it is when the task is created. Its context would
    otherwise hold the connection's mark, which moves on to the connection's
    next call: a task left running after its call would log under the next
    request's id."""
    if kwargs.get("context") is None:
        current = task_context.get()
        if current is not None and not isinstance(current, tuple):
            context = contextvars.copy_context()
            context.run(task_context.set, current.now)
            kwargs["context"] = context
    return asyncio.Task(coro, loop=loop, **kwargs)


def set_role(role: str) -> None:
    """Name this process in every line it logs (after a fork)."""
    global _role
    _role = role
    if _child_level is not None and role != "supervisor":
        root = logging.getLogger()
        root.setLevel(max(root.level, _child_level))


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = f"{_role} pid {record.process}"
        ctx = where(task_context.get()) or inline_context()
        record.context = f" {{request {ctx[0]}, plugin {ctx[1]}}}" if ctx else ""
        return True


def managed_filter(record: logging.LogRecord) -> bool:
    """What APISIX's error.log gets: warnings and errors, and the start-up summary."""
    return record.levelno >= logging.WARNING or getattr(record, "summary", False)


def setup_logging(conf: LoggingSettings, foreground: bool) -> None:
    global _child_level
    handler: logging.Handler
    _child_level = None
    if conf.file:
        handler = logging.FileHandler(os.path.expanduser(conf.file), encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
        if not foreground:
            handler.addFilter(managed_filter)  # before ContextFilter: it drops early
            _child_level = logging.WARNING  # per-request INFO is not even formatted
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(conf.level)
    set_role("supervisor")


# --------------------------------------------------------------------------- repeats


class _Repeats:
    """One kind of line: its level, when a line of it was last written, and
    how many were left out since."""

    __slots__ = ("level", "logged", "suppressed")

    def __init__(self, level: int, now: float) -> None:
        self.level = level
        self.logged = now
        self.suppressed = 0


_limiters: weakref.WeakSet[LogLimiter] = weakref.WeakSet()


class LogLimiter:
    """Log lines that may come once per request, rate limited by kind.

    ``what`` names the kind (``"plugin 'jwt-auth' raised KeyError"``), without
    the request id: the first line of a kind is written as given, with its
    traceback; the next ones only add to a count, written as one summary line
    (``<what>: 1399 more times in the last 10 s``) at most every ``every``
    seconds, by the next repeat or by :func:`flush`. A kind that stays quiet
    for ``every`` seconds is forgotten, so its next line is written in full.

    Call it on failure paths only, from the event loop's thread; counting for
    metrics stays with the caller."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = MAX_KINDS,
    ) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self.max_kinds = max_kinds
        self.overflow = f"other repeated lines (more than {max_kinds} kinds at once)"
        self._kinds: dict[str, _Repeats] = {}
        _limiters.add(self)

    def error(self, what: str, msg: str, *args: Any, exc_info: Any = None) -> None:
        self.emit(logging.ERROR, what, msg, *args, exc_info=exc_info)

    def warning(self, what: str, msg: str, *args: Any, exc_info: Any = None) -> None:
        self.emit(logging.WARNING, what, msg, *args, exc_info=exc_info)

    def emit(self, level: int, what: str, msg: str, *args: Any, exc_info: Any = None) -> None:
        now = self.clock()
        kinds = self._kinds
        repeats = kinds.get(what)
        if repeats is None and len(kinds) >= self.max_kinds:
            what = self.overflow
            repeats = kinds.get(what)
        if repeats is None:
            kinds[what] = _Repeats(level, now)
            self.log.log(level, msg, *args, exc_info=exc_info)
            return
        repeats.suppressed += 1
        if now - repeats.logged >= self.every:
            self._summarise(what, repeats, now)

    def flush(self, final: bool = False) -> None:
        """Write the summaries that are due (all of them if ``final``) and
        forget the kinds that stayed quiet."""
        now = self.clock()
        kinds = self._kinds
        for what, repeats in list(kinds.items()):
            if now - repeats.logged >= self.every or final:
                if repeats.suppressed:
                    self._summarise(what, repeats, now)
                elif not final:
                    del kinds[what]

    def _summarise(self, what: str, repeats: _Repeats, now: float) -> None:
        self.log.log(
            repeats.level, "%s: %d more times in the last %.0f s (not logged one by one)",
            what, repeats.suppressed, now - repeats.logged,
        )  # fmt: skip
        repeats.suppressed = 0
        repeats.logged = now

    def pending(self) -> int:
        """Lines counted but not yet summed up."""
        return sum(r.suppressed for r in self._kinds.values())


def flush(final: bool = False) -> None:
    """Write every limiter's due summaries; ``final`` (a worker stopping):
    all of them. Cheap: call it from the worker's housekeeping."""
    for limiter in list(_limiters):
        limiter.flush(final)

"""Logging a backend outage once, not once per request.

Plugins that call a service (Redis, an HTTP auth service) see every request
fail while it is down; one log line per request would bury everything else.
:class:`OutageLog` writes the first failure, a reminder at most every
``remind_every`` seconds while it lasts, and the recovery::

    health = OutageLog(log, "redis-limit: Redis 127.0.0.1:6379", "the others answer 503")
    try:
        ...
    except RedisError as exc:
        health.failed(exc)
    else:
        health.succeeded()
"""

from __future__ import annotations

import logging
import time

from runner.ops.metrics import count_event


def describe(exc: BaseException) -> str:
    """An exception as a short reason; TimeoutError and some client errors
    have no message of their own."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class OutageLog:
    """``plugin``: the plugin's name, to count outages and the requests they
    failed in /metrics (``plugin_events``: ``outages``, ``outage_failures``)."""

    def __init__(
        self,
        log: logging.Logger,
        subject: str,
        consequence: str,
        remind_every: float = 60.0,
        plugin: str | None = None,
    ) -> None:
        self._log = log
        self.plugin = plugin
        self.subject = subject  # who is down, e.g. "async-auth: http://auth/check"
        self.consequence = consequence  # what requests get meanwhile
        self.remind_every = remind_every
        self.failures = 0  # failed requests in the current outage
        self.since = 0.0
        self.reminded = 0.0

    def failed(self, reason: str | BaseException) -> None:
        if isinstance(reason, BaseException):
            reason = describe(reason)
        now = time.monotonic()
        self.failures += 1
        if self.plugin is not None:
            count_event(self.plugin, "outage_failures")
            if self.failures == 1:
                count_event(self.plugin, "outages")
        if self.failures == 1:
            self.since = self.reminded = now
            self._log.error("%s unavailable (%s); %s", self.subject, reason, self.consequence)
        elif now - self.reminded >= self.remind_every:
            self.reminded = now
            self._log.error(
                "%s still unavailable after %.0f s, %d requests (%s)",
                self.subject, now - self.since, self.failures, reason,
            )  # fmt: skip

    def succeeded(self) -> None:
        if self.failures:
            self._log.warning(
                "%s is back after %.1f s, %d failed requests",
                self.subject, time.monotonic() - self.since, self.failures,
            )  # fmt: skip
            self.failures = 0

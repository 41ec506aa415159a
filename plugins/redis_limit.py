"""redis-limit: an exact sliding-window rate limit shared through Redis.

Route config (``redis_url``, ``max_requests`` and ``period`` required)::

    {"redis_url": "redis://127.0.0.1:6379/0", "max_requests": 100, "period": 60,
     "key": "remote_addr",            # or "header:X-Api-Key" or "var:<nginx variable>"
     "fail_open": false,              # Redis down or slow: allow (true) or 503 (false)
     "timeout": 0.5,                  # seconds for connect + command, per request
     "key_prefix": "apisix-runner:redis-limit",
     "rejected_code": 429,            # and body {"error": <rejected_msg>}
     "rejected_msg": "too many requests"}

Every request runs one Lua script (EVALSHA) on a sorted set per key: drop the
entries older than the window, count the rest, and add the request only if it
is under the limit. Redis runs a script atomically and the script reads Redis'
own clock (TIME), so the limit is exact across every worker and every APISIX
node that uses the same Redis, whatever their clocks say. See
docs/plugins/redis-limit.md for the algorithm and its guarantees.

``redis`` is imported on the first config parsed, in the worker, not when the
runner starts: ``python -X importtime`` puts ``redis.asyncio`` at ~75 ms and
~7 MiB of RSS, which every worker would otherwise pay even with no route
using this plugin.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import os
import re
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import msgspec

from runner import Plugin, Request, Response
from runner.ops.outage import OutageLog

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger("runner.plugins.redis-limit")

# One sorted set per key; scores and the window are microseconds of Redis' TIME.
# Lua numbers are doubles: exact up to 2^53 us (~285 years), and passed to
# redis.call as numbers (never concatenated, which would print 14 digits).
SLIDING_LOG = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""

# Connections per worker per Redis; a request waiting for one is still bounded
# by its route's timeout.
POOL_SIZE = 64
# Key values longer than this are hashed, so a huge header makes a short key.
MAX_KEY_VALUE = 128

UNAVAILABLE_BODY = '{"error": "rate limiter unavailable"}'
JSON = {"Content-Type": "application/json"}

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VAR_NAME = re.compile(r"^[A-Za-z0-9_]+$")

KeyKind = Literal["addr", "header", "var"]


def _key_spec(spec: str) -> tuple[KeyKind, str]:
    """Split a ``key`` setting into (kind, name), or raise ValueError."""
    if spec == "remote_addr":
        return "addr", ""
    kind, sep, name = spec.partition(":")
    if sep and kind == "header" and _HEADER_NAME.match(name):
        return "header", name.lower()
    if sep and kind == "var" and _VAR_NAME.match(name):
        return "var", name
    raise ValueError(f"key: expected 'remote_addr', 'header:<name>' or 'var:<name>', got {spec!r}")


def _check_url(url: str) -> None:
    """Raise ValueError naming redis_url unless redis-py accepts ``url``."""
    from redis.asyncio.connection import parse_url  # lazy: see the module doc

    try:
        parts = urlsplit(url)
        if parts.scheme in ("redis", "rediss") and not parts.hostname:
            raise ValueError("no host")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("no socket path")
        parse_url(url)
    except ValueError as exc:
        raise ValueError(f"redis_url: {exc} ({redacted(url)!r})") from None


def redacted(url: str) -> str:
    """``url`` without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisLimitConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The route's config as written (see the module doc)."""

    redis_url: str
    max_requests: int
    period: float
    key: str = "remote_addr"
    fail_open: bool = False
    timeout: float = 0.5
    key_prefix: str = "apisix-runner:redis-limit"
    rejected_code: int = 429
    rejected_msg: str = "too many requests"

    def __post_init__(self) -> None:
        if self.max_requests < 1:
            raise ValueError(f"max_requests: must be >= 1, got {self.max_requests}")
        if not 0 < self.period <= 10**9:
            raise ValueError(f"period: must be > 0 seconds, got {self.period}")
        if not 0 < self.timeout <= 60:
            raise ValueError(f"timeout: must be > 0 and <= 60 seconds, got {self.timeout}")
        if not 200 <= self.rejected_code <= 599:
            raise ValueError(f"rejected_code: must be 200..599, got {self.rejected_code}")
        _key_spec(self.key)
        _check_url(self.redis_url)


class Route(NamedTuple):
    """A parsed config plus what filter needs precomputed (not per request)."""

    conf: RedisLimitConfig
    key_kind: KeyKind
    key_name: str
    window_us: int
    limit_header: str
    rejected_body: bytes

    @classmethod
    def of(cls, conf: RedisLimitConfig) -> Route:
        kind, name = _key_spec(conf.key)
        window_us = max(1, round(conf.period * 1e6))
        body = msgspec.json.encode({"error": conf.rejected_msg})
        return cls(conf, kind, name, window_us, str(conf.max_requests), body)


class _Backend:
    """One Redis of this worker: client, pool, the registered script, health."""

    def __init__(self, url: str, timeout: float) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # No retries: a retried EVALSHA could count one request twice, and
            # the route's timeout bounds the whole call anyway.
            retry=Retry(NoBackoff(), 0),
            # Shows in CLIENT LIST which runner worker holds a connection.
            client_name=f"apisix-runner-{os.getpid()}",
        )
        self.client: Redis = Redis(connection_pool=pool)
        self.script: AsyncScript = self.client.register_script(SLIDING_LOG)
        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.health = OutageLog(
            log,
            f"redis-limit: Redis {redacted(url)}",
            "routes with fail_open allow requests, the others answer 503",
        )


class _WorkerState:
    """Per-process, per-event-loop state, created on first use after the fork."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.backends: dict[str, _Backend] = {}
        # Members of the sorted sets must be unique across workers and nodes:
        # a random per-process prefix and a counter (never the time alone).
        self.nonce = os.urandom(8).hex()
        self.counter = itertools.count()

    def current(self) -> bool:
        return self.pid == os.getpid() and self.loop is asyncio.get_running_loop()

    def backend(self, conf: RedisLimitConfig) -> _Backend:
        # Keyed by URL only: one pool per Redis, whatever the routes' other
        # settings; each call is still bounded by its own route's timeout.
        backend = self.backends.get(conf.redis_url)
        if backend is None:
            backend = self.backends[conf.redis_url] = _Backend(conf.redis_url, conf.timeout)
        return backend

    def member(self) -> str:
        return f"{self.nonce}:{next(self.counter)}"

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.client.aclose()
            await backend.client.connection_pool.aclose()
        self.backends.clear()


class RedisLimit(Plugin):
    name = "redis-limit"
    Config = RedisLimitConfig

    def __init__(self) -> None:
        self._state: _WorkerState | None = None

    def parse_conf(self, raw: str) -> Route:
        conf: RedisLimitConfig = super().parse_conf(raw)
        return Route.of(conf)

    def _worker(self) -> _WorkerState:
        state = self._state
        if state is None or not state.current():
            state = self._state = _WorkerState()
        return state

    async def shutdown(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.current():
            await state.close()

    async def filter(self, route: Route, request: Request, response: Response) -> None:
        conf = route.conf
        key = await _redis_key(route, request)
        state = self._worker()
        backend = state.backend(conf)
        try:
            async with asyncio.timeout(conf.timeout):
                reply = await backend.script(
                    keys=[key], args=[conf.max_requests, route.window_us, state.member()]
                )
        except backend.errors as exc:
            backend.health.failed(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            )
            if not conf.fail_open:
                response.stop(503, UNAVAILABLE_BODY, JSON)
            return
        backend.health.succeeded()
        _answer(route, response, reply)


async def _redis_key(route: Route, request: Request) -> str:
    """The sorted set's key for this request.

    A missing or empty header or variable falls back to the client address,
    as APISIX's own limit-count does: leaving the header out must not be a way
    around the limit."""
    value: str | None = None
    if route.key_kind == "header":
        value = request.headers.get(route.key_name)
    elif route.key_kind == "var":
        value = await request.var(route.key_name)
    prefix = route.conf.key_prefix
    if not value:
        return f"{prefix}:addr:{request.src_ip}"
    if len(value) > MAX_KEY_VALUE:
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{prefix}:{route.key_kind}:{route.key_name}:{value}"


def _answer(route: Route, response: Response, reply: Any) -> None:
    allowed, remaining, retry_us = (int(x) for x in reply)
    response.headers["X-RateLimit-Limit"] = route.limit_header
    response.headers["X-RateLimit-Remaining"] = str(remaining)
    if not allowed:
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_us / 1e6)))
        response.stop(route.conf.rejected_code, route.rejected_body, JSON)

"""async-auth: ask an external HTTP service whether the request's token is valid.

Route config (``auth_url`` required)::

    {"auth_url": "http://auth.internal:8080/verify",
     "timeout": 3.0,                     # seconds for the whole auth exchange
     "forward_headers": ["X-Tenant"],    # request headers copied to the auth request
     "upstream_headers": ["X-User-Id"],  # auth answer headers copied upstream
     "cache_ttl": 0,                     # seconds a definite allow/deny is cached
     "error_status": 503,                # auth service failed (5xx, refused, timeout)
     "token_header": "Authorization",    # where the token is, sent as the same header
     "hide_credentials": false,          # true: the token header is not sent upstream
     "protocol": "forward"}              # or "json": POST {"token": ...}

The plugin sends ``GET auth_url`` with the token header and the forwarded
headers (``"protocol": "forward"``, the forward-auth convention), or, with
``"protocol": "json"``, ``POST auth_url`` with the JSON body
``{"token": "<the token header's value>"}`` and the forwarded headers: the
protocol of the auth service in the Chinese APISIX Python plugin guide.
A 2xx answer lets the request through, 401/403 answers the client 403,
anything else (3xx, other 4xx, 5xx, a refused connection, a timeout) is
the service failing and answers ``error_status``. A request without a token
gets 401 and the service is not asked. See docs/plugins/async-auth.md.

``aiohttp`` is imported on the first request, in the worker, not when the
runner starts: ``python -X importtime`` puts it at ~135 ms and ~10 MiB of RSS,
which every worker would otherwise pay even with no route using this plugin.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import msgspec

from runner import Plugin, Request, Response
from runner.ops.outage import OutageLog, describe

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("runner.plugins.async-auth")

# Cached decisions per worker, least recently used evicted first; each entry is
# a 32-byte digest and a few short headers, so the cache stays under ~2 MiB.
CACHE_MAX_ENTRIES = 4096
# Connections per worker to all auth services together.
POOL_SIZE = 100
# A small body is read so its connection goes back to the pool; a bigger or
# chunked one is not read and the connection is closed instead.
DRAIN_LIMIT = 64 * 1024

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

MISSING_BODY = '{"error": "missing credentials"}'
DENIED_BODY = '{"error": "forbidden"}'
FAILED_BODY = '{"error": "authorization service unavailable"}'


def shown(url: str) -> str:
    """``url`` without user:password, for log lines and config errors."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _check_header(field: str, name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{field}: {name!r} is not a header name")
    return name


class AsyncAuthConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The route's config as written (see the module doc)."""

    auth_url: str
    timeout: float = 3.0
    forward_headers: tuple[str, ...] = ()
    upstream_headers: tuple[str, ...] = ()
    cache_ttl: float = 0.0
    error_status: int = 503
    token_header: str = "Authorization"
    hide_credentials: bool = False
    protocol: Literal["forward", "json"] = "forward"

    def __post_init__(self) -> None:
        parts = urlsplit(self.auth_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"auth_url: expected an http(s) URL with a host, got {shown(self.auth_url)!r}"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"auth_url: {exc}") from None
        if "@" in parts.netloc and self.token_header.lower() == "authorization":
            # aiohttp would turn them into an Authorization header, the one
            # that already carries the client's token, and fail every request.
            raise ValueError(
                "auth_url: user:password in the URL cannot be sent along with the token in "
                "Authorization; remove them, or set token_header to another header"
            )
        if not 0 < self.timeout <= 60:
            raise ValueError(f"timeout: must be > 0 and <= 60 seconds, got {self.timeout}")
        if not 0 <= self.cache_ttl <= 86400:
            raise ValueError(f"cache_ttl: must be 0..86400 seconds, got {self.cache_ttl}")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status: must be 400..599, got {self.error_status}")
        _check_header("token_header", self.token_header)
        for name in self.forward_headers:
            _check_header("forward_headers", name)
        for name in self.upstream_headers:
            _check_header("upstream_headers", name)


class Decision(NamedTuple):
    """What the auth service said: allowed, and the headers to send upstream
    (name, value or None to delete) when it did."""

    allowed: bool
    headers: tuple[tuple[str, str | None], ...] = ()


class AuthFailed(Exception):
    """The auth service gave no definite answer (never cached)."""


class _DecisionCache:
    """Definite answers by digest, each with its own expiry, LRU-bounded."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, Decision]] = OrderedDict()

    def get(self, key: bytes) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, decision: Decision, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _WorkerState:
    """Per-process, per-event-loop state, created on first use after the fork."""

    def __init__(self) -> None:
        import aiohttp  # lazy: see the module doc

        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_SIZE),
            # Never keep cookies: one user's Set-Cookie must not ride along
            # with the next user's auth request.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
        )
        self.errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)
        self.cache = _DecisionCache(CACHE_MAX_ENTRIES)
        self.inflight: dict[bytes, asyncio.Task[Decision]] = {}
        self.health: dict[str, OutageLog] = {}

    def current(self) -> bool:
        return self.pid == os.getpid() and self.loop is asyncio.get_running_loop()

    def lookup(
        self, key: bytes, conf: AsyncAuthConfig, forwarded: list[tuple[str, str]]
    ) -> asyncio.Task[Decision]:
        """The one auth request in flight for ``key``: concurrent requests with
        the same token wait for it instead of each asking the service."""
        task = self.inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._ask_and_cache(key, conf, forwarded))
            self.inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        return task

    async def _ask_and_cache(
        self, key: bytes, conf: AsyncAuthConfig, forwarded: list[tuple[str, str]]
    ) -> Decision:
        decision = await _ask(self, conf, forwarded)  # AuthFailed is never cached
        self.cache.put(key, decision, conf.cache_ttl)
        return decision

    def _landed(self, key: bytes, task: asyncio.Task[Decision]) -> None:
        self.inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have timed out

    async def close(self) -> None:
        for task in list(self.inflight.values()):
            task.cancel()
        await self.session.close()

    def health_of(self, url: str) -> OutageLog:
        health = self.health.get(url)
        if health is None:
            health = self.health[url] = OutageLog(
                log, f"async-auth: {shown(url)}", "answering the error status", plugin="async-auth"
            )
        return health


class AsyncAuth(Plugin):
    name = "async-auth"
    Config = AsyncAuthConfig

    def __init__(self) -> None:
        self._state: _WorkerState | None = None

    def _worker(self) -> _WorkerState:
        state = self._state
        if state is None or not state.current():
            state = self._state = _WorkerState()
        return state

    async def shutdown(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.current():
            await state.close()

    async def filter(self, conf: AsyncAuthConfig, request: Request, response: Response) -> None:
        token = request.headers.get(conf.token_header)
        if not token:
            response.stop(401, MISSING_BODY, {"Content-Type": "application/json"})
            return
        forwarded = _forwarded(conf, request, token)
        state = self._worker()
        try:
            decision = await self._decide(state, conf, forwarded)
        except AuthFailed:
            response.stop(conf.error_status, FAILED_BODY, {"Content-Type": "application/json"})
            return
        if not decision.allowed:
            response.stop(403, DENIED_BODY, {"Content-Type": "application/json"})
            return
        _to_upstream(conf, request, decision)

    async def _decide(
        self, state: _WorkerState, conf: AsyncAuthConfig, forwarded: list[tuple[str, str]]
    ) -> Decision:
        if not conf.cache_ttl:
            return await _ask(state, conf, forwarded)
        key = _cache_key(conf, forwarded)
        decision = state.cache.get(key)
        if decision is None:
            # shield: one request giving up must not cancel the others' answer.
            decision = await asyncio.shield(state.lookup(key, conf, forwarded))
        return decision


def _to_upstream(conf: AsyncAuthConfig, request: Request, decision: Decision) -> None:
    for name, value in decision.headers:
        if value is None:
            # The service did not vouch for it: a client's own X-User-Id must
            # not reach the upstream as if it had.
            request.headers.discard(name)
        else:
            request.headers[name] = value
    if conf.hide_credentials:
        request.headers.discard(conf.token_header)


def _forwarded(conf: AsyncAuthConfig, request: Request, token: str) -> list[tuple[str, str]]:
    """The headers of the auth request: the token, then the forwarded ones."""
    headers = [(conf.token_header, token)]
    for name in conf.forward_headers:
        headers.extend((name, v) for v in request.headers.get_all(name) if v is not None)
    return headers


def _cache_key(conf: AsyncAuthConfig, forwarded: list[tuple[str, str]]) -> bytes:
    """A digest of everything the answer depends on: the token is never kept
    in memory as such, and routes asking differently never share an entry."""
    h = hashlib.sha256(conf.protocol.encode() + b"\0" + conf.auth_url.encode())
    for name in conf.upstream_headers:
        h.update(b"\0u" + name.lower().encode())
    for name, value in forwarded:
        h.update(b"\0h" + name.lower().encode() + b"\0" + value.encode("utf-8", "surrogateescape"))
    return h.digest()


async def _ask(
    state: _WorkerState, conf: AsyncAuthConfig, forwarded: list[tuple[str, str]]
) -> Decision:
    """One auth request; a definite Decision or AuthFailed, logged (throttled)."""
    health = state.health_of(conf.auth_url)
    try:
        async with asyncio.timeout(conf.timeout):
            status, headers = await _exchange(state.session, conf, forwarded)
    except state.errors as exc:
        health.failed(describe(exc))
        raise AuthFailed from exc
    if 200 <= status < 300 or status in (401, 403):
        health.succeeded()
        return Decision(True, headers) if status < 300 else Decision(False)
    health.failed(f"answered {status}")
    raise AuthFailed


async def _exchange(
    session: aiohttp.ClientSession, conf: AsyncAuthConfig, forwarded: list[tuple[str, str]]
) -> tuple[int, tuple[tuple[str, str | None], ...]]:
    # A redirect is an answer of its own here (a login page is not "allowed").
    if conf.protocol == "json":  # the token in a JSON body, the other headers as usual
        (_, token), headers = forwarded[0], forwarded[1:]
        asked = session.post(conf.auth_url, json={"token": token}, headers=headers,
                             allow_redirects=False)  # fmt: skip
    else:
        asked = session.get(conf.auth_url, headers=forwarded, allow_redirects=False)
    async with asked as resp:
        length = resp.content_length
        if length is not None and length <= DRAIN_LIMIT:
            await resp.read()
        wanted = tuple((name, resp.headers.get(name)) for name in conf.upstream_headers)
        return resp.status, wanted

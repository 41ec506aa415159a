"""redis-limit: rate limits shared through Redis (single, Cluster or Sentinel).

Route config (every key optional except where the counters live)::

    {"redis_url": "redis://127.0.0.1:6379/0",   # or redis_host/redis_port,
                                                # redis_cluster_nodes, redis_sentinels
     "max_requests": 100, "period": 60,         # or "rules": [{"max_requests": 10,
                                                #   "period": 1}, {...}]
     "window_type": "sliding",                  # or "fixed"
     "key": "remote_addr",                      # "header:X-Api-Key", "var:<name>", or
                                                # key_type var / var_combination / constant
     "fail_open": false, "timeout": 0.5, "sync_interval": null,
     "key_prefix": "apisix-runner:redis-limit",
     "rejected_code": 429, "rejected_msg": "too many requests",
     "show_limit_quota_header": true}

Every request that is not counted locally runs one Lua script (EVALSHA) on
the keys of its rules, all in one hash slot: a sliding log (a sorted set per
rule) or a fixed window (a counter per rule that expires with its window).
The script checks every rule and records the request in all of them only if
all have room, atomically, on Redis' own clock (TIME), so the limit is exact
across every worker and every APISIX node that uses the same Redis. With
``sync_interval`` each worker counts locally and adds its counts to Redis in
batches instead (fewer round trips, bounded over-admission). See
docs/plugins/redis-limit.md for the algorithms and their guarantees.

One client per Redis topology per worker, made on the first request after the
fork and closed by ``shutdown()``: routes naming the same Redis share it.

``redis`` is imported by a worker's first ``redis_url`` config or first
client, not when the runner starts: ``python -X importtime`` puts ``redis.asyncio`` at ~75 ms and
~7 MiB of RSS, which every worker would otherwise pay even with no route
using this plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast
from urllib.parse import urlsplit, urlunsplit

import msgspec

from runner import Plugin, Request, Response
from runner.ops.outage import OutageLog, describe

if TYPE_CHECKING:
    from redis.asyncio.sentinel import Sentinel

log = logging.getLogger("runner.plugins.redis-limit")

# Sliding log, one sorted set per rule; scores and windows are microseconds of
# Redis' TIME. Lua numbers are doubles: exact up to 2^53 us (~285 years), and
# passed to redis.call as numbers (never concatenated, which would print 14
# digits). KEYS: one per rule. ARGV[1]: the request's unique member; then per
# rule i: ARGV[2i] limit, ARGV[2i+1] window. Returns {admitted, then per rule
# the count after this request and the microseconds until its oldest entry
# leaves the window}.
SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local counts = {}
local admit = 1
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[2 * i + 1]))
  counts[i] = redis.call('ZCARD', KEYS[i])
  if counts[i] >= tonumber(ARGV[2 * i]) then admit = 0 end
end
local out = {admit}
for i = 1, n do
  local key = KEYS[i]
  local window = tonumber(ARGV[2 * i + 1])
  local count = counts[i]
  if admit == 1 then
    redis.call('ZADD', key, now, ARGV[1])
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    count = count + 1
  end
  local reset = window
  if count > 0 then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + window - now
  end
  out[2 * i] = count
  out[2 * i + 1] = reset
end
return out
"""

# Fixed windows, one counter per rule that expires when its window ends (the
# window starts with the first request, as in APISIX's limit-count). KEYS: one
# per rule. ARGV[1]: 1 to admit one request if every rule has room, 0 only to
# add counts; then per rule i: ARGV[3i-1] limit, ARGV[3i] window (ms),
# ARGV[3i+1] requests already admitted locally, added unconditionally (the
# batches of sync_interval). Returns {admitted, then per rule the count and
# the milliseconds left in its window}.
FIXED_WINDOW = """
local n = #KEYS
local counts = {}
local admit = tonumber(ARGV[1])
for i = 1, n do
  local add = tonumber(ARGV[3 * i + 1])
  if add > 0 then
    counts[i] = redis.call('INCRBY', KEYS[i], add)
  else
    counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  if counts[i] >= tonumber(ARGV[3 * i - 1]) then admit = 0 end
end
local out = {admit}
for i = 1, n do
  local key = KEYS[i]
  local count = counts[i]
  if admit == 1 then count = redis.call('INCR', key) end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    ttl = tonumber(ARGV[3 * i])
    if count > 0 then redis.call('PEXPIRE', key, ttl) end
  end
  out[2 * i] = count
  out[2 * i + 1] = ttl
end
return out
"""

# Connections per worker per Redis (per node in a cluster); a request waiting
# for one is still bounded by its route's timeout.
POOL_SIZE = 64
# Key values longer than this are hashed, so a huge header makes a short key.
MAX_KEY_VALUE = 128
# Shortest sync_interval: the batches are flushed by one task per worker.
MIN_SYNC_INTERVAL = 0.01
# With one cluster master down, requests for the other masters' keys still
# succeed between the failures: the outage ends only after this long without
# a failure (one log line for it, not one per request).
CLUSTER_QUIET_S = 1.0

UNAVAILABLE_BODY = '{"error": "rate limiter unavailable"}'
JSON = {"Content-Type": "application/json"}
CONSEQUENCE = "routes with fail_open allow requests, the others answer 503"

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VAR_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_VAR_REF = re.compile(r"\$([A-Za-z0-9_]+)")

Policy = Literal["redis", "redis-cluster", "redis-sentinel"]
KeyKind = Literal["addr", "header", "var", "vars", "const"]


# --------------------------------------------------------------------------- config


class Rule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One limit of ``rules``: ``max_requests`` per ``period`` seconds."""

    max_requests: int
    period: float
    header_prefix: str | None = None


class RedisLimitConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The route's config as written (see the module doc and the plugin's page)."""

    # Where the counters live: one of redis_url, redis_host,
    # redis_cluster_nodes and redis_sentinels.
    policy: Policy | None = None
    redis_url: str | None = None
    redis_host: str | None = None
    redis_port: int | None = None
    redis_cluster_nodes: tuple[str, ...] | None = None
    redis_sentinels: tuple[str, ...] | None = None
    redis_master_name: str | None = None
    redis_username: str | None = None
    redis_password: str | None = None
    redis_database: int | None = None
    redis_ssl: bool | None = None
    redis_ssl_verify: bool = True
    redis_ssl_ca_file: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    # What is counted.
    max_requests: int | None = None  # 100 unless rules are given
    period: float | None = None  # 60 unless rules are given
    rules: tuple[Rule, ...] | None = None
    window_type: Literal["sliding", "fixed"] | None = None  # sliding unless sync_interval
    sync_interval: float | None = None
    key: str = "remote_addr"
    key_type: Literal["var", "var_combination", "constant"] | None = None
    key_prefix: str = "apisix-runner:redis-limit"
    # What the client gets.
    fail_open: bool = False
    timeout: float = 0.5
    rejected_code: int = 429
    rejected_msg: str = "too many requests"
    show_limit_quota_header: bool = True

    def __post_init__(self) -> None:
        if self.rules is not None:
            if self.max_requests is not None or self.period is not None:
                raise ValueError("rules: give either rules or max_requests and period, not both")
            if not self.rules:
                raise ValueError("rules: must list at least one rule")
            for i, rule in enumerate(self.rules):
                _check_rule(rule.max_requests, rule.period, f"rules[{i}].")
            periods = [rule.period for rule in self.rules]
            if len(set(periods)) != len(periods):
                raise ValueError("rules: two rules with the same period (merge them into one)")
        else:
            _check_rule(
                100 if self.max_requests is None else self.max_requests,
                60 if self.period is None else self.period,
                "",
            )
        if not 0 < self.timeout <= 60:
            raise ValueError(f"timeout: must be > 0 and <= 60 seconds, got {self.timeout}")
        if not 200 <= self.rejected_code <= 599:
            raise ValueError(f"rejected_code: must be 200..599, got {self.rejected_code}")
        if self.sync_interval is not None and self.sync_interval != -1:
            if not MIN_SYNC_INTERVAL <= self.sync_interval <= 60:
                raise ValueError(
                    f"sync_interval: must be {MIN_SYNC_INTERVAL}..60 seconds "
                    f"(or -1: every request goes to Redis), got {self.sync_interval}"
                )
            if self.window_type == "sliding":
                raise ValueError(
                    "sync_interval: counts added to Redis in batches need window_type 'fixed'"
                )
        _key_spec(self.key, self.key_type)
        topology = _topology(self)
        if topology.policy == "redis-cluster" and (
            "{" in self.key_prefix or "}" in self.key_prefix
        ):
            raise ValueError(
                "key_prefix: must not contain '{' or '}' with Redis Cluster "
                "(the plugin adds the hash tags that keep a request's keys in one slot)"
            )


def _check_rule(max_requests: int, period: float, where: str) -> None:
    if max_requests < 1:
        raise ValueError(f"{where}max_requests: must be >= 1, got {max_requests}")
    if not 0 < period <= 10**9:
        raise ValueError(f"{where}period: must be > 0 seconds, got {period}")


def _key_spec(spec: str, key_type: str | None) -> tuple[KeyKind, tuple[str, ...]]:
    """Split the ``key`` setting into (kind, names), or raise ValueError."""
    if key_type is None:
        if spec == "remote_addr":
            return "addr", ()
        kind, sep, name = spec.partition(":")
        if sep and kind == "header" and _HEADER_NAME.match(name):
            return "header", (name.lower(),)
        if sep and kind == "var" and _VAR_NAME.match(name):
            return "var", (name,)
        raise ValueError(
            "key: expected 'remote_addr', 'header:<name>' or 'var:<name>' "
            f"(or set key_type), got {spec!r}"
        )
    if key_type == "var":
        name = spec.removeprefix("$")
        if not _VAR_NAME.match(name):
            raise ValueError(f"key: expected a variable name with key_type 'var', got {spec!r}")
        return ("addr", ()) if name == "remote_addr" else ("var", (name,))
    if key_type == "var_combination":
        names = tuple(dict.fromkeys(_VAR_REF.findall(spec)))
        if not names:
            raise ValueError(
                f"key: expected variables such as '$remote_addr $http_x_user' with key_type "
                f"'var_combination', got {spec!r}"
            )
        return "vars", names
    if not spec:
        raise ValueError("key: must not be empty with key_type 'constant'")
    return "const", ()


# --------------------------------------------------------------------------- where


class Topology(NamedTuple):
    """Where the counters live: routes with equal topologies share a client."""

    policy: Policy
    url: str | None  # single Redis given by redis_url
    addresses: tuple[tuple[str, int], ...]  # redis_host, the cluster seeds or the sentinels
    master_name: str | None
    username: str | None
    password: str | None
    database: int | None
    ssl: bool
    ssl_verify: bool
    ssl_ca_file: str | None
    sentinel_username: str | None
    sentinel_password: str | None

    def describe(self) -> str:
        """The topology for log lines and errors, never with a password."""
        if self.url is not None:
            return f"Redis {redacted(self.url)}"
        hosts = ",".join(_host_port(a) for a in self.addresses)
        if self.policy == "redis-cluster":
            return f"Redis Cluster {hosts}"
        if self.policy == "redis-sentinel":
            return f"Redis Sentinel master {self.master_name!r} (sentinels {hosts})"
        scheme = "rediss" if self.ssl else "redis"
        return f"Redis {scheme}://{hosts}/{self.database or 0}"


def _host_port(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(text: str, field: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{field}: expected 'host:port', got {text!r}")
    return host, int(port)


def _topology(conf: RedisLimitConfig) -> Topology:
    """The config's topology, or ValueError naming the field."""
    given = [
        name
        for name, value in (
            ("redis_url", conf.redis_url),
            ("redis_host", conf.redis_host),
            ("redis_cluster_nodes", conf.redis_cluster_nodes),
            ("redis_sentinels", conf.redis_sentinels),
        )
        if value is not None
    ]
    if not given:
        raise ValueError(
            "redis_url: required (or redis_host, redis_cluster_nodes with policy "
            "'redis-cluster', redis_sentinels with policy 'redis-sentinel')"
        )
    if len(given) > 1:
        raise ValueError(f"{given[0]}: give only one of {', '.join(given)}")
    where = given[0]
    policy: Policy = "redis"
    if where == "redis_cluster_nodes":
        policy = "redis-cluster"
    elif where == "redis_sentinels":
        policy = "redis-sentinel"
    if conf.policy is not None and conf.policy != policy:
        needs = {"redis": "redis_url or redis_host", "redis-cluster": "redis_cluster_nodes"}
        raise ValueError(
            f"policy: {conf.policy!r} needs {needs.get(conf.policy, 'redis_sentinels')}, "
            f"got {where}"
        )
    if conf.redis_port is not None and where != "redis_host":
        raise ValueError("redis_port: goes with redis_host")
    if conf.redis_master_name is not None and policy != "redis-sentinel":
        raise ValueError("redis_master_name: goes with redis_sentinels")
    for name in ("sentinel_username", "sentinel_password"):
        if getattr(conf, name) is not None and policy != "redis-sentinel":
            raise ValueError(f"{name}: goes with redis_sentinels")
    if conf.redis_database is not None and not 0 <= conf.redis_database <= 10**6:
        raise ValueError(f"redis_database: must be >= 0, got {conf.redis_database}")
    if conf.redis_database and policy == "redis-cluster":
        raise ValueError("redis_database: Redis Cluster has only database 0")

    url = conf.redis_url
    ssl = bool(conf.redis_ssl)
    username, password, database = conf.redis_username, conf.redis_password, conf.redis_database
    addresses: tuple[tuple[str, int], ...] = ()
    if url is not None:
        _check_url(url)
        parts = urlsplit(url)
        if conf.redis_ssl is not None:
            raise ValueError("redis_ssl: with redis_url, use a rediss:// URL for TLS")
        ssl = parts.scheme == "rediss"
        if (conf.redis_ssl_ca_file is not None or not conf.redis_ssl_verify) and not ssl:
            field = "redis_ssl_ca_file" if conf.redis_ssl_ca_file else "redis_ssl_verify"
            raise ValueError(f"{field}: needs TLS (a rediss:// redis_url)")
        if parts.username and username is not None:
            raise ValueError("redis_username: the user name is already in redis_url")
        if parts.password is not None and password is not None:
            raise ValueError("redis_password: the password is already in redis_url")
        if database is not None and parts.path.strip("/"):
            raise ValueError("redis_database: the database is already in redis_url")
    elif where == "redis_host":
        assert conf.redis_host is not None
        port = 6379 if conf.redis_port is None else conf.redis_port
        if not 0 < port < 65536:
            raise ValueError(f"redis_port: must be 1..65535, got {port}")
        addresses = ((conf.redis_host.strip("[]"), port),)
    else:
        seeds = conf.redis_cluster_nodes if policy == "redis-cluster" else conf.redis_sentinels
        assert seeds is not None
        if not seeds:
            raise ValueError(f"{where}: must list at least one 'host:port'")
        addresses = tuple(_address(s, f"{where}[{i}]") for i, s in enumerate(seeds))
        if policy == "redis-sentinel" and not conf.redis_master_name:
            raise ValueError("redis_master_name: required with redis_sentinels")
    if (conf.redis_ssl_ca_file is not None or not conf.redis_ssl_verify) and not ssl:
        field = "redis_ssl_ca_file" if conf.redis_ssl_ca_file else "redis_ssl_verify"
        raise ValueError(f"{field}: needs redis_ssl: true")
    return Topology(
        policy, url, addresses, conf.redis_master_name, username, password, database, ssl,
        conf.redis_ssl_verify, conf.redis_ssl_ca_file, conf.sentinel_username,
        conf.sentinel_password,
    )  # fmt: skip


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


# --------------------------------------------------------------------------- the parsed route


class Limit(NamedTuple):
    limit: int
    window: int  # microseconds (sliding) or milliseconds (fixed), as the script takes it
    suffix: str  # end of the rule's Redis key
    limit_text: str
    headers: tuple[str, str, str]  # X-...-RateLimit-Limit, -Remaining, -Reset


class Route(NamedTuple):
    """A parsed config plus what filter needs precomputed (not per request)."""

    conf: RedisLimitConfig
    topology: Topology
    key_kind: KeyKind
    key_names: tuple[str, ...]
    const_ident: str
    limits: tuple[Limit, ...]
    sliding: bool
    batched: bool
    legacy_key: bool  # one sliding rule: the key is <prefix>:<ident>, as before rules existed
    script_args: tuple[int, ...]  # per rule, what the script takes after ARGV[1]
    rejected_body: bytes

    @classmethod
    def of(cls, conf: RedisLimitConfig) -> Route:
        kind, names = _key_spec(conf.key, conf.key_type)
        batched = conf.sync_interval is not None and conf.sync_interval != -1
        sliding = (conf.window_type or ("fixed" if batched else "sliding")) == "sliding"
        if conf.rules is not None:
            rules = [(r.max_requests, r.period, r.header_prefix or str(i + 1))
                     for i, r in enumerate(conf.rules)]  # fmt: skip
            prefixed = True
        else:
            max_requests = 100 if conf.max_requests is None else conf.max_requests
            rules = [(max_requests, 60.0 if conf.period is None else conf.period, "")]
            prefixed = False
        limits = []
        for limit, period, prefix in rules:
            if sliding:
                window, suffix = max(1, round(period * 1e6)), f":sliding:{period:g}s"
            else:
                window, suffix = max(1, round(period * 1e3)), f":fixed:{period:g}s"
            start = f"X-{prefix}-RateLimit" if prefixed else "X-RateLimit"
            headers = (f"{start}-Limit", f"{start}-Remaining", f"{start}-Reset")
            limits.append(Limit(limit, window, suffix, str(limit), headers))
        if sliding:
            args: list[int] = []
            for item in limits:
                args += (item.limit, item.window)
        else:
            args = []
            for item in limits:
                args += (item.limit, item.window, 0)
        body = msgspec.json.encode({"error": conf.rejected_msg})
        const = f"const:{_short(conf.key)}" if kind == "const" else ""
        return cls(
            conf, _topology(conf), kind, names, const, tuple(limits), sliding, batched,
            sliding and len(limits) == 1, tuple(args), body,
        )  # fmt: skip

    def redis_keys(self, ident: str) -> tuple[str, ...]:
        prefix = self.conf.key_prefix
        if self.legacy_key:
            return (f"{prefix}:{ident}",)
        # The hash tag puts every key of a request in one cluster slot (the
        # script touches them all); different clients spread over the masters.
        base = f"{prefix}:{{{ident}}}"
        return tuple(base + item.suffix for item in self.limits)


def _short(value: str) -> str:
    if len(value) > MAX_KEY_VALUE:
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return value


class Verdict(NamedTuple):
    """What Redis (or the local batch) decided, with each rule's numbers."""

    admitted: bool
    counts: Sequence[int]  # per rule, after this request
    resets: Sequence[float]  # per rule, seconds until a slot frees / the window ends
    remote: bool = True  # Redis answered (False: decided from the local batch)


# --------------------------------------------------------------------------- clients


class RedisUnavailable(Exception):
    """A batch synchronisation this request waited for failed."""


class _Backend:
    """One Redis topology of this worker: its client, health and counters."""

    def __init__(self, topology: Topology, timeout: float) -> None:
        from redis.exceptions import NoScriptError, RedisClusterException, RedisError

        self.topology = topology
        self.description = topology.describe()
        self.client: Any = None
        self.sentinel: Sentinel | None = None
        self._make(topology, timeout)
        self.shas = {
            text: hashlib.sha1(text.encode()).hexdigest() for text in (SLIDING_LOG, FIXED_WINDOW)
        }
        self.no_script: type[BaseException] = NoScriptError
        # RedisClusterException: no node reachable, a slot not covered (a
        # master down with no replica to promote).
        self.errors: tuple[type[BaseException], ...] = (
            RedisError, RedisClusterException, OSError, TimeoutError, RedisUnavailable,
        )  # fmt: skip
        self.health = OutageLog(
            log, f"redis-limit: {self.description}", CONSEQUENCE, plugin="redis-limit"
        )
        self.outages = 0  # outages seen by this worker
        self.failed_requests = 0  # requests that met Redis unavailable (fail_open decided)
        self.sync_errors = 0  # batch synchronisations that failed (retried later)
        self.last_failure = 0.0
        self.quiet = CLUSTER_QUIET_S if topology.policy == "redis-cluster" else 0.0

    def _make(self, t: Topology, timeout: float) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.connection import SSLConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # No retries: a retried script could count one request twice, and
            # the route's timeout bounds the whole call anyway. (Cluster
            # redirections, MOVED and ASK, are followed all the same.)
            "retry": Retry(NoBackoff(), 0),
            # Shows in CLIENT LIST which runner worker holds a connection.
            "client_name": f"apisix-runner-{os.getpid()}",
        }
        auth: dict[str, Any] = {}
        if t.username is not None:
            auth["username"] = t.username
        if t.password is not None:
            auth["password"] = t.password
        tls: dict[str, Any] = {}
        if t.ssl:
            tls["ssl_cert_reqs"] = "required" if t.ssl_verify else "none"
            tls["ssl_check_hostname"] = t.ssl_verify
            if t.ssl_ca_file is not None:
                tls["ssl_ca_certs"] = t.ssl_ca_file
        if t.policy == "redis":
            pool_options = {"max_connections": POOL_SIZE, "timeout": timeout, **common, **auth}
            if t.url is not None:
                if t.database is not None:
                    pool_options["db"] = t.database
                pool = BlockingConnectionPool.from_url(t.url, **pool_options, **tls)
            else:
                (host, port), *_ = t.addresses
                if t.ssl:
                    pool_options["connection_class"] = SSLConnection
                pool = BlockingConnectionPool(
                    host=host, port=port, db=t.database or 0, **pool_options, **tls
                )
            self.client = Redis(connection_pool=pool)
        elif t.policy == "redis-cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            self.client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in t.addresses],
                # Keys of a master that is down fail; the others keep working.
                require_full_coverage=False,
                max_connections=4 * POOL_SIZE,
                ssl=t.ssl,
                **common, **auth, **tls,
            )  # fmt: skip
        else:
            from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

            class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
                """A Sentinel-managed pool that waits for a free connection."""

            sentinel_options: dict[str, Any] = dict(common)
            if t.sentinel_username is not None:
                sentinel_options["username"] = t.sentinel_username
            if t.sentinel_password is not None:
                sentinel_options["password"] = t.sentinel_password
            if t.ssl:
                sentinel_options.update(ssl=True, **tls)
            self.sentinel = Sentinel(list(t.addresses), sentinel_kwargs=sentinel_options)
            assert t.master_name is not None
            self.client = self.sentinel.master_for(
                t.master_name,
                connection_pool_class=BlockingSentinelPool,
                max_connections=POOL_SIZE,
                timeout=timeout,
                db=t.database or 0,
                ssl=t.ssl,
                **common, **auth, **tls,
            )  # fmt: skip

    async def run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """EVALSHA, or EVAL where this node has not seen the script yet (a new
        node, a restart, a promoted replica): never a second EVALSHA."""
        client = self.client
        try:
            reply = await cast(
                "Awaitable[Any]", client.evalsha(self.shas[script], len(keys), *keys, *args)
            )
        except self.no_script:
            reply = await cast("Awaitable[Any]", client.eval(script, len(keys), *keys, *args))
        return cast("list[Any]", reply)

    def failed(self, exc: BaseException) -> None:
        if not self.health.failures:
            self.outages += 1
        self.failed_requests += 1
        self.last_failure = time.monotonic()
        self.health.failed(describe(exc))

    def answered(self) -> None:
        """Redis answered: the end of an outage, if there is one (for a
        cluster, once no request has failed for a while)."""
        if self.health.failures and time.monotonic() - self.last_failure >= self.quiet:
            self.health.succeeded()

    async def close(self) -> None:
        client = self.client
        if self.topology.policy == "redis":
            await client.aclose()
            await client.connection_pool.aclose()
        elif self.topology.policy == "redis-cluster":
            await client.aclose()
        else:
            await client.aclose()
            await client.connection_pool.disconnect()
            assert self.sentinel is not None
            await self.sentinel.aclose()


class _Batch:
    """Local counts of one key (all its rules) in this worker, for sync_interval.

    ``counts``: each rule's count in Redis at the last synchronisation;
    ``local``: admitted here since and not yet in ``counts``; ``pending``: of
    those, not yet sent; ``ends``: when each rule's window ends (monotonic)."""

    __slots__ = ("backend", "busy", "counts", "ends", "local", "next_sync", "pending", "route")

    def __init__(self, route: Route, backend: _Backend) -> None:
        n = len(route.limits)
        self.route = route
        self.backend = backend
        self.counts = [0] * n
        self.local = [0] * n
        self.pending = [0] * n
        self.ends = [0.0] * n
        self.next_sync = 0.0
        # Set while a synchronisation is under way; its result is the error,
        # or None.
        self.busy: asyncio.Future[BaseException | None] | None = None

    def fresh(self, now: float) -> bool:
        return all(end > now for end in self.ends)

    def drop_ended(self, now: float) -> list[int]:
        """Forget local counts of windows that ended; return what to send."""
        for i, end in enumerate(self.ends):
            if end <= now:
                self.local[i] = self.pending[i] = 0
        sent, self.pending = self.pending, [0] * len(self.pending)
        return sent

    def synced(self, sent: list[int], reply: list[Any], now: float) -> None:
        for i in range(len(self.counts)):
            self.counts[i] = int(reply[2 * i + 1])
            self.local[i] = max(0, self.local[i] - sent[i])
            self.ends[i] = now + int(reply[2 * i + 2]) / 1e3
        self.next_sync = now + (self.route.conf.sync_interval or 0)

    def admit(self, route: Route, now: float) -> Verdict:
        counts = [c + n for c, n in zip(self.counts, self.local, strict=True)]
        resets = [end - now for end in self.ends]
        if any(count >= item.limit for count, item in zip(counts, route.limits, strict=True)):
            return Verdict(False, counts, resets, remote=False)
        for i in range(len(counts)):
            self.local[i] += 1
            self.pending[i] += 1
            counts[i] += 1
        return Verdict(True, counts, resets, remote=False)


def _args_with(route: Route, want: int, adds: Sequence[int]) -> list[int]:
    args = [want, *route.script_args]
    for i, add in enumerate(adds):
        args[3 * i + 3] = add
    return args


class _WorkerState:
    """Per-process, per-event-loop state, created on first use after the fork."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.backends: dict[Topology, _Backend] = {}
        # Members of the sorted sets must be unique across workers and nodes:
        # a random per-process prefix and a counter (never the time alone).
        self.nonce = os.urandom(8).hex()
        self.counter = itertools.count()
        self.batches: dict[tuple[str, ...], _Batch] = {}
        self.flusher: asyncio.Task[None] | None = None
        self.tick = 1.0

    def current(self) -> bool:
        # A forked worker runs its own event loop: the loop alone tells (no
        # getpid() system call per request).
        return self.loop is asyncio.get_running_loop()

    def backend(self, route: Route) -> _Backend:
        # One client per topology, whatever the routes' other settings; each
        # call is still bounded by its own route's timeout.
        backend = self.backends.get(route.topology)
        if backend is None:
            backend = self.backends[route.topology] = _Backend(route.topology, route.conf.timeout)
        return backend

    def member(self) -> str:
        return f"{self.nonce}:{next(self.counter)}"

    async def check(self, route: Route, backend: _Backend, keys: Sequence[str]) -> Verdict:
        """One exact round trip: the script decides."""
        if route.sliding:
            reply = await backend.run(SLIDING_LOG, keys, (self.member(), *route.script_args))
            scale = 1e6
        else:
            reply = await backend.run(FIXED_WINDOW, keys, (1, *route.script_args))
            scale = 1e3
        n = len(route.limits)
        counts = [int(reply[2 * i + 1]) for i in range(n)]
        resets = [int(reply[2 * i + 2]) / scale for i in range(n)]
        return Verdict(bool(int(reply[0])), counts, resets)

    # -- sync_interval: local counts, added to Redis in batches

    def local(self, route: Route, backend: _Backend, keys: tuple[str, ...]) -> Verdict | None:
        """The decision of this worker's batch for ``keys`` while its windows
        are known; None when Redis must decide (first request, a window ended,
        a synchronisation under way)."""
        batch = self.batches.get(keys)
        if batch is None or batch.busy is not None:
            return None
        now = time.monotonic()
        if not batch.fresh(now):
            return None
        batch.route, batch.backend = route, backend
        return batch.admit(route, now)

    async def batched(self, route: Route, backend: _Backend, keys: tuple[str, ...]) -> Verdict:
        """Synchronise this key at once and let Redis decide, or wait for the
        synchronisation under way and decide locally."""
        if self.flusher is None:
            self.flusher = self.loop.create_task(self._flush_forever())
        interval = route.conf.sync_interval or 1.0
        if interval < self.tick:
            self.tick = interval
        while True:
            batch = self.batches.get(keys)
            now = time.monotonic()
            if batch is not None:
                batch.route, batch.backend = route, backend
                if batch.fresh(now):
                    return batch.admit(route, now)
                if batch.busy is not None:
                    error = await asyncio.shield(batch.busy)
                    if isinstance(error, asyncio.CancelledError):
                        raise RedisUnavailable("synchronisation timed out")
                    if error is not None:
                        raise RedisUnavailable(describe(error))
                    continue
            else:
                batch = self.batches[keys] = _Batch(route, backend)
            return await self._sync(keys, batch, want=True)

    async def _sync(self, keys: tuple[str, ...], batch: _Batch, want: bool) -> Verdict:
        busy = batch.busy = self.loop.create_future()
        sent = batch.drop_ended(time.monotonic())
        route = batch.route
        error: BaseException | None = None
        try:
            reply = await batch.backend.run(FIXED_WINDOW, keys, _args_with(route, int(want), sent))
        except BaseException as exc:
            error = exc
            batch.pending = [p + s for p, s in zip(batch.pending, sent, strict=True)]
            raise
        finally:
            batch.busy = None
            busy.set_result(error)
        now = time.monotonic()
        batch.synced(sent, reply, now)
        n = len(route.limits)
        counts = [int(reply[2 * i + 1]) for i in range(n)]
        return Verdict(bool(int(reply[0])), counts, [end - now for end in batch.ends])

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.flush(time.monotonic())
            except Exception:  # a bug here must not end the synchronisation
                log.exception("redis-limit: synchronising the local counts failed")

    async def flush(self, now: float, final: bool = False) -> None:
        """Send the local counts of every batch whose sync_interval has passed."""
        due = []
        for keys, batch in list(self.batches.items()):
            if batch.busy is not None:
                continue
            if not any(batch.pending):
                if not batch.fresh(now):
                    del self.batches[keys]  # its windows ended; nothing to send
                continue
            if final or now >= batch.next_sync:
                due.append(self._flush_one(keys, batch))
        if due:
            await asyncio.gather(*due)

    async def _flush_one(self, keys: tuple[str, ...], batch: _Batch) -> None:
        backend = batch.backend
        try:
            async with asyncio.timeout(batch.route.conf.timeout):
                await self._sync(keys, batch, want=False)
        except backend.errors as exc:
            # Kept and sent with the next synchronisation; requests that need
            # Redis meanwhile report the outage themselves.
            backend.sync_errors += 1
            batch.next_sync = time.monotonic() + (batch.route.conf.sync_interval or 1.0)
            log.debug("redis-limit: synchronisation with %s failed: %s",
                      backend.description, describe(exc))  # fmt: skip
        else:
            backend.answered()

    async def close(self) -> None:
        flusher, self.flusher = self.flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self.flush(time.monotonic(), final=True)  # the last batches, bounded
        self.batches.clear()
        for backend in self.backends.values():
            try:
                await backend.close()
            except Exception as exc:  # closing a client of a Redis that is gone
                log.debug("redis-limit: closing %s: %s", backend.description, describe(exc))
        self.backends.clear()


# --------------------------------------------------------------------------- the plugin


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

    def backends(self) -> list[_Backend]:
        """This worker's clients (one per topology used so far)."""
        return [] if self._state is None else list(self._state.backends.values())

    async def shutdown(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.current():
            await state.close()

    async def filter(self, route: Route, request: Request, response: Response) -> None:
        conf = route.conf
        kind = route.key_kind
        if kind == "addr":  # the common case, without a coroutine
            keys = route.redis_keys(f"addr:{request.src_ip}")
        else:
            keys = route.redis_keys(await _identity(route, request))
        state = self._worker()
        backend = state.backends.get(route.topology) or state.backend(route)
        if route.batched:
            verdict = state.local(route, backend, keys)
            if verdict is not None:  # decided here, no Redis and no timer
                _answer(route, response, verdict)
                return
        try:
            async with asyncio.timeout(conf.timeout):
                if route.batched:
                    verdict = await state.batched(route, backend, keys)
                else:
                    verdict = await state.check(route, backend, keys)
        except backend.errors as exc:
            backend.failed(exc)
            if not conf.fail_open:
                response.stop(503, UNAVAILABLE_BODY, JSON)
            return
        if verdict.remote and backend.health.failures:
            backend.answered()
        _answer(route, response, verdict)


async def _identity(route: Route, request: Request) -> str:
    """What this request is counted under (the Redis key without prefix and rule).

    A missing or empty header or variable falls back to the client address,
    as APISIX's own limit-count does: leaving the header out must not be a way
    around the limit."""
    kind = route.key_kind
    if kind == "addr":
        return f"addr:{request.src_ip}"
    if kind == "const":
        return route.const_ident
    names = route.key_names
    if kind == "header":
        value = request.headers.get(names[0])
    elif kind == "var":
        value = await request.var(names[0])
    else:
        value = await _combination(route, request)
    if not value:
        return f"addr:{request.src_ip}"
    return f"{kind}:{names[0] if kind != 'vars' else route.conf.key}:{_short(value)}"


async def _combination(route: Route, request: Request) -> str | None:
    """``key`` with each ``$name`` replaced by its value, all asked in one go
    (the runner sends the questions back to back); None if all are empty."""
    names = route.key_names
    asked = [name for name in names if name != "remote_addr"]
    if len(asked) == 1:
        values = [await request.var(asked[0])]
    else:
        values = list(await asyncio.gather(*(request.var(name) for name in asked)))
    found = dict(zip(asked, values, strict=True))
    if "remote_addr" in names:
        found["remote_addr"] = request.src_ip
    if not any(found.values()):
        return None
    return _VAR_REF.sub(lambda m: found.get(m.group(1)) or "", route.conf.key)


def _answer(route: Route, response: Response, verdict: Verdict) -> None:
    limits = route.limits
    blocked: list[float] = []
    headers = response.headers
    show = route.conf.show_limit_quota_header
    for item, count, reset in zip(limits, verdict.counts, verdict.resets, strict=True):
        if count >= item.limit and not verdict.admitted:
            blocked.append(reset)
        if show:
            limit_name, remaining_name, reset_name = item.headers
            headers[limit_name] = item.limit_text
            headers[remaining_name] = str(max(0, item.limit - count))
            headers[reset_name] = str(max(0, math.ceil(reset)))
    if not verdict.admitted:
        headers["Retry-After"] = str(max(1, math.ceil(max(blocked, default=1.0))))
        response.stop(route.conf.rejected_code, route.rejected_body, JSON)

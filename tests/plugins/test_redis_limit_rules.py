"""redis-limit's rules, keys and windows against a real redis-server: several
limits per route, limit-count's key types, fixed windows, the defaults of the
Python plugin guide, the local batches of sync_interval, and config errors."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from runner import ConfError
from runner.bundled_plugins.redis_limit import RedisLimit
from runner.testing import HTTPRequest, PluginTester, ReqCallResult
from runner.testing.pytest_plugin import RunnerFactory
from tests.plugins.results import allowed, headers_of, status

if TYPE_CHECKING:  # conftest is pytest's to import; only its type is used here
    from conftest import RedisServer

_T = TypeVar("_T")


def arun(coro: Coroutine[Any, Any, _T], timeout: float = 20.0) -> _T:
    async def bounded() -> _T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def route(url: str, **opts: Any) -> list[tuple[str, dict[str, Any]]]:
    opts.setdefault("key_prefix", f"t-{uuid.uuid4().hex}")
    return [("redis-limit", {"redis_url": url, **opts})]


def script_calls(server: RedisServer) -> int:
    """EVALSHA and EVAL commands the server has run so far."""
    with server.client() as r:
        stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


# --------------------------------------------------------------------------- defaults


def test_only_redis_url_gives_100_per_minute(redis_server: RedisServer) -> None:
    """The Python plugin guide's readers configure only redis_url."""
    conf = [("redis-limit", {"redis_url": redis_server.url})]
    with redis_server.client() as r:
        r.delete("apisix-runner:redis-limit:addr:192.0.2.77")
    with PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        results = [t.call(chain, HTTPRequest(src_ip="192.0.2.77")) for _ in range(101)]
    assert [allowed(r) for r in results] == [True] * 100 + [False]
    assert headers_of(results[0]) == {
        "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99", "X-RateLimit-Reset": "60",
    }  # fmt: skip
    assert status(results[-1]) == 429 and headers_of(results[-1])["Retry-After"] == "60"
    with redis_server.client() as r:
        assert r.zcard("apisix-runner:redis-limit:addr:192.0.2.77") == 100
        r.delete("apisix-runner:redis-limit:addr:192.0.2.77")


# --------------------------------------------------------------------------- rules


def test_several_rules_all_must_have_room(redis_server: RedisServer) -> None:
    """3 per 0.5 s and 5 per minute: the short rule stops the 4th request, the
    long one the 6th; a rejected request is recorded in neither."""
    conf = route(redis_server.url, rules=[
        {"max_requests": 3, "period": 0.5},
        {"max_requests": 5, "period": 60, "header_prefix": "Minute"},
    ])  # fmt: skip
    with PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        start = time.monotonic()
        first = [t.call(chain, HTTPRequest()) for _ in range(4)]
        time.sleep(max(0.0, start + 0.55 - time.monotonic()))
        second = [t.call(chain, HTTPRequest()) for _ in range(3)]
    assert [allowed(r) for r in first] == [True, True, True, False]
    assert headers_of(first[0]) == {
        "X-1-RateLimit-Limit": "3", "X-1-RateLimit-Remaining": "2", "X-1-RateLimit-Reset": "1",
        "X-Minute-RateLimit-Limit": "5", "X-Minute-RateLimit-Remaining": "4",
        "X-Minute-RateLimit-Reset": "60",
    }  # fmt: skip
    blocked = headers_of(first[3])
    assert blocked["Retry-After"] == "1"  # the short rule frees a slot first
    assert blocked["X-Minute-RateLimit-Remaining"] == "2"  # not counted
    assert [allowed(r) for r in second] == [True, True, False]
    late = headers_of(second[2])
    assert late["X-1-RateLimit-Remaining"] == "1" and late["X-Minute-RateLimit-Remaining"] == "0"
    assert 59 <= int(late["Retry-After"] or 0) <= 60  # the minute rule is the one that blocks


def test_rules_keys_share_one_hash_slot(redis_server: RedisServer) -> None:
    conf = route(redis_server.url, key="header:X-Api-Key", rules=[
        {"max_requests": 2, "period": 1}, {"max_requests": 9, "period": 3600},
    ])  # fmt: skip
    prefix = conf[0][1]["key_prefix"]
    with PluginTester(RedisLimit) as t:
        t.call(conf, HTTPRequest(headers=[("x-api-key", "k1")]))
    with redis_server.client() as r:
        keys = sorted(r.keys(f"{prefix}:*"))
    tag = f"{prefix}:{{header:x-api-key:k1}}"
    assert keys == [f"{tag}:sliding:1s", f"{tag}:sliding:3600s"]


def test_fixed_window(redis_server: RedisServer) -> None:
    """A counter that starts with the first request and expires with its
    window; X-RateLimit-Reset counts the window down."""
    conf = route(redis_server.url, max_requests=3, period=0.6, window_type="fixed")
    prefix = conf[0][1]["key_prefix"]
    with PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        first = [t.call(chain, HTTPRequest()) for _ in range(4)]
        with redis_server.client() as r:
            key = f"{prefix}:{{addr:127.0.0.1}}:fixed:0.6s"
            assert r.get(key) == "3" and 0 < r.pttl(key) <= 600
        time.sleep(0.65)
        again = [t.call(chain, HTTPRequest()) for _ in range(4)]
    for batch in (first, again):
        assert [allowed(r) for r in batch] == [True, True, True, False]
        assert [headers_of(r)["X-RateLimit-Remaining"] for r in batch] == ["2", "1", "0", "0"]
        assert headers_of(batch[3])["Retry-After"] == "1"
        assert headers_of(batch[0])["X-RateLimit-Reset"] == "1"


def test_quota_headers_can_be_hidden(redis_server: RedisServer) -> None:
    conf = route(redis_server.url, max_requests=1, period=60, show_limit_quota_header=False)
    with PluginTester(RedisLimit) as t:
        ok, denied = (t.call(conf, HTTPRequest()) for _ in range(2))
    assert headers_of(ok) == {}
    assert headers_of(denied) == {"Retry-After": "60", "Content-Type": "application/json"}


# --------------------------------------------------------------------------- keys


def test_var_combination_asks_for_all_variables_at_once(redis_server: RedisServer) -> None:
    conf = route(redis_server.url, max_requests=1, period=60, key_type="var_combination",
                 key="$consumer_name $http_x_user")  # fmt: skip
    prefix = conf[0][1]["key_prefix"]

    def req(consumer: str | None, user: str | None, ip: str = "10.1.1.1") -> HTTPRequest:
        values = {"consumer_name": consumer, "http_x_user": user}
        return HTTPRequest(src_ip=ip, vars={k: v for k, v in values.items() if v is not None})

    with PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        first = t.call(chain, req("alice", "u1"))
        second = t.call(chain, req("alice", "u1", ip="10.9.9.9"))
        other = t.call(chain, req("alice", "u2"))
        half = t.call(chain, req(None, "u1"))
        anonymous = [t.call(chain, req(None, None, ip="10.2.2.2")) for _ in range(2)]
    assert sorted(first.extra_info) == [("var", "consumer_name"), ("var", "http_x_user")]
    assert [allowed(first), allowed(second), allowed(other), allowed(half)] == [
        True, False, True, True,
    ]  # fmt: skip
    assert [allowed(r) for r in anonymous] == [True, False]  # no value: the client address
    with redis_server.client() as r:
        keys = set(r.keys(f"{prefix}:*"))
    assert f"{prefix}:vars:$consumer_name $http_x_user:alice u1" in keys
    assert f"{prefix}:vars:$consumer_name $http_x_user: u1" in keys
    assert f"{prefix}:addr:10.2.2.2" in keys


def test_limit_count_key_types(redis_server: RedisServer) -> None:
    """key_type var with remote_addr needs no round trip; constant is one
    counter for every client."""
    by_addr = route(redis_server.url, max_requests=1, period=60, key_type="var",
                    key="remote_addr")  # fmt: skip
    by_var = route(redis_server.url, max_requests=1, period=60, key_type="var",
                   key="$http_x_tenant")  # fmt: skip
    shared = route(redis_server.url, max_requests=2, period=60, key_type="constant", key="all")
    with PluginTester(RedisLimit) as t:
        a = [t.call(by_addr, HTTPRequest(src_ip=ip)) for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2")]
        v = t.call(by_var, HTTPRequest(vars={"http_x_tenant": "t1"}))
        c = [t.call(shared, HTTPRequest(src_ip=f"10.3.0.{i}")) for i in range(3)]
    assert [allowed(r) for r in a] == [True, False, True]
    assert a[0].extra_info == [] and v.extra_info == [("var", "http_x_tenant")]
    assert [allowed(r) for r in c] == [True, True, False]


# --------------------------------------------------------------------------- sync_interval


def test_sync_interval_counts_locally_and_shares_through_redis(redis_server: RedisServer) -> None:
    """One worker: its local count is exact (10 of 15) with a handful of
    round trips; another worker sees those counts after the next
    synchronisation and admits nothing more."""
    conf = route(redis_server.url, max_requests=10, period=5, sync_interval=0.05)
    prefix = conf[0][1]["key_prefix"]

    async def scenario() -> tuple[list[ReqCallResult], list[ReqCallResult], int, int]:
        async with PluginTester(RedisLimit) as one, PluginTester(RedisLimit) as two:
            chain_one, chain_two = one.prepare(conf), two.prepare(conf)
            before = script_calls(redis_server)
            first = [await one.acall(chain_one, HTTPRequest()) for _ in range(15)]
            calls = script_calls(redis_server) - before
            await asyncio.sleep(0.15)  # one synchronisation at least
            with redis_server.client() as r:
                stored = int(r.get(f"{prefix}:{{addr:127.0.0.1}}:fixed:5s") or 0)
            second = [await two.acall(chain_two, HTTPRequest()) for _ in range(3)]
            return first, second, calls, stored

    first, second, calls, stored = arun(scenario())
    assert [allowed(r) for r in first] == [True] * 10 + [False] * 5
    assert [headers_of(r)["X-RateLimit-Remaining"] for r in first[:3]] == ["9", "8", "7"]
    assert calls <= 2, "one round trip for the first request, the rest counted locally"
    assert stored == 10
    assert not any(allowed(r) for r in second)


def test_sync_interval_over_admission_across_two_workers(
    runner_factory: RunnerFactory, redis_server: RedisServer
) -> None:
    """Two workers, 20 per window, 100 requests at once: each worker admits
    what it saw left at its first synchronisation, so between 20 and 2 x 20
    pass (the documented bound: workers x max_requests for a burst inside one
    sync_interval). After a synchronisation the limit holds: none more."""
    from test_redis_limit import _clients_on_both_workers, _conf_string

    running = runner_factory(workers=2)
    conf = _conf_string(route(redis_server.url, max_requests=20, period=30, sync_interval=0.1))
    warmup = _conf_string(route(redis_server.url, max_requests=1000, period=60))

    async def scenario() -> tuple[int, int, int]:
        clients = await _clients_on_both_workers(running, redis_server, warmup)
        try:
            tokens = [await c.prepare_conf(conf, key="route#batched") for c in clients]

            async def burst(n: int) -> int:
                calls = [clients[i % len(clients)].call(tokens[i % len(clients)], HTTPRequest())
                         for i in range(n)]  # fmt: skip
                return sum(allowed(r) for r in await asyncio.gather(*calls))

            before = script_calls(redis_server)
            admitted = await burst(100)
            await asyncio.sleep(0.35)
            later = await burst(40)
            return admitted, later, script_calls(redis_server) - before
        finally:
            for c in clients:
                await c.close()

    admitted, later, calls = arun(scenario())
    print(f"\nsync_interval 0.1 s, 2 workers, limit 20: {admitted} of 100 admitted, "
          f"then {later} of 40; {calls} Redis scripts for 140 requests")  # fmt: skip
    assert 20 <= admitted <= 40
    assert later == 0
    assert calls < 30


# --------------------------------------------------------------------------- clients


def test_routes_naming_the_same_redis_share_one_client(redis_server: RedisServer) -> None:
    plugin = RedisLimit()
    with PluginTester(plugin) as t:
        t.call(route(redis_server.url, max_requests=5, period=1), HTTPRequest())
        t.call(route(redis_server.url, max_requests=50, period=60, timeout=0.2), HTTPRequest())
        t.call(route(redis_server.url, rules=[{"max_requests": 1, "period": 1}]), HTTPRequest())
        assert len(plugin.backends()) == 1
        host = [("redis-limit", {"redis_host": "127.0.0.1", "redis_port": redis_server.port})]
        t.call(host, HTTPRequest())
        assert len(plugin.backends()) == 2  # another way to name it: another client
    assert plugin.backends() == []


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rules": []}, "rules: must list at least one rule"),
        ({"rules": [{"max_requests": 1, "period": 1}], "max_requests": 5}, "rules: give either"),
        ({"rules": [{"max_requests": 0, "period": 1}]}, r"rules\[0\]\.max_requests"),
        (
            {"rules": [{"max_requests": 1, "period": 1}, {"max_requests": 2, "period": 1}]},
            "same period",
        ),
        ({"rules": [{"max_requests": 1, "period": 1, "count": 3}]}, "count"),
        ({"window_type": "leaky"}, "window_type"),
        ({"sync_interval": 0}, "sync_interval"),
        ({"sync_interval": 0.5, "window_type": "sliding"}, "sync_interval: .* 'fixed'"),
        ({"key_type": "var", "key": "a-b"}, "key: expected a variable name"),
        ({"key_type": "var_combination", "key": "remote_addr"}, "key: expected variables"),
        ({"key_type": "constant", "key": ""}, "key: must not be empty"),
        ({"key_type": "header"}, "key_type"),
        ({"policy": "redis-cluster"}, "policy: 'redis-cluster' needs redis_cluster_nodes"),
        ({"policy": "local"}, "policy"),
        ({"redis_cluster_nodes": ["h:1"]}, "give only one of redis_url, redis_cluster_nodes"),
        ({"redis_port": 6380}, "redis_port: goes with redis_host"),
        ({"redis_master_name": "m"}, "redis_master_name: goes with redis_sentinels"),
        ({"redis_ssl": True}, "redis_ssl: with redis_url, use a rediss:// URL"),
        ({"redis_ssl_ca_file": "/ca.pem"}, "redis_ssl_ca_file: needs TLS"),
        ({"redis_password": "x", "redis_url": "redis://:y@h:1/0"}, "already in redis_url"),
        ({"redis_database": 2, "redis_url": "redis://h:1/3"}, "database is already"),
        ({"show_limit_quota_header": "yes"}, "show_limit_quota_header"),
    ],
)
def test_bad_config_names_the_field(change: dict[str, Any], message: str) -> None:
    conf = {"redis_url": "redis://127.0.0.1:6379/0", **change}
    with pytest.raises(ConfError, match=message):
        PluginTester(RedisLimit).prepare([("redis-limit", conf)])


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"redis_cluster_nodes": []}, "redis_cluster_nodes: must list at least one"),
        ({"redis_cluster_nodes": ["10.0.0.1"]}, r"redis_cluster_nodes\[0\]: expected 'host:port'"),
        ({"redis_cluster_nodes": ["h:1", "h:70000"]}, r"redis_cluster_nodes\[1\]"),
        ({"redis_cluster_nodes": ["h:1"], "redis_database": 1}, "only database 0"),
        ({"redis_cluster_nodes": ["h:1"], "key_prefix": "a{b}"}, "key_prefix: must not contain"),
        ({"redis_cluster_nodes": ["h:1"], "policy": "redis-sentinel"}, "needs redis_sentinels"),
        ({"redis_sentinels": ["h:26379"]}, "redis_master_name: required"),
        ({"redis_host": "h", "redis_port": 0}, "redis_port: must be 1..65535"),
        ({"redis_host": "h", "redis_ssl_verify": False}, "redis_ssl_verify: needs redis_ssl"),
        ({"redis_host": "h", "sentinel_password": "x"}, "sentinel_password: goes with"),
    ],
)
def test_bad_topology_names_the_field(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfError, match=message):
        PluginTester(RedisLimit).prepare([("redis-limit", conf)])


def test_topologies_are_described_without_passwords() -> None:
    plugin = RedisLimit()
    described = [
        plugin.parse_conf(json.dumps(conf)).topology.describe()
        for conf in (
            {"redis_cluster_nodes": ["10.0.0.1:7000", "[::1]:7001"], "redis_password": "s3cret"},
            {"redis_sentinels": ["10.0.0.5:26379"], "redis_master_name": "m",
             "redis_password": "s3cret", "sentinel_password": "s3cret"},
            {"redis_host": "10.0.0.9", "redis_ssl": True, "redis_password": "s3cret"},
            {"redis_url": "rediss://u:s3cret@10.0.0.9:6380/2"},
        )
    ]  # fmt: skip
    assert described == [
        "Redis Cluster 10.0.0.1:7000,[::1]:7001",
        "Redis Sentinel master 'm' (sentinels 10.0.0.5:26379)",
        "Redis rediss://10.0.0.9:6379/0",
        "Redis rediss://u:***@10.0.0.9:6380/2",
    ]

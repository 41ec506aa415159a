"""redis-limit on Redis Cluster, Sentinel and TLS with ACL users, with real
servers started on loopback ports (tests/plugins/redis_topologies.py):
exact limits across two runner workers and three masters, a Sentinel master
killed under load, a cluster master killed and its replica promoted, and
authentication errors that name the Redis but never the password."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from runner.bundled_plugins.redis_limit import RedisLimit
from runner.testing import Client, HTTPRequest, PluginTester, ReqCallResult
from runner.testing.pytest_plugin import RunnerFactory, RunningRunner
from tests.plugins.results import allowed, headers_of, status

if TYPE_CHECKING:  # conftest and its helpers are pytest's to import; types only here
    from redis_topologies import Cluster, RedisProcess, SentinelSetup, TlsRedis

_T = TypeVar("_T")
LOGGER = "runner.plugins.redis-limit"
MASTER_NAME = "mymaster"


def arun(coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    async def bounded() -> _T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def conf_of(**opts: Any) -> list[tuple[str, str]]:
    import json

    opts.setdefault("key_prefix", f"t-{uuid.uuid4().hex}")
    return [("redis-limit", json.dumps(opts))]


def decoded(conf: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    import json

    return [(name, json.loads(value)) for name, value in conf]


async def clients_on_workers(
    running: RunningRunner, nodes: Sequence[RedisProcess], warmup: list[tuple[str, str]],
    want: int = 2,
) -> list[Client]:  # fmt: skip
    """Open connections (each stays with one worker) until ``nodes`` show
    Redis connections of ``want`` worker processes."""
    clients: list[Client] = []
    for _ in range(40):
        client = await running.client()
        clients.append(client)
        token = await client.prepare_conf(warmup)
        await client.call(token, HTTPRequest(src_ip="192.0.2.1"))
        names: set[str] = set()
        for node in nodes:
            with node.client() as r:
                names |= {c["name"] for c in r.client_list()}
        names = {n for n in names if n.startswith("apisix-runner-")}
        names.discard(f"apisix-runner-{os.getpid()}")  # unit tests' connections
        if len(names) >= want and len(clients) >= 6:
            return clients
    for client in clients:
        await client.close()
    raise AssertionError(f"the requests never reached {want} workers")


async def close_all(clients: Sequence[Client]) -> None:
    for client in clients:
        await client.close()


# --------------------------------------------------------------------------- cluster


def test_cluster_exact_across_two_workers_and_three_masters(
    runner_factory: RunnerFactory, redis_cluster: Cluster
) -> None:
    """9 API keys, 3 on each master; 12 concurrent requests per key through
    two workers: exactly 5 pass for every key. Two rules per route, so every
    request's script touches two keys, which must share a slot."""
    running = runner_factory(workers=2)
    prefix = f"t-{uuid.uuid4().hex}"
    base = {"redis_cluster_nodes": redis_cluster.seeds, "key": "header:X-Api-Key",
            "key_prefix": prefix}  # fmt: skip
    conf = conf_of(**base, rules=[{"max_requests": 5, "period": 60},
                                  {"max_requests": 1000, "period": 3600}])  # fmt: skip
    masters = redis_cluster.master_ports()
    assert len(masters) == 3
    by_master: dict[int, list[str]] = {m: [] for m in masters}
    n = 0
    while any(len(v) < 3 for v in by_master.values()):
        value = f"key-{n}"
        n += 1
        master = redis_cluster.master_of(f"{prefix}:{{header:x-api-key:{value}}}")
        if len(by_master[master]) < 3:
            by_master[master].append(value)
    values = [v for vs in by_master.values() for v in vs]
    nodes = [redis_cluster.node(m) for m in masters]

    async def scenario() -> list[tuple[str, ReqCallResult]]:
        warmup = conf_of(redis_cluster_nodes=redis_cluster.seeds, max_requests=10**6,
                         key_type="constant", key="warmup")  # fmt: skip
        clients = await clients_on_workers(running, nodes, warmup)
        try:
            tokens = [await c.prepare_conf(conf, key="route#cluster") for c in clients]
            jobs = [(values[i % len(values)], i) for i in range(12 * len(values))]
            calls = [
                clients[i % len(clients)].call(
                    tokens[i % len(clients)],
                    HTTPRequest(id=i, headers=[("x-api-key", value)]),
                )
                for value, i in jobs
            ]
            results = await asyncio.gather(*calls)
            return [(value, r) for (value, _), r in zip(jobs, results, strict=True)]
        finally:
            await close_all(clients)

    results = arun(scenario())
    for value in values:
        mine = [r for v, r in results if v == value]
        passed = [r for r in mine if allowed(r)]
        assert len(mine) == 12 and len(passed) == 5, value
        remaining = sorted(int(headers_of(r)["X-1-RateLimit-Remaining"] or 0) for r in passed)
        assert remaining == [0, 1, 2, 3, 4]
        assert all(status(r) == 429 for r in mine if not allowed(r))
    for port, keys in by_master.items():  # the counters are spread over every master
        with redis_cluster.node(port).client() as r:
            stored = r.keys(f"{prefix}:*")
        assert len(stored) == 2 * len(keys), (port, stored)


def test_cluster_master_killed_and_replica_promoted(
    cluster_factory: Callable[..., Cluster], caplog: pytest.LogCaptureFixture
) -> None:
    """Requests for keys on the killed master follow fail_open within the
    timeout, keys on the other masters keep their limits, and once the
    replica is promoted the limit holds again; the gap is measured."""
    cluster = cluster_factory(masters=3, replicas=1)
    prefix = f"t-{uuid.uuid4().hex}"
    base = {"redis_cluster_nodes": [n.address for n in cluster.nodes], "key": "header:X-K",
            "key_prefix": prefix, "timeout": 0.3, "max_requests": 1000, "period": 60}  # fmt: skip
    closed, opened = conf_of(**base), conf_of(**{**base, "fail_open": True})
    victim = cluster.master_ports()[0]
    doomed = healthy = None
    for i in range(200):
        master = cluster.master_of(f"{prefix}:header:x-k:k{i}")  # one rule: no hash tag
        if master == victim and doomed is None:
            doomed = f"k{i}"
        elif master != victim and healthy is None:
            healthy = f"k{i}"
    assert doomed is not None and healthy is not None

    def req(value: str) -> HTTPRequest:
        return HTTPRequest(headers=[("x-k", value)])

    async def scenario() -> tuple[float, float, list[tuple[float, float, str]]]:
        async with PluginTester(RedisLimit) as t:
            chain_closed, chain_open = t.prepare(decoded(closed)), t.prepare(decoded(opened))
            assert allowed(await t.acall(chain_closed, req(doomed)))
            assert allowed(await t.acall(chain_closed, req(healthy)))
            cluster.node(victim).kill()
            killed = time.monotonic()
            seen: list[tuple[float, float, str]] = []  # (when, how long, outcome)
            recovered = 0.0
            while time.monotonic() - killed < 15:
                began = time.monotonic()
                a = await t.acall(chain_closed, req(doomed))
                b = await t.acall(chain_open, req(doomed))
                c = await t.acall(chain_closed, req(healthy))
                took = time.monotonic() - began
                # Each request either counted (headers) or met the outage:
                # 503 on the closed route, let through bare on the open one.
                closed_ok = allowed(a) and bool(headers_of(a))
                open_ok = bool(headers_of(b))
                assert closed_ok or status(a) == 503
                assert open_ok or (allowed(b) and headers_of(b) == {})
                outcome = "ok" if closed_ok and open_ok else "down"
                seen.append((began - killed, took, outcome))
                assert allowed(c), "keys of the other masters keep working"
                if outcome == "ok" and any(o == "down" for _, _, o in seen):
                    recovered = time.monotonic() - killed
                    break
                await asyncio.sleep(0.02)
            promoted = time.monotonic() - killed
            await asyncio.sleep(1.0)  # a cluster outage ends after a quiet second
            exact = [await t.acall(t.prepare(decoded(conf_of(**{
                **base, "key_prefix": prefix + "-after", "max_requests": 3,
            }))), req(doomed)) for _ in range(5)]  # fmt: skip
            assert [allowed(r) for r in exact] == [True, True, True, False, False]
            return recovered, promoted, seen

    with caplog.at_level(logging.WARNING, LOGGER):
        recovered, _, seen = arun(scenario())
    worst = max(took for _, took, _ in seen)
    print(f"\ncluster master killed: requests for its keys failed for {recovered:.2f} s "
          f"(cluster-node-timeout 1 s), slowest round {worst:.3f} s")  # fmt: skip
    assert recovered > 0, "the promoted replica never took over"
    assert worst < 3 * (0.3 + 0.3)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (" in m for m in messages) == 1
    assert sum("is back after" in m for m in messages) == 1
    assert any("Redis Cluster 127.0.0.1:" in m for m in messages)


# --------------------------------------------------------------------------- sentinel


def test_sentinel_master_killed_under_load(
    runner_factory: RunnerFactory, sentinel_factory: Callable[..., SentinelSetup]
) -> None:
    """Two workers, six connections, load on a fail-closed and a fail-open
    route while Sentinel's master is killed: 503 / allowed within the timeout
    during the gap, never a hang; limits exact again once the replica is
    promoted, within a second or two of the promotion."""
    setup = sentinel_factory()
    running = runner_factory(workers=2)
    base = {"redis_sentinels": setup.addresses, "redis_master_name": MASTER_NAME,
            "timeout": 0.3, "max_requests": 10**6, "period": 60}  # fmt: skip
    closed = conf_of(**base)
    opened = conf_of(**base, fail_open=True)
    assert setup.master is not None
    old_port = setup.master.port

    async def scenario() -> dict[str, float]:
        warmup = conf_of(**{**base, "key_prefix": "warmup"})
        clients = await clients_on_workers(running, [setup.master], warmup)  # type: ignore[list-item]
        times: dict[str, float] = {}
        log: list[tuple[float, float, str, bool]] = []  # (when, took, route, ok)
        try:
            closed_t = [await c.prepare_conf(closed, key="route#closed") for c in clients]
            open_t = [await c.prepare_conf(opened, key="route#open") for c in clients]
            stop = asyncio.Event()

            async def load(i: int) -> None:
                client = clients[i]
                while not stop.is_set():
                    for name, token in (("closed", closed_t[i]), ("open", open_t[i])):
                        began = time.monotonic()
                        result = await client.call(token, HTTPRequest())
                        took = time.monotonic() - began
                        ok = allowed(result) and bool(headers_of(result))
                        if not ok:  # what the gap looks like
                            expect_open = name == "open"
                            assert allowed(result) if expect_open else status(result) == 503
                        log.append((began, took, name, ok))
                    await asyncio.sleep(0.005)

            workers = [asyncio.create_task(load(i)) for i in range(len(clients))]
            await asyncio.sleep(0.3)
            times["killed"] = time.monotonic()
            setup.master.kill()  # type: ignore[union-attr]
            while not await asyncio.to_thread(setup.promoted, old_port):
                assert time.monotonic() - times["killed"] < 15, "no failover"
                await asyncio.sleep(0.05)
            times["promoted"] = time.monotonic()
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*workers)

            failures = [when for when, _, _, ok in log if not ok]
            assert failures, "the load never saw the master missing"
            times["first_failure"], times["last_failure"] = min(failures), max(failures)
            times["worst"] = max(took for _, took, _, _ in log)
            times["requests"] = len(log)
            times["failed"] = len(failures)
            tail = [ok for when, _, _, ok in log if when > times["promoted"] + 1.0]
            assert tail and all(tail), "limits not back a second after the promotion"

            # Exact again on the new master: 10 of 25 concurrent requests.
            exact = conf_of(**{**base, "max_requests": 10})
            tokens = [await c.prepare_conf(exact, key="route#exact") for c in clients]
            calls = [clients[i % len(clients)].call(tokens[i % len(clients)], HTTPRequest(id=i))
                     for i in range(25)]  # fmt: skip
            results = await asyncio.gather(*calls)
            assert sum(allowed(r) for r in results) == 10
            return times
        finally:
            await close_all(clients)

    t = arun(scenario())
    gap = t["last_failure"] - t["killed"]
    print(
        f"\nsentinel failover: promoted {t['promoted'] - t['killed']:.2f} s after the kill "
        f"(down-after-milliseconds 500), requests failed from "
        f"{t['first_failure'] - t['killed']:.2f} s to {gap:.2f} s, "
        f"{t['failed']:.0f} of {t['requests']:.0f} requests; slowest {t['worst']:.3f} s"
    )
    assert t["worst"] < 0.3 + 0.4, "a request waited longer than its timeout"
    assert t["last_failure"] - t["promoted"] < 2.0
    text = running.log_text()
    assert 1 <= text.count("unavailable (") <= 2  # once per worker, not per request
    assert "is back after" in text and f"Redis Sentinel master '{MASTER_NAME}'" in text


# --------------------------------------------------------------------------- TLS and ACL


def test_tls_and_acl_user(tls_redis: TlsRedis) -> None:
    url = f"rediss://{tls_redis.USER}:{tls_redis.PASSWORD}@127.0.0.1:{tls_redis.tls_port}/0"
    by_url = conf_of(redis_url=url, redis_ssl_ca_file=str(tls_redis.ca), max_requests=2,
                     period=60)  # fmt: skip
    by_fields = conf_of(redis_host="127.0.0.1", redis_port=tls_redis.tls_port, redis_ssl=True,
                        redis_ssl_ca_file=str(tls_redis.ca), redis_username=tls_redis.USER,
                        redis_password=tls_redis.PASSWORD, redis_database=1,
                        max_requests=2, period=60)  # fmt: skip
    with PluginTester(RedisLimit) as t:
        for conf in (by_url, by_fields):
            chain = t.prepare(decoded(conf))
            assert [allowed(t.call(chain, HTTPRequest())) for _ in range(3)] == [
                True, True, False,
            ]  # fmt: skip
    with tls_redis.client() as r:
        r.select(1)
        assert r.keys(f"{decoded(by_fields)[0][1]['key_prefix']}:*")
        assert_closed([r])


def assert_closed(clients: Sequence[Any]) -> None:
    """This process's plugin connections are gone from every client's server."""
    name = f"apisix-runner-{os.getpid()}"
    deadline = time.monotonic() + 2
    while any(c["name"] == name for r in clients for c in r.client_list()):
        assert time.monotonic() < deadline, "the plugin's connections stayed open"
        time.sleep(0.02)


def test_shutdown_closes_cluster_and_sentinel_clients(
    redis_cluster: Cluster, sentinel_factory: Callable[..., SentinelSetup]
) -> None:
    setup = sentinel_factory()
    assert setup.master is not None
    cluster = decoded(conf_of(redis_cluster_nodes=redis_cluster.seeds, key_type="var",
                              key="http_x_k"))  # fmt: skip
    sentinel = decoded(conf_of(redis_sentinels=setup.addresses, redis_master_name=MASTER_NAME))
    masters = [redis_cluster.node(p) for p in redis_cluster.master_ports()]
    with PluginTester(RedisLimit) as t:
        for i in range(30):  # keys on every master
            assert allowed(t.call(cluster, HTTPRequest(vars={"http_x_k": f"k{i}"})))
        assert allowed(t.call(sentinel, HTTPRequest()))
        name = f"apisix-runner-{os.getpid()}"
        for node in [*masters, setup.master]:
            with node.client() as r:
                assert any(c["name"] == name for c in r.client_list()), node.address
    clients = [node.client() for node in [*masters, setup.master]]
    try:
        assert_closed(clients)
    finally:
        for r in clients:
            r.close()


@pytest.mark.parametrize("where", ["url", "fields"])
def test_wrong_password_names_the_redis_not_the_password(
    tls_redis: TlsRedis, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-Pa55word"
    port = tls_redis.tls_port
    if where == "url":
        opts: dict[str, Any] = {"redis_url": f"rediss://{tls_redis.USER}:{wrong}@127.0.0.1:{port}"}
    else:
        opts = {"redis_host": "127.0.0.1", "redis_port": port, "redis_ssl": True,
                "redis_username": tls_redis.USER, "redis_password": wrong}  # fmt: skip
    conf = decoded(conf_of(**opts, redis_ssl_ca_file=str(tls_redis.ca), timeout=0.5))
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(RedisLimit) as t:
        results = [t.call(conf, HTTPRequest()) for _ in range(3)]
    assert all(status(r) == 503 for r in results)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "AuthenticationError" in lines[0], lines[0]
    assert wrong not in lines[0]


def test_tls_certificate_is_verified(tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture) -> None:
    """Without the CA that signed the server's certificate the connection is
    refused (and the failure says why); redis_ssl_verify false skips it."""
    url = f"rediss://{tls_redis.USER}:{tls_redis.PASSWORD}@127.0.0.1:{tls_redis.tls_port}/0"
    strict = decoded(conf_of(redis_url=url, timeout=0.5))
    lax = decoded(conf_of(redis_url=url, redis_ssl_verify=False, timeout=0.5))
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(RedisLimit) as t:
        assert status(t.call(strict, HTTPRequest())) == 503
        assert allowed(t.call(lax, HTTPRequest()))
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize("policy", ["redis-cluster", "redis-sentinel"])
def test_nothing_reachable_is_bounded_by_the_timeout(
    closed_port: int, policy: str, fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{closed_port}"
    if policy == "redis-cluster":
        where: dict[str, Any] = {"redis_cluster_nodes": [address]}
    else:
        where = {"redis_sentinels": [address], "redis_master_name": MASTER_NAME}
    conf = decoded(conf_of(**where, policy=policy, timeout=0.25, fail_open=fail_open))
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        for _ in range(3):
            began = time.monotonic()
            result = t.call(chain, HTTPRequest())
            assert time.monotonic() - began < 0.25 + 0.3
            assert (
                (allowed(result) and headers_of(result) == {})
                if fail_open
                else (status(result) == 503)
            )
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and address in lines[0], lines


DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins" / "redis-limit.md"


def documented_acl() -> tuple[list[str], list[str]]:
    """The ACL rules docs/plugins/redis-limit.md gives the plugin's user:
    (for any Redis, what a cluster needs on top)."""
    text = DOC.read_text()
    rules = re.search(r"^ACL SETUSER limiter on >\S+ (.+)$", text, re.MULTILINE)
    cluster = re.search(r"\(add `([^`]+)` for a cluster", text)
    assert rules is not None and cluster is not None
    return rules.group(1).split(), cluster.group(1).split()


def test_the_documented_acl_rules_are_enough(
    redis_server: Any, redis_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    acl_rules, acl_cluster = documented_acl()
    user, password = f"limiter-{uuid.uuid4().hex[:8]}", "acl-Pa55"
    with redis_server.client() as r:
        r.execute_command("ACL", "SETUSER", user, "on", f">{password}", *acl_rules)
    for node in redis_cluster.nodes:
        with node.client() as r:
            r.execute_command("ACL", "SETUSER", user, "on", f">{password}", *acl_rules,
                              *acl_cluster)  # fmt: skip
    single = {"redis_url": f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0"}
    cluster = {"redis_cluster_nodes": redis_cluster.seeds, "redis_username": user,
               "redis_password": password}  # fmt: skip
    rules = [{"max_requests": 2, "period": 1}, {"max_requests": 5, "period": 60}]
    prefix = f"apisix-runner:redis-limit:{uuid.uuid4().hex}"
    confs = [
        {**where, **extra, "key_prefix": prefix, "key_type": "constant", "key": str(i)}
        for i, (where, extra) in enumerate(
            (where, extra)
            for where in (single, cluster)
            for extra in ({}, {"rules": rules, "window_type": "fixed"}, {"sync_interval": 0.05})
        )
    ]  # fmt: skip

    async def scenario() -> list[list[bool]]:
        async with PluginTester(RedisLimit) as t:
            seen = []
            for conf in confs:
                chain = t.prepare([("redis-limit", {**conf, "max_requests": 3} if "rules" not in
                                    conf else conf)])  # fmt: skip
                seen.append([allowed(await t.acall(chain, HTTPRequest())) for _ in range(4)])
            await asyncio.sleep(0.1)  # a synchronisation of the batches, with the same rights
            return seen

    with caplog.at_level(logging.WARNING, LOGGER):
        seen = arun(scenario())
    assert not [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert seen == [[True, True, False, False] if i % 3 == 1 else [True, True, True, False]
                    for i in range(6)]  # fmt: skip

"""redis-limit against a real redis-server: unit level (PluginTester, in-process)
and through the real runner with two workers and concurrent APISIX-like clients."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from runner import ConfError
from runner.bundled_plugins.redis_limit import RedisLimit
from runner.testing import Client, HTTPRequest, PluginTester, ReqCallResult, Rewrite, Stop
from runner.testing.pytest_plugin import RunnerFactory, RunningRunner
from tests.plugins.results import allowed, headers_of, status

if TYPE_CHECKING:  # conftest is pytest's to import; only its type is used here
    from conftest import RedisServer

_T = TypeVar("_T")
LOGGER = "runner.plugins.redis-limit"


def arun(coro: Coroutine[Any, Any, _T], timeout: float = 20.0) -> _T:
    """Run one scenario (pytest-asyncio is not used), bounded so a hang fails."""

    async def bounded() -> _T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def limit(url: str, **opts: Any) -> list[tuple[str, dict[str, Any]]]:
    """A route with redis-limit; a fresh key prefix unless one is given, so
    tests sharing the session's redis-server never share a counter."""
    opts.setdefault("key_prefix", f"t-{uuid.uuid4().hex}")
    return [("redis-limit", {"redis_url": url, **opts})]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_requests": 0}, "max_requests"),
        ({"period": 0}, "period"),
        ({"period": -1}, "period"),
        ({"timeout": 0}, "timeout"),
        ({"key": "cookie:x"}, "key"),
        ({"key": "header:"}, "key"),
        ({"key": "var:a-b"}, "key"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis_url"),
        ({"redis_url": "redis://"}, "redis_url"),
        ({"redis_url": "redis://h:99999"}, "redis_url"),
        ({"redis_url": "redis://h/0?socket_timeout=soon"}, "redis_url"),
        ({"rejected_code": 99}, "rejected_code"),
        ({"max_requests": "10"}, "max_requests"),
        ({"burst": 1}, "burst"),
    ],
)
def test_bad_config_names_the_field(change: dict[str, Any], field: str) -> None:
    conf = {"redis_url": "redis://127.0.0.1:6379/0", "max_requests": 10, "period": 1, **change}
    with pytest.raises(ConfError, match=field):
        PluginTester(RedisLimit).prepare([("redis-limit", conf)])


def test_config_errors_hide_the_password() -> None:
    conf = {"redis_url": "redis://:s3cret@h:99999/0", "max_requests": 1, "period": 1}
    with pytest.raises(ConfError, match="redis_url") as caught:
        PluginTester(RedisLimit).prepare([("redis-limit", conf)])
    assert "s3cret" not in str(caught.value) and ":***@h:99999" in str(caught.value)


def test_missing_required_fields() -> None:
    with pytest.raises(ConfError, match="redis_url"):
        PluginTester(RedisLimit).prepare([("redis-limit", {"max_requests": 1, "period": 1})])


# --------------------------------------------------------------------------- unit level


def test_limit_headers_and_retry_after(redis_server: RedisServer) -> None:
    conf = limit(redis_server.url, max_requests=3, period=60)
    prefix = conf[0][1]["key_prefix"]
    with PluginTester(RedisLimit) as t:
        results = [t.call(conf, HTTPRequest(src_ip="10.0.0.1")) for _ in range(5)]
    for result, remaining in zip(results[:3], ("2", "1", "0"), strict=True):
        assert isinstance(result.action, Rewrite)  # allowed: headers ride along
        assert headers_of(result) == {
            "X-RateLimit-Limit": "3",
            "X-RateLimit-Remaining": remaining,
            "X-RateLimit-Reset": "60",  # the oldest request leaves the window in 60 s
        }
        assert result.extra_info == []  # remote_addr comes with the call itself
    for result in results[3:]:
        assert isinstance(result.action, Stop) and result.action.status == 429
        assert headers_of(result) == {
            "X-RateLimit-Limit": "3",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "60",
            "Retry-After": "60",
            "Content-Type": "application/json",
        }
        assert result.action.body == b'{"error":"too many requests"}'
    with redis_server.client() as r:
        key = f"{prefix}:addr:10.0.0.1"
        assert r.zcard(key) == 3  # rejected requests are not logged
        assert 59_000 < r.pttl(key) <= 60_000


def test_rejected_code_and_message(redis_server: RedisServer) -> None:
    conf = limit(redis_server.url, max_requests=1, period=5, rejected_code=503, rejected_msg="slow")
    with PluginTester(RedisLimit) as t:
        t.call(conf, HTTPRequest())
        result = t.call(conf, HTTPRequest())
    assert isinstance(result.action, Stop)
    assert (result.action.status, result.action.body) == (503, b'{"error":"slow"}')
    assert headers_of(result)["Retry-After"] == "5"


def test_concurrent_requests_in_one_worker_are_all_counted(redis_server: RedisServer) -> None:
    """Many requests in the same millisecond: unique members, none lost."""
    conf = limit(redis_server.url, max_requests=30, period=60)

    async def scenario() -> list[ReqCallResult]:
        async with PluginTester(RedisLimit) as t:
            chain = t.prepare(conf)
            return await asyncio.gather(*(t.acall(chain, HTTPRequest()) for _ in range(50)))

    results = arun(scenario())
    assert sum(allowed(r) for r in results) == 30
    remaining = sorted(
        int(headers_of(r)["X-RateLimit-Remaining"] or 0) for r in results if allowed(r)
    )
    assert remaining == list(range(30))
    with redis_server.client() as r:
        assert r.zcard(f"{conf[0][1]['key_prefix']}:addr:127.0.0.1") == 30


def test_the_window_slides(redis_server: RedisServer) -> None:
    """3 per second: 2 at t=0 and 1 at t=0.6; at t=1.2 only the first two have
    left the window (a fixed window would have reset all three)."""
    conf = limit(redis_server.url, max_requests=3, period=1)
    with PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        start = time.monotonic()

        def at(offset: float) -> None:
            time.sleep(max(0.0, start + offset - time.monotonic()))

        assert all(allowed(t.call(chain, HTTPRequest())) for _ in range(2))
        at(0.6)
        assert allowed(t.call(chain, HTTPRequest()))
        denied = t.call(chain, HTTPRequest())
        assert status(denied) == 429 and headers_of(denied)["Retry-After"] == "1"
        at(1.2)
        assert [allowed(t.call(chain, HTTPRequest())) for _ in range(3)] == [True, True, False]
        at(1.8)  # the t=0.6 request has left the window, the t=1.2 ones have not
        assert [allowed(t.call(chain, HTTPRequest())) for _ in range(2)] == [True, False]


def test_keys_are_independent(redis_server: RedisServer) -> None:
    by_addr = limit(redis_server.url, max_requests=1, period=60)
    by_header = limit(redis_server.url, max_requests=1, period=60, key="header:X-Api-Key")
    with PluginTester(RedisLimit) as t:
        assert allowed(t.call(by_addr, HTTPRequest(src_ip="10.0.0.1")))
        assert not allowed(t.call(by_addr, HTTPRequest(src_ip="10.0.0.1")))
        assert allowed(t.call(by_addr, HTTPRequest(src_ip="10.0.0.2")))
        assert allowed(t.call(by_addr, HTTPRequest(src_ip="2001:db8::1")))

        def keyed(value: str, ip: str = "10.0.0.1") -> ReqCallResult:
            return t.call(by_header, HTTPRequest(src_ip=ip, headers=[("x-api-key", value)]))

        assert allowed(keyed("alice")) and not allowed(keyed("alice"))
        assert allowed(keyed("bob"))  # same client address, other key value
        assert not allowed(keyed("alice", ip="10.9.9.9"))  # the key, not the address
        assert allowed(keyed("x" * 1000)) and not allowed(keyed("x" * 1000))  # hashed key


def test_missing_header_falls_back_to_the_client_address(redis_server: RedisServer) -> None:
    conf = limit(redis_server.url, max_requests=2, period=60, key="header:X-Api-Key")
    with PluginTester(RedisLimit) as t:
        anonymous = [t.call(conf, HTTPRequest(src_ip="10.0.0.7")) for _ in range(3)]
        other_client = t.call(conf, HTTPRequest(src_ip="10.0.0.8"))
        empty_header = t.call(conf, HTTPRequest(src_ip="10.0.0.7", headers=[("x-api-key", "")]))
    assert [allowed(r) for r in anonymous] == [True, True, False]
    assert allowed(other_client)
    assert not allowed(empty_header)  # an empty value is no way around it either


def test_var_key_asks_apisix_for_the_variable(redis_server: RedisServer) -> None:
    conf = limit(redis_server.url, max_requests=1, period=60, key="var:http_x_user")
    with PluginTester(RedisLimit) as t:
        first = t.call(conf, HTTPRequest(vars={"http_x_user": "u1"}))
        second = t.call(conf, HTTPRequest(vars={"http_x_user": "u1"}))
        other = t.call(conf, HTTPRequest(vars={"http_x_user": "u2"}))
    assert first.extra_info == [("var", "http_x_user")]
    assert [allowed(first), allowed(second), allowed(other)] == [True, False, True]


@pytest.mark.parametrize("fail_open", [False, True])
def test_redis_refusing_connections(
    closed_port: int, fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    conf = limit(f"redis://127.0.0.1:{closed_port}/0", max_requests=1, period=1, timeout=0.3)
    conf[0][1]["fail_open"] = fail_open
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        for _ in range(5):
            began = time.monotonic()
            result = t.call(chain, HTTPRequest())
            assert time.monotonic() - began < 0.3 + 0.3
            if fail_open:
                assert result.action is None  # allowed, no limit headers: nothing known
            else:
                assert status(result) == 503
    failures = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(failures) == 1, "one log line for the outage, not one per request"
    assert str(closed_port) in failures[0].getMessage()


@pytest.mark.parametrize("fail_open", [False, True])
def test_redis_not_answering_is_bounded_by_the_timeout(
    blackhole_port: int, fail_open: bool
) -> None:
    """The TCP connection completes but Redis never answers the handshake."""
    url = f"redis://127.0.0.1:{blackhole_port}/0"
    conf = limit(url, max_requests=1, period=1, timeout=0.25, fail_open=fail_open)
    with PluginTester(RedisLimit) as t:
        for _ in range(2):
            began = time.monotonic()
            result = t.call(conf, HTTPRequest())
            assert time.monotonic() - began < 0.25 + 0.3
            assert allowed(result) if fail_open else status(result) == 503


def test_slow_redis_times_out_and_answers_stay_in_step(redis_server: RedisServer) -> None:
    """CLIENT PAUSE holds every command: the request gives up at the timeout,
    and the next ones get their own answers, not the late reply of the
    abandoned command."""
    conf = limit(redis_server.url, max_requests=2, period=60, timeout=0.3)
    with PluginTester(RedisLimit) as t, redis_server.client() as r:
        chain = t.prepare(conf)
        assert allowed(t.call(chain, HTTPRequest()))
        r.execute_command("CLIENT", "PAUSE", "700", "ALL")
        began = time.monotonic()
        assert status(t.call(chain, HTTPRequest())) == 503
        assert time.monotonic() - began < 0.3 + 0.3
        time.sleep(0.5)  # the pause is over; the abandoned command may have run
        first, second = (t.call(chain, HTTPRequest()) for _ in range(2))
    # Whether or not Redis ran the abandoned command, each reply is the one
    # for its own request: the count reaches 2 and then stays there.
    if allowed(first):
        assert headers_of(first)["X-RateLimit-Remaining"] == "0"
    else:
        assert status(first) == 429
    assert status(second) == 429
    assert headers_of(second) == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "60",
        "Retry-After": "60",
        "Content-Type": "application/json",
    }


def test_redis_killed_and_restarted(
    redis_factory: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory()
    conf = limit(server.url, max_requests=100, period=60, timeout=0.3)
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(RedisLimit) as t:
        chain = t.prepare(conf)
        assert allowed(t.call(chain, HTTPRequest()))
        server.kill()
        for _ in range(3):
            began = time.monotonic()
            assert status(t.call(chain, HTTPRequest())) == 503
            assert time.monotonic() - began < 0.3 + 0.3
        server.start()  # same port, empty data, no scripts loaded
        result = t.call(chain, HTTPRequest())
        assert allowed(result) and headers_of(result)["X-RateLimit-Remaining"] == "99"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("is back after" in m and "3 failed requests" in m for m in messages) == 1


def test_shutdown_closes_the_pool(redis_server: RedisServer) -> None:
    name = f"apisix-runner-{os.getpid()}"
    with redis_server.client() as r:
        with PluginTester(RedisLimit) as t:
            t.call(limit(redis_server.url, max_requests=5, period=1), HTTPRequest())
            assert any(c["name"] == name for c in r.client_list())
        deadline = time.monotonic() + 2
        while any(c["name"] == name for c in r.client_list()):
            assert time.monotonic() < deadline, "the plugin's connections stayed open"
            time.sleep(0.02)


# --------------------------------------------------------------------------- runner level


async def _clients_on_both_workers(
    running: RunningRunner, server: RedisServer, warmup: list[tuple[str, str]], want: int = 2
) -> list[Client]:
    """Open connections (each stays with one worker) until the Redis shows
    connections of ``want`` worker processes: then requests spread over all
    of them reach every worker."""
    clients: list[Client] = []
    with server.client() as r:
        for _ in range(40):
            client = await running.client()
            clients.append(client)
            token = await client.prepare_conf(warmup)
            await client.call(token, HTTPRequest(src_ip="192.0.2.1"))
            names = {c["name"] for c in r.client_list() if c["name"].startswith("apisix-runner-")}
            names.discard(f"apisix-runner-{os.getpid()}")  # unit tests' connections
            if len(names) >= want and len(clients) >= 5:
                return clients
    for client in clients:
        await client.close()
    raise AssertionError(f"the requests never reached {want} workers")


def _conf_string(conf: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(name, json.dumps(value)) for name, value in conf]


def test_exact_across_two_workers(runner_factory: RunnerFactory, redis_server: RedisServer) -> None:
    """max_requests=10: exactly 10 of 25 concurrent requests pass, spread over
    both workers and several APISIX connections; every Remaining value once."""
    running = runner_factory(workers=2)
    warmup = _conf_string(limit(redis_server.url, max_requests=1000, period=60))
    conf = _conf_string(limit(redis_server.url, max_requests=10, period=60))

    async def scenario() -> list[ReqCallResult]:
        clients = await _clients_on_both_workers(running, redis_server, warmup)
        try:
            tokens = [await c.prepare_conf(conf, key="route#exact") for c in clients]
            calls = [
                clients[i % len(clients)].call(tokens[i % len(clients)], HTTPRequest(id=i))
                for i in range(25)
            ]
            return await asyncio.gather(*calls)
        finally:
            for c in clients:
                await c.close()

    results = arun(scenario())
    passed = [r for r in results if allowed(r)]
    assert len(passed) == 10
    assert sorted(int(headers_of(r)["X-RateLimit-Remaining"] or 0) for r in passed) == list(
        range(10)
    )
    assert all(
        status(r) == 429 and headers_of(r)["Retry-After"] == "60" for r in results if not allowed(r)
    )


def test_runner_survives_redis_outage(
    runner_factory: RunnerFactory, redis_factory: Callable[[], RedisServer]
) -> None:
    """Two workers, several connections: Redis killed mid-test, fail_open false
    and true routes answer within the timeout, then Redis comes back."""
    server = redis_factory()
    running = runner_factory(workers=2)
    fail_closed = _conf_string(limit(server.url, max_requests=1000, period=60, timeout=0.3))
    fail_open = _conf_string(
        limit(server.url, max_requests=1000, period=60, timeout=0.3, fail_open=True)
    )

    async def burst(clients: list[Client], tokens: list[int], n: int = 8) -> list[ReqCallResult]:
        calls = [
            clients[i % len(clients)].call(tokens[i % len(clients)], HTTPRequest())
            for i in range(n)
        ]
        return await asyncio.gather(*calls)

    async def scenario() -> None:
        clients = [await running.client() for _ in range(4)]
        try:
            closed_tokens = [await c.prepare_conf(fail_closed, key="route#closed") for c in clients]
            open_tokens = [await c.prepare_conf(fail_open, key="route#open") for c in clients]
            assert all(allowed(r) for r in await burst(clients, closed_tokens))
            server.kill()
            began = time.monotonic()
            down = await burst(clients, closed_tokens)
            down_open = await burst(clients, open_tokens)
            assert time.monotonic() - began < 2 * (0.3 + 0.4)
            assert all(status(r) == 503 for r in down)
            assert all(r.action is None for r in down_open)
            server.start()
            assert all(allowed(r) for r in await burst(clients, closed_tokens))
        finally:
            for c in clients:
                await c.close()

    arun(scenario())
    log_text = running.log_text()
    assert 1 <= log_text.count("unavailable") <= 2  # once per worker, not per request
    assert "is back after" in log_text

"""async-auth against a real HTTP auth service (tests/plugins/authsvc.py): unit
level (PluginTester, in-process) and through the real runner with two workers
and concurrent APISIX-like clients."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from runner import ConfError
from runner.bundled_plugins.async_auth import AsyncAuth, Decision, _DecisionCache
from runner.testing import (
    HTTPRequest,
    PluginTester,
    ReqCallResult,
    Rewrite,
    Stop,
    apply_rewrite,
)
from runner.testing.pytest_plugin import RunnerFactory
from tests.plugins import guideauth
from tests.plugins.guideauth import guide_auth_service

if TYPE_CHECKING:  # conftest is pytest's to import; only its type is used here
    from conftest import AuthService

_T = TypeVar("_T")
LOGGER = "runner.plugins.async-auth"


def arun(coro: Coroutine[Any, Any, _T], timeout: float = 20.0) -> _T:
    """Run one scenario (pytest-asyncio is not used), bounded so a hang fails."""

    async def bounded() -> _T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def token(kind: str) -> str:
    """A token the service has never seen, so its call counts are this test's."""
    return f"Bearer {kind}-{uuid.uuid4().hex[:12]}"


def auth(url: str, **opts: Any) -> list[tuple[str, dict[str, Any]]]:
    return [("async-auth", {"auth_url": url, **opts})]


def req(tok: str | None = None, *headers: tuple[str, str]) -> HTTPRequest:
    pairs = [("authorization", tok)] if tok is not None else []
    return HTTPRequest(path="/api", headers=[*pairs, *headers])


def stop_status(result: ReqCallResult) -> int | None:
    return result.action.status if isinstance(result.action, Stop) else None


def upstream(request: HTTPRequest, result: ReqCallResult) -> dict[str, str]:
    """The upstream request's headers after APISIX applies the Rewrite."""
    if result.action is None:
        return dict(request.headers)
    assert isinstance(result.action, Rewrite), result.action
    return dict(apply_rewrite(request, result.action).headers)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"auth_url": "ftp://auth/x"}, "auth_url"),
        ({"auth_url": "http:///nohost"}, "auth_url"),
        ({"auth_url": "http://auth:99999/"}, "auth_url"),
        ({"timeout": 0}, "timeout"),
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"error_status": 200}, "error_status"),
        ({"forward_headers": ["X Bad"]}, "forward_headers"),
        ({"upstream_headers": ["ok", ""]}, "upstream_headers"),
        ({"token_header": "a:b"}, "token_header"),
        ({"forward_headers": "X-Tenant"}, "forward_headers"),
        ({"cache": 1}, "cache"),
        # Would become a second Authorization header: every request would fail.
        ({"auth_url": "http://user:pw@127.0.0.1:1/auth"}, "user:password in the URL"),
    ],
)
def test_bad_config_names_the_field(change: dict[str, Any], field: str) -> None:
    conf = {"auth_url": "http://127.0.0.1:1/auth", **change}
    with pytest.raises(ConfError, match=field):
        PluginTester(AsyncAuth).prepare([("async-auth", conf)])


# --------------------------------------------------------------------------- unit level


def test_missing_token_is_401_without_asking(auth_service: AuthService) -> None:
    with PluginTester(AsyncAuth) as t:
        missing = t.call(auth(auth_service.url()), req())
        empty = t.call(auth(auth_service.url()), req(""))
    assert stop_status(missing) == 401 and stop_status(empty) == 401
    assert auth_service.calls("") == 0


def test_allow_copies_upstream_headers_and_drops_spoofed_ones(auth_service: AuthService) -> None:
    """X-User-Id comes from the service; X-Role, which the service did not
    send, is removed even though the client sent its own."""
    tok = token("ok")
    user = tok.rpartition("-")[2]
    request = req(tok, ("x-user-id", "admin"), ("x-role", "root"), ("x-other", "kept"))
    conf = auth(auth_service.url(), upstream_headers=["X-User-Id", "X-Role"])
    with PluginTester(AsyncAuth) as t:
        result = t.call(conf, request)
    headers = upstream(request, result)
    assert headers["x-user-id"] == user
    assert "x-role" not in headers
    assert headers["x-other"] == "kept" and headers["authorization"] == tok
    assert isinstance(result.action, Rewrite) and result.action.resp_headers == []


def test_hide_credentials(auth_service: AuthService) -> None:
    request = req(token("ok"))
    with PluginTester(AsyncAuth) as t:
        result = t.call(auth(auth_service.url(), hide_credentials=True), request)
    assert "authorization" not in upstream(request, result)


@pytest.mark.parametrize("kind", ["deny", "forbid"])
def test_service_says_no_is_403(auth_service: AuthService, kind: str) -> None:
    tok = token(kind)
    with PluginTester(AsyncAuth) as t:
        result = t.call(auth(auth_service.url()), req(tok))
    assert stop_status(result) == 403
    assert auth_service.calls(tok) == 1


@pytest.mark.parametrize(
    ("kind", "opts", "expected"),
    [
        ("err", {}, 503),
        ("err", {"error_status": 502}, 502),
        ("redirect", {}, 503),  # a login page is not a yes
    ],
)
def test_service_failure_is_the_error_status(
    auth_service: AuthService, kind: str, opts: dict[str, Any], expected: int
) -> None:
    with PluginTester(AsyncAuth) as t:
        result = t.call(auth(auth_service.url(), **opts), req(token(kind)))
    assert stop_status(result) == expected


def test_connection_refused_is_503_and_logged_once(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port}/auth"
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(AsyncAuth) as t:
        results = [t.call(auth(url, timeout=1), req(token("ok"))) for _ in range(4)]
    assert [stop_status(r) for r in results] == [503] * 4
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1 and url in failures[0]


def test_timeout_is_503_within_the_timeout(
    auth_service: AuthService, caplog: pytest.LogCaptureFixture
) -> None:
    conf = auth(auth_service.url(), timeout=0.3)
    with caplog.at_level(logging.WARNING, LOGGER), PluginTester(AsyncAuth) as t:
        began = time.monotonic()
        slow = t.call(conf, req(token("slow")))
        elapsed = time.monotonic() - began
        ok = t.call(conf, req(token("ok")))  # the service is fine otherwise
    assert stop_status(slow) == 503 and elapsed < 0.3 + 0.3
    assert ok.action is None or isinstance(ok.action, Rewrite)
    messages = [r.getMessage() for r in caplog.records]
    assert any("TimeoutError" in m for m in messages)
    assert any("is back after" in m for m in messages)


def test_forward_headers_reach_the_service(auth_service: AuthService) -> None:
    conf = auth(
        auth_service.url(),
        forward_headers=["X-Tenant"],
        upstream_headers=["X-Seen-Tenant", "X-Seen-Cookie"],
    )
    tok = token("tenant")
    with PluginTester(AsyncAuth) as t:
        acme = req(tok, ("x-tenant", "acme"))
        allowed = t.call(conf, acme)
        other = t.call(conf, req(tok, ("x-tenant", "other")))
        not_forwarded = t.call(auth(auth_service.url()), acme)
    assert upstream(acme, allowed)["x-seen-tenant"] == "acme"
    assert stop_status(other) == 403 and stop_status(not_forwarded) == 403


def test_cookies_of_one_user_never_reach_the_next(auth_service: AuthService) -> None:
    """The service sets a cookie on every 200; the pooled session keeps none."""
    conf = auth(auth_service.url(), upstream_headers=["X-Seen-Cookie"])
    with PluginTester(AsyncAuth) as t:
        first, second = (req(token("ok")) for _ in range(2))
        t.call(conf, first)
        result = t.call(conf, second)
    assert upstream(second, result).get("x-seen-cookie", "") == ""


def test_cache_holds_answers_for_the_ttl_but_never_errors(auth_service: AuthService) -> None:
    conf = auth(auth_service.url(), cache_ttl=0.6, upstream_headers=["X-User-Id"])
    ok, deny, err = token("ok"), token("deny"), token("err")
    with PluginTester(AsyncAuth) as t:
        chain = t.prepare(conf)
        cached = [t.call(chain, req(ok)) for _ in range(3)]
        denied = [t.call(chain, req(deny)) for _ in range(3)]
        failed = [t.call(chain, req(err)) for _ in range(3)]
        assert (auth_service.calls(ok), auth_service.calls(deny), auth_service.calls(err)) == (
            1,
            1,
            3,
        )
        time.sleep(0.7)
        after_ttl = t.call(chain, req(ok))
        assert auth_service.calls(ok) == 2
        uncached = [t.call(auth(auth_service.url()), req(ok)) for _ in range(2)]
        assert auth_service.calls(ok) == 4  # cache_ttl 0: every request asks
    request = req(ok)
    assert all(upstream(request, r)["x-user-id"] == ok.rpartition("-")[2] for r in cached)
    assert upstream(request, after_ttl)["x-user-id"] == ok.rpartition("-")[2]
    assert all(stop_status(r) == 403 for r in denied)
    assert all(stop_status(r) == 503 for r in failed)
    assert all(stop_status(r) is None for r in uncached)


def test_concurrent_requests_share_one_auth_request(auth_service: AuthService) -> None:
    tok = token("ok")
    conf = auth(auth_service.url(), cache_ttl=60)

    async def scenario() -> list[ReqCallResult]:
        async with PluginTester(AsyncAuth) as t:
            chain = t.prepare(conf)
            return await asyncio.gather(*(t.acall(chain, req(tok)) for _ in range(10)))

    assert all(stop_status(r) is None for r in arun(scenario()))
    assert auth_service.calls(tok) == 1


def test_decision_cache_is_bounded_and_expires() -> None:
    cache = _DecisionCache(max_entries=2)
    cache.put(b"a", Decision(True), ttl=60)
    cache.put(b"b", Decision(False), ttl=60)
    assert cache.get(b"a") == Decision(True)  # a is now the most recently used
    cache.put(b"c", Decision(True), ttl=60)
    assert len(cache) == 2 and cache.get(b"b") is None and cache.get(b"a") is not None
    cache.put(b"d", Decision(True), ttl=0.01)
    time.sleep(0.02)
    assert cache.get(b"d") is None


def test_cache_key_includes_forwarded_headers(auth_service: AuthService) -> None:
    """A cached yes for tenant acme is no yes for tenant other."""
    conf = auth(auth_service.url(), cache_ttl=60, forward_headers=["X-Tenant"])
    tok = token("tenant")
    with PluginTester(AsyncAuth) as t:
        chain = t.prepare(conf)
        acme = [t.call(chain, req(tok, ("x-tenant", "acme"))) for _ in range(2)]
        other = [t.call(chain, req(tok, ("x-tenant", "other"))) for _ in range(2)]
    assert [stop_status(r) for r in acme + other] == [None, None, 403, 403]
    assert auth_service.calls(tok) == 2


# --------------------------------------------------------------------------- runner level


def test_through_the_runner_with_two_workers(
    runner_factory: RunnerFactory, auth_service: AuthService
) -> None:
    """Several APISIX connections at once, mixed answers, and a cache per
    worker: 12 requests with one token ask the service once per worker."""
    running = runner_factory(workers=2)
    conf_value = {
        "auth_url": auth_service.url(),
        "cache_ttl": 60,
        "upstream_headers": ["X-User-Id"],
    }
    conf = [("async-auth", json.dumps(conf_value))]
    cached_tok = token("ok")
    cases = [
        (req(), 401),
        (req(token("deny")), 403),
        (req(token("err")), 503),
        (req(token("ok"), ("x-user-id", "forged")), None),
    ]

    async def scenario() -> tuple[list[ReqCallResult], list[ReqCallResult]]:
        clients = [await running.client() for _ in range(6)]
        try:
            tokens = [await c.prepare_conf(conf, key="route#auth") for c in clients]

            def on(i: int, request: HTTPRequest) -> Any:
                return clients[i % 6].call(tokens[i % 6], request)

            mixed = await asyncio.gather(*(on(i, r) for i, (r, _) in enumerate(cases * 3)))
            cached = await asyncio.gather(*(on(i, req(cached_tok)) for i in range(12)))
            return list(mixed), list(cached)
        finally:
            for c in clients:
                await c.close()

    mixed, cached = arun(scenario())
    for (request, expected), result in zip(cases * 3, mixed, strict=True):
        assert stop_status(result) == expected
        if expected is None:
            user = request.headers[0][1].rpartition("-")[2]
            assert upstream(request, result)["x-user-id"] == user
    assert all(stop_status(r) is None for r in cached)
    assert 1 <= auth_service.calls(cached_tok) <= 2


def test_the_guides_json_protocol() -> None:
    # The auth service of the guide's sample: POST {"token": ...}.
    with guide_auth_service() as url, PluginTester(AsyncAuth) as t:
        conf = auth(url, protocol="json")
        assert stop_status(t.call(conf, req("Bearer good"))) is None
        assert stop_status(t.call(conf, req("Bearer bad"))) == 403
        assert guideauth.seen[-2:] == [
            ("POST", {"token": "Bearer good"}), ("POST", {"token": "Bearer bad"}),
        ]  # fmt: skip
        # The forward-auth default asks with GET, which that service refuses: 503.
        assert stop_status(t.call(auth(url), req("Bearer good"))) == 503

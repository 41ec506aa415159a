"""The runner going away and coming back, as the gateway sees it (docs/protocol.md §4.4-§4.5):
a restarted runner answers the old token with CONF_TOKEN_NOT_FOUND and the
gateway re-prepares and retries; a runner that is down means 503."""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Iterator

import pytest

from bench.gateway import rig

from .conftest import PLUGINS_DIR, pre, request

ROUTES = {
    "routes": [
        {"uri": "/stop", "plugins": pre(("stop", {"status": 403, "body": "no"}))},
        {"uri": "/rewrite", "plugins": pre(("rewrite", {"headers": {"X-A": "1"}}))},
        {
            "uri": "/degraded",
            "plugins": pre(("stop", {"status": 403}), allow_degradation=True),
        },
    ]
}


@pytest.fixture
def gw() -> Iterator[rig.Rig]:
    gateway = rig.start(ROUTES)
    try:
        yield gateway
    finally:
        gateway.stop()


def test_runner_restart_token_not_found_then_retry_succeeds(gw: rig.Rig) -> None:
    assert request(gw, "/stop").status == 403
    assert request(gw, "/rewrite").echo()["header_map"]["x-a"] == ["1"]
    assert "refresh cache and try again" not in gw.error_log_text()

    gw.stop_runner()
    gw.start_runner()

    # The new runner has never seen the cached tokens: CONF_TOKEN_NOT_FOUND,
    # flush, PrepareConf again, call again -- all inside this one request.
    reply = request(gw, "/stop")
    assert (reply.status, reply.body) == (403, b"no")
    log = gw.error_log_text()
    assert "refresh cache and try again" in log
    assert "flush conf token in shared dict" in log
    # the retry flushed every token: the other route re-prepares without an error
    assert request(gw, "/rewrite").echo()["header_map"]["x-a"] == ["1"]
    assert "[error]" not in gw.error_log_text()


def test_runner_down_is_503_and_recovers(gw: rig.Rig) -> None:
    assert request(gw, "/stop").status == 403
    gw.stop_runner()

    assert request(gw, "/stop").status == 503
    assert "failed to connect to the unix socket" in gw.error_log_text()
    # allow_degradation: the request goes on as if there were no plugin
    assert request(gw, "/degraded").echo()["path"] == "/degraded"

    gw.start_runner()
    assert request(gw, "/stop").status == 403


def test_burst_of_first_requests_during_a_slow_prepare_conf() -> None:
    """96 concurrent first requests while PrepareConf takes 0.3 s (as jwt-auth's
    first one does): each holds its call connection and its PrepareConf
    connection (docs/protocol.md §8.3), so ~190 connections queue on the runner's listen backlog."""
    routes = {"routes": [{"uri": "/slow", "plugins": pre(("e2e-slow-conf", "0.3"))}]}
    gateway = rig.start(routes, plugin_dirs=[PLUGINS_DIR])
    try:
        with concurrent.futures.ThreadPoolExecutor(96) as pool:
            statuses = list(pool.map(lambda _: request(gateway, "/slow").status, range(96)))
    finally:
        gateway.stop()
    assert Counter(statuses) == {200: 96}

"""Bytes HTTP allows but UTF-8 does not (obs-text in a header value, a
percent-decoded path byte) pass through the real runner: the client gets the
plugin's answer, never a 503 for a "malformed" call, and what goes back to
APISIX is the very bytes it sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.testing import HTTPRequest, Rewrite, Stop
from runner.testing.pytest_plugin import RunningRunner
from tests.integration.conftest import start_runner

LATIN1_COOKIE = "session=caf" + b"\xe9".decode("utf-8", "surrogateescape")
PATH = "/files/" + b"\xff\xfe".decode("utf-8", "surrogateescape")
SECRET = "k" * 32
PLUGINS = str(Path(__file__).resolve().parent / "plugins")


@pytest.fixture(scope="module")
def runner() -> Iterator[RunningRunner]:
    running = start_runner(plugins_dir=PLUGINS, config={"workers": 2})
    yield running
    running.stop()


def test_a_latin1_cookie_does_not_fail_the_call(runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await runner.client() as c:
            token = await c.prepare_conf(
                [("jwt-auth", json.dumps({"secret": SECRET, "algorithm": "HS256"}))]
            )
            result = await c.call(
                token, HTTPRequest(path=PATH, headers=[("cookie", LATIN1_COOKIE)])
            )
            # No token: jwt-auth's own 401, not SERVICE_UNAVAILABLE for a malformed call.
            assert isinstance(result.action, Stop) and result.action.status == 401

    asyncio.run(scenario())


def test_a_rewrite_sends_back_the_bytes_received(runner: RunningRunner) -> None:
    async def scenario() -> None:
        async with await runner.client() as c:
            token = await c.prepare_conf([("echo-bytes", "")])
            result = await c.call(
                token, HTTPRequest(path=PATH, headers=[("cookie", LATIN1_COOKIE)])
            )
            assert isinstance(result.action, Rewrite)
            # The client decodes with surrogateescape too: equal strings, equal bytes.
            assert result.action.path == "/moved" + PATH
            assert [(k.lower(), v) for k, v in result.action.headers] == [
                ("x-cookie", LATIN1_COOKIE)
            ]

    asyncio.run(scenario())


def test_post_resp_keeps_obs_text_and_still_rewrites_the_body(runner: RunningRunner) -> None:
    disposition = 'attachment; filename="caf' + b"\xe9".decode("utf-8", "surrogateescape") + '.txt"'

    async def scenario() -> None:
        async with await runner.client() as c:
            token = await c.prepare_conf([("response-rewrite", json.dumps({"body": "replaced"}))])
            result = await c.resp_call(token, 200, [("content-disposition", disposition)])
            assert result.body == b"replaced"
            assert result.body == b"replaced"
            # The upstream's headers, obs-text included, go back as received.
            assert ("content-disposition", disposition) in [
                (k.lower(), v) for k, v in result.headers
            ]

    asyncio.run(scenario())

"""What an upstream sends back is not all forwarded: headers it named in
``Connection`` are for its own hop only (RFC 9110 §7.6.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from runner.testing.pytest_plugin import RunningRunner
from tests.integration.conftest import start_runner


@pytest.fixture(scope="module")
def runner() -> Iterator[RunningRunner]:
    running = start_runner(plugins_dir=None, config={"workers": 1})
    yield running
    running.stop()


def test_connection_listed_headers_are_dropped(runner: RunningRunner) -> None:
    upstream = [
        ("connection", "keep-alive, X-Internal-Token"),
        ("x-internal-token", "s3cr3t"),
        ("x-kept", "1"),
    ]

    async def scenario() -> list[tuple[str, str]]:
        async with await runner.client() as c:
            token = await c.prepare_conf([("response-rewrite", json.dumps({"body": "new"}))])
            result = await c.resp_call(token, 200, upstream)
            assert result.body == b"new"
            return [(k.lower(), v) for k, v in result.headers]

    headers = asyncio.run(scenario())
    assert ("x-kept", "1") in headers
    assert not {"x-internal-token", "connection", "keep-alive"} & {k for k, _ in headers}

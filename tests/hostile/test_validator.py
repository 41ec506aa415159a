"""Bodies built to make request-validator expensive, through the real runner:
each gets a 4xx with a reason, fast, and never a 503 or a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from runner.testing import HTTPRequest, ReqCallResult, Stop
from runner.testing.pytest_plugin import RunningRunner
from tests.integration.conftest import start_runner

RECURSIVE = {
    "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
    "$ref": "#/$defs/node",
}


@pytest.fixture(scope="module")
def runner() -> Iterator[RunningRunner]:
    running = start_runner(plugins_dir=None, config={"workers": 1})
    yield running
    running.stop()


def call(runner: RunningRunner, conf: dict[str, Any], body: bytes, **headers: str) -> ReqCallResult:
    async def scenario() -> ReqCallResult:
        async with await runner.client() as c:
            token = await c.prepare_conf([("request-validator", json.dumps(conf))])
            return await c.call(
                token, HTTPRequest(method="POST", body=body, headers=list(headers.items()))
            )

    return asyncio.run(scenario())


def stopped(result: ReqCallResult) -> tuple[int, dict[str, Any]]:
    assert isinstance(result.action, Stop), result
    return result.action.status, json.loads(result.action.body)


def test_unique_items_over_thousands_of_objects(runner: RunningRunner) -> None:
    # jsonschema's own check is quadratic here (6,000 objects: 23 s of one core).
    items = [{"id": n} for n in range(6000)]
    conf = {"schema": {"type": "array", "uniqueItems": True}}
    assert not isinstance(call(runner, conf, json.dumps(items).encode()).action, Stop)
    status, body = stopped(call(runner, conf, json.dumps([*items, {"id": 7}]).encode()))
    assert status == 400 and "non-unique" in body["message"]


def test_a_body_over_the_limit_is_413_before_parsing(runner: RunningRunner) -> None:
    huge = b"[" + b"{}," * 1_000_000 + b"{}]"  # 3 MB: ~35x that once parsed
    conf = {"schema": {"type": "array", "items": {"type": "integer"}}}
    assert stopped(call(runner, conf, huge)) == (413, {"error": "Body too large"})
    # Content-Length alone is enough: the body is never fetched.
    result = call(runner, conf, b"[]", **{"content-length": str(len(huge))})
    assert stopped(result) == (413, {"error": "Body too large"})
    assert result.extra_info == []


def test_many_errors_are_not_all_walked(runner: RunningRunner) -> None:
    body = json.dumps(["x"] * 200_000).encode()  # 1 MB, 200,000 errors
    conf = {"schema": {"type": "array", "items": {"type": "integer"}}}
    status, answer = stopped(call(runner, conf, body))
    assert status == 400 and answer["error"] == "Schema validation failed"


def test_deep_nesting_on_a_recursive_schema_is_400_not_a_crash(runner: RunningRunner) -> None:
    body: dict[str, Any] = {}
    for _ in range(300):
        body = {"next": body}
    result = call(runner, {"schema": RECURSIVE}, json.dumps(body).encode())
    assert stopped(result) == (400, {"error": "Body nested too deeply"})
    assert "Traceback" not in runner.log_text()
    deeper = b"[" * 5000 + b"]" * 5000  # beyond what the JSON parser takes
    assert stopped(call(runner, {"schema": True}, deeper))[0] == 400


def test_duplicate_keys_can_be_refused(runner: RunningRunner) -> None:
    body = b'{"role": "user", "role": "admin"}'
    conf: dict[str, Any] = {"schema": {"type": "object"}}
    assert not isinstance(call(runner, conf, body).action, Stop)  # JSON allows it: last wins
    conf["reject_duplicate_keys"] = True
    assert stopped(call(runner, conf, body)) == (
        400, {"error": "Duplicate key in a JSON object"},
    )  # fmt: skip

"""request-validator: unit level (PluginTester) and against a real runner."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from runner import ConfError
from runner.bundled_plugins.request_validator import MAX_MESSAGE, RequestValidator
from runner.testing import HTTPRequest, RunnerError, Stop
from runner.testing.plugintest import PluginTester
from runner.testing.pytest_plugin import RunnerFactory

NAME = "request-validator"
USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"zip": {"type": "string"}}},
    },
}
CONF = {"schema": USER_SCHEMA}


@pytest.fixture(scope="module")
def tester() -> Iterator[PluginTester]:
    with PluginTester(RequestValidator) as t:
        yield t


def post(body: bytes | None, method: str = "POST") -> HTTPRequest:
    return HTTPRequest(method=method, path="/users", body=body)


def rejection(tester: PluginTester, conf: dict[str, Any], req: HTTPRequest) -> dict[str, Any]:
    """The 400's JSON body, after checking what every 400 has."""
    result = tester.call([(NAME, conf)], req)
    stop = result.action
    assert isinstance(stop, Stop), stop
    assert stop.status == 400
    assert ("Content-Type", "application/json") in stop.headers
    assert result.extra_info == [("req_body", None)]
    body: dict[str, Any] = json.loads(stop.body)
    return body


def violation(tester: PluginTester, conf: dict[str, Any], instance: Any) -> tuple[str, str]:
    body = rejection(tester, conf, post(json.dumps(instance).encode()))
    assert body["error"] == "Schema validation failed"
    return body["message"], body["path"]


def test_valid_body_passes_after_reading_it(tester: PluginTester) -> None:
    body = {"email": "a@example.com", "age": 3, "tags": ["x"], "address": {"zip": "123"}}
    for method in ("POST", "PUT", "PATCH"):
        result = tester.call([(NAME, CONF)], post(json.dumps(body).encode(), method))
        assert result.action is None
        assert result.extra_info == [("req_body", None)]


def test_other_methods_pass_without_asking_for_the_body(tester: PluginTester) -> None:
    for method in ("GET", "DELETE", "HEAD", "OPTIONS"):
        result = tester.call([(NAME, CONF)], post(b"not json", method))
        assert result.action is None
        assert result.extra_info == []


def test_configured_methods(tester: PluginTester) -> None:
    conf = {**CONF, "methods": ["delete", "POST"]}
    assert rejection(tester, conf, post(b"{", "DELETE")) == {"error": "Invalid JSON format"}
    assert rejection(tester, conf, post(b"{", "POST")) == {"error": "Invalid JSON format"}
    put = tester.call([(NAME, conf)], post(b"{", "PUT"))
    assert (put.action, put.extra_info) == (None, [])


@pytest.mark.parametrize(
    "body", [b"{bad", b"", None, b"\xff\xfe", b'{"email": "a@b.c"} trailing', b"NaN"]
)
def test_invalid_json(tester: PluginTester, body: bytes | None) -> None:
    assert rejection(tester, CONF, post(body)) == {"error": "Invalid JSON format"}


def test_schema_violation_gives_message_and_path(tester: PluginTester) -> None:
    assert violation(tester, CONF, {}) == ("'email' is a required property", "$")
    assert violation(tester, CONF, {"email": "a@b.c", "age": -1}) == (
        "-1 is less than the minimum of 0",
        "$.age",
    )
    assert violation(tester, CONF, {"email": "a@b.c", "tags": ["ok", 5]}) == (
        "5 is not of type 'string'",
        "$.tags[1]",
    )
    assert violation(tester, CONF, {"email": "a@b.c", "address": {"zip": 1}}) == (
        "1 is not of type 'string'",
        "$.address.zip",
    )
    assert violation(tester, CONF, [1]) == ("[1] is not of type 'object'", "$")


def test_the_reported_error_is_deterministic(tester: PluginTester) -> None:
    bad = {"age": "x", "tags": "y", "address": []}
    first = violation(tester, CONF, bad)
    assert all(violation(tester, CONF, bad) == first for _ in range(5))


def test_format_checking(tester: PluginTester) -> None:
    message, path = violation(tester, CONF, {"email": "not-an-email"})
    assert (message, path) == ("'not-an-email' is not a 'email'", "$.email")
    conf = {"schema": {"properties": {"when": {"format": "date-time"}, "ip": {"format": "ipv4"}}}}
    assert violation(tester, conf, {"when": "yesterday"})[1] == "$.when"
    assert violation(tester, conf, {"ip": "999.1.1.1"})[1] == "$.ip"
    ok = tester.call([(NAME, conf)], post(b'{"when": "2024-01-01T00:00:00Z", "ip": "10.0.0.1"}'))
    assert ok.action is None


def test_iri_formats_are_checked_too(tester: PluginTester) -> None:
    conf = {"schema": {"items": {"format": "iri"}}}
    assert violation(tester, conf, ["http://example.com/ü", "not an iri"]) == (
        "'not an iri' is not a 'iri'",
        "$[1]",
    )


def test_long_messages_are_cut(tester: PluginTester) -> None:
    conf = {"schema": {"type": "string", "maxLength": 3}}
    message, _ = violation(tester, conf, "x" * 100_000)
    assert len(message) == MAX_MESSAGE and message.endswith("...")


def test_boolean_schemas(tester: PluginTester) -> None:
    assert tester.call([(NAME, {"schema": True})], post(b"[1]")).action is None
    assert violation(tester, {"schema": False}, {})[1] == "$"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "missing required field `schema`"),
        ({"schema": "object"}, "schema"),
        ({"schema": {"type": "nope"}}, r"schema: 'nope' is not valid .* \(at \$.type\)"),
        ({"schema": {"minimum": "1"}}, r"schema: '1' is not of type 'number' \(at \$.minimum\)"),
        ({**CONF, "methods": ["POST", "FETCH"]}, r"methods: unknown HTTP method\(s\) \['FETCH'\]"),
        ({**CONF, "methods": "POST"}, "methods"),
        ({**CONF, "methods": []}, "methods: must not be empty"),
        ({**CONF, "method": ["POST"]}, "method"),
    ],
)
def test_bad_config_fails_naming_the_field(
    tester: PluginTester, conf: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfError, match=message):
        tester.prepare([(NAME, conf)])


def test_jsonschema_is_imported_on_first_use_only() -> None:
    script = (
        "import sys\n"
        "from runner.bundled_plugins.request_validator import RequestValidator\n"
        "print('jsonschema' in sys.modules)\n"
        'RequestValidator().parse_conf(\'{"schema": {"format": "email"}}\')\n'
        "print('jsonschema' in sys.modules, 'rfc3987_syntax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "False"]


def test_real_runner(runner_factory: RunnerFactory) -> None:
    running = runner_factory()

    async def scenario() -> None:
        async with await running.client() as apisix:
            token = await apisix.prepare_conf([(NAME, json.dumps(CONF))])
            ok = await apisix.call(token, post(b'{"email": "a@b.c"}'))
            assert (ok.action, ok.extra_info) == (None, [("req_body", None)])
            get = await apisix.call(token, post(None, "GET"))
            assert (get.action, get.extra_info) == (None, [])
            bad = await apisix.call(token, post(b'{"email": "a@b.c", "age": "x"}'))
            assert isinstance(bad.action, Stop) and bad.action.status == 400
            assert json.loads(bad.action.body)["path"] == "$.age"
            not_json = await apisix.call(token, post(b"{"))
            assert isinstance(not_json.action, Stop)
            assert json.loads(not_json.action.body) == {"error": "Invalid JSON format"}
            with pytest.raises(RunnerError):
                await apisix.prepare_conf([(NAME, '{"schema": {"type": 5}}')])

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert "plugin 'request-validator': schema: 5 is not valid" in running.log_text()

"""Hostile requests against any plugin, through the real runner.

By default the bundled plugins that need no outside service are tried. Run
your own plugins against the same requests::

    HOSTILE_PLUGIN_DIRS=/opt/my-plugins \\
    HOSTILE_PLUGINS='[["my-auth", {"realm": "x"}], ["my-filter", "raw conf"]]' \\
        .venv/bin/pytest tests/hostile/test_any_plugin.py

Each request must get an answer (a stop, a rewrite, or nothing to change),
never an error frame: SERVICE_UNAVAILABLE means the plugin raised on input a
client can send, and APISIX answers 503 for it. The worker must not be
replaced and must log no traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from runner.testing import HTTPRequest, RunnerError
from runner.testing.pytest_plugin import RunningRunner
from tests.integration.conftest import start_runner

BUNDLED: list[tuple[str, Any]] = [
    ("stop", {"status": 200}),
    ("hello-world", ""),
    ("rewrite", {"path": "/new"}),
    ("header-rewrite", {"add_headers": {"X-A": "1"}, "remove_headers": ["X-Debug"]}),
    ("jwt-auth", {"secret": "k" * 32, "algorithm": "HS256"}),
    ("request-validator", {"schema": {"type": "object"}}),
]
_RAW = "caf" + b"\xe9".decode("utf-8", "surrogateescape")


def plugins() -> list[tuple[str, Any]]:
    given = os.environ.get("HOSTILE_PLUGINS")
    return [tuple(p) for p in json.loads(given)] if given else BUNDLED  # type: ignore[misc]


def requests() -> dict[str, HTTPRequest]:
    nested = b"[" * 3000 + b"]" * 3000
    return {
        "100-headers": HTTPRequest(headers=[(f"x-h{n}", "v") for n in range(100)]),
        "500-args": HTTPRequest(args=[(f"a{n}", None if n % 2 else "1") for n in range(500)]),
        "obs-text": HTTPRequest(
            path="/f/" + _RAW,
            headers=[("cookie", _RAW), ("authorization", _RAW)],
            args=[(_RAW, _RAW)],
        ),
        "empty-names": HTTPRequest(path="", headers=[("", ""), ("x", "")], args=[("", None)]),
        "deep-json": HTTPRequest(
            method="POST", body=nested, headers=[("content-type", "application/json")]
        ),
        "binary-2mib": HTTPRequest(method="POST", body=bytes(range(256)) * 8192),
        "bad-bearer": HTTPRequest(headers=[("authorization", "Bearer " + "a." * 5000)]),
    }


REQUESTS = requests()


@pytest.fixture(scope="module")
def runner() -> Iterator[RunningRunner]:
    dirs = [d for d in os.environ.get("HOSTILE_PLUGIN_DIRS", "").split(os.pathsep) if d]
    config = {"workers": 1, "plugin_dirs": dirs}
    running = start_runner(plugins_dir=None, config=config)
    yield running
    running.stop()


@pytest.mark.parametrize("plugin", plugins(), ids=lambda p: p[0])
def test_every_hostile_request_is_answered(runner: RunningRunner, plugin: tuple[str, Any]) -> None:
    name, conf = plugin
    raw = conf if isinstance(conf, str) else json.dumps(conf)
    offset = len(runner.log_text())

    async def scenario() -> dict[str, str]:
        failures = {}
        async with await runner.client() as c:
            token = await c.prepare_conf([(name, raw)])
            for case, request in REQUESTS.items():
                try:
                    await c.call(token, request)
                except RunnerError as exc:
                    failures[case] = exc.name
        return failures

    assert asyncio.run(scenario()) == {}
    log = runner.log_text()[offset:]
    assert "Traceback" not in log, log
    assert "exited" not in log, log

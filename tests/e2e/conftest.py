"""Set-up of the end-to-end tests: real nginx with the Lua ext-plugin client of
bench/gateway, the real runner, the echo upstream (see bench/gateway/rig.py).

Every test here is skipped, with the reason, only when nginx or its Lua module
is not installed, and the tests that drive load with wrk when wrk is not
installed; CI installs them (.ci/run), so there they run.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The bench package is not installed (only runner is): import it from the checkout.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.gateway import rig  # noqa: E402

HERE = Path(__file__).resolve().parent
JWT_SECRET = "e2e-jwt-secret-0123456789abcdef0123"
PLUGINS_DIR = str(HERE / "e2e_plugins")
MISSING = rig.missing_requirements()
NEEDS_WRK = ("test_reload.py",)  # whole modules; test_wrk_scripts.py marks its one test


def wrk_missing() -> str | None:
    """Why the wrk tests cannot run here, or None when wrk is on PATH."""
    return None if shutil.which("wrk") else "wrk is not installed (apt-get install wrk)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if (reason := wrk_missing()) is None:
        return
    for item in items:
        if item.path.parent == HERE and item.path.name in NEEDS_WRK:
            item.add_marker(pytest.mark.skip(reason=f"this test drives load with wrk: {reason}"))


@pytest.fixture(scope="session", autouse=True)
def _nginx_lua() -> None:
    if MISSING is not None:
        pytest.skip(f"end-to-end tests need nginx with its Lua module: {MISSING}")


def ext(phase: str, *conf: tuple[str, Any], **options: Any) -> dict[str, Any]:
    """``plugins`` of a route: one ext-plugin phase running ``conf`` in order."""
    entries = [{"name": name, "value": value} for name, value in conf]
    return {phase: {"conf": entries, **options}}


def pre(*conf: tuple[str, Any], **options: Any) -> dict[str, Any]:
    return ext("ext-plugin-pre-req", *conf, **options)


ROUTES: dict[str, Any] = {
    "routes": [
        {"uri": "/proxy", "id": "proxy"},
        {
            "uri": "/stop",
            "plugins": pre(
                ("stop", {"status": 403, "headers": {"X-Reason": "blocked"}, "body": "no"})
            ),
        },
        {"uri": "/stop-default", "plugins": pre(("stop", {}))},
        {
            "uri": "/rewrite",
            "plugins": pre(
                (
                    "rewrite",
                    {
                        "path": "/v2/a b/é#%",
                        "headers": {"X-A": "1", "X-Drop": None, "Host": "example.test"},
                        "args": {"lang": "en", "debug": None},
                        "resp_headers": {"X-Served-By": "py", "Content-Type": "evil/x"},
                    },
                )
            ),
        },
        {"uri": "/rewrite-headers", "plugins": pre(("rewrite", {"headers": {"X-A": "1"}}))},
        {
            "uri": "/args",
            "plugins": pre(
                ("e2e-args", {"set": {"a": ["foo", "bar"], "c": ["x"]}, "delete": ["d"]})
            ),
        },
        {"uri": "/body", "plugins": pre(("e2e-set-body", "abc\n"))},
        {"uri": "/seen", "id": "seen", "plugins": pre(("e2e-seen", ""))},
        {
            "uri": "/extra",
            "id": "extra-route",
            "plugins": pre(
                (
                    "e2e-extra",
                    {
                        "vars": [
                            "remote_addr",
                            "route_id",
                            "arg_x",
                            "request_method",
                            "no_such_var",
                        ],
                        "body": True,
                    },
                )
            ),
        },
        {
            "uri": "/two-phases",
            "plugins": {
                **pre(("rewrite", {"path": "/rewritten", "args": {"p": "1"}})),
                **ext("ext-plugin-post-req", ("e2e-seen", "")),
            },
        },
        {
            "uri": "/chain",
            "plugins": pre(
                ("rewrite", {"headers": {"X-First": "1"}}),
                ("hello-world", {}),
            ),
        },
        {
            "uri": "/prefix/*",
            "id": "prefix",
            "plugins": pre(("rewrite", {"headers": {"X-P": "1"}})),
        },
        {
            "uri": "/resp",
            "plugins": ext(
                "ext-plugin-post-resp",
                (
                    "response-rewrite",
                    {
                        "status": 201,
                        "headers": {"X-Cache": "miss", "X-Up-Drop": None},
                        "body": "replaced",
                    },
                ),
            ),
        },
        {
            "uri": "/resp-headers",
            "plugins": ext(
                "ext-plugin-post-resp", ("response-rewrite", {"headers": {"X-Cache": "hit"}})
            ),
        },
        {
            "uri": "/resp-status",
            "plugins": ext("ext-plugin-post-resp", ("response-rewrite", {"status": 418})),
        },
        {
            "uri": "/resp-none",
            "plugins": ext("ext-plugin-post-resp", ("response-rewrite", {})),
        },
        {"uri": "/resp-body", "plugins": ext("ext-plugin-post-resp", ("e2e-resp-body", ""))},
        {"uri": "/multi", "plugins": pre(("e2e-multi", ""))},
        {"uri": "/multi-stop", "plugins": pre(("e2e-multi", "stop"))},
        {"uri": "/bad-plugin", "plugins": pre(("no-such-plugin", {}))},
        {"uri": "/jwt", "plugins": pre(("jwt-auth", {"secret": JWT_SECRET, "algorithm": "HS256"}))},
        {
            "uri": "/bad-plugin-degraded",
            "plugins": pre(("no-such-plugin", {}), allow_degradation=True),
        },
    ]
}


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def echo(self) -> dict[str, Any]:
        """The echo upstream's description of the request it received."""
        assert self.status < 300, (self.status, self.body)
        data: dict[str, Any] = json.loads(self.body)
        data["args"] = [tuple(a) for a in data["args"] or []]
        data["headers"] = [tuple(h) for h in data["headers"]]
        data["header_map"] = {}
        for name, value in data["headers"]:
            data["header_map"].setdefault(name.lower(), []).append(value)
        return data


def request(
    gw: rig.Rig,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> Reply:
    """One request on a fresh connection; any status is returned, not raised."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    try:
        items = list(headers.items() if isinstance(headers, dict) else headers or [])
        has_host = any(name.lower() == "host" for name, _ in items)
        conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="session")
def gateway() -> Iterator[rig.Rig]:
    """One rig for the session: nginx + a runner with the e2e test plugins."""
    gw = rig.start(ROUTES, plugin_dirs=[PLUGINS_DIR])
    try:
        yield gw
    finally:
        gw.stop()

"""The unit-level kit: plugins run in-process give the replies a worker sends."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from runner import ConfError, Plugin, Request, Response, UpstreamResponse
from runner.testing import HTTPRequest, PluginTester, Rewrite, Stop, apply_rewrite


class Tag(Plugin):
    name = "tag"

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header: str
        value: str

    def filter(self, conf: Config, request: Request, response: Response) -> None:
        request.headers[conf.header] = conf.value
        request.args["seen"] = "1"


class NeedsVar(Plugin):
    name = "needs-var"
    started = 0
    stopped = 0

    def startup(self) -> None:
        type(self).started += 1

    async def shutdown(self) -> None:
        type(self).stopped += 1

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        addr = await request.var("remote_addr")
        body = await request.body()
        if addr != "10.0.0.1":
            response.stop(403, f"{addr} {len(body)}")


class Boom(Plugin):
    name = "boom"

    def filter(self, conf: str, request: Request, response: Response) -> None:
        raise KeyError("broken plugin")


class Upper(Plugin):
    name = "upper"

    async def response_filter(self, conf: str, response: UpstreamResponse) -> None:
        response.headers["X-Len"] = str(len(await response.body()))
        response.set_body((await response.body()).upper())


def test_rewrite_as_apisix_applies_it() -> None:
    req = HTTPRequest(path="/a", args=[("seen", "0"), ("q", "x")], headers=[("x-a", "old")])
    with PluginTester(Tag) as t:
        result = t.call([("tag", {"header": "X-A", "value": "new"})], req)
    assert isinstance(result.action, Rewrite)
    upstream = apply_rewrite(req, result.action)
    assert ("x-a", "new") in upstream.headers and ("x-a", "old") not in upstream.headers
    assert sorted(upstream.args) == [("q", "x"), ("seen", "1")]
    assert result.extra_info == []


def test_extra_info_answered_from_the_request_and_hooks_run() -> None:
    NeedsVar.started = NeedsVar.stopped = 0
    with PluginTester(NeedsVar) as t:
        assert NeedsVar.started == 1
        ok = t.call([("needs-var", "")], HTTPRequest(vars={"remote_addr": "10.0.0.1"}))
        denied = t.call([("needs-var", "")], HTTPRequest(body=b"abc"))
    assert NeedsVar.stopped == 1
    assert ok.action is None
    assert ok.extra_info == [("var", "remote_addr"), ("req_body", None)]
    assert isinstance(denied.action, Stop)
    assert (denied.action.status, denied.action.body) == (403, b"None 3")


def test_chain_stops_at_the_first_stop() -> None:
    with PluginTester(Tag, bundled=True) as t:
        result = t.call(
            [("stop", '{"status": 401, "body": "no"}'), ("tag", {"header": "X", "value": "1"})],
            HTTPRequest(),
        )
    assert result.action == Stop(status=401, headers=[], body=b"no")


def test_bad_config_and_raising_plugin_surface_as_exceptions() -> None:
    with PluginTester(Tag, Boom) as t:
        with pytest.raises(ConfError, match="value"):
            t.prepare([("tag", {"header": "X"})])
        with pytest.raises(KeyError, match="broken plugin"):
            t.call([("boom", "")], HTTPRequest())


def test_response_phase_and_async_use() -> None:
    async def scenario() -> None:
        async with PluginTester(Upper) as t:
            result = await t.arespond(
                [("upper", "")], 200, {"Content-Type": "text/plain"},
                HTTPRequest(resp_body=b"hello"),
            )  # fmt: skip
        assert result.body == b"HELLO"
        assert ("X-Len", "5") in result.headers and ("Content-Type", "text/plain") in result.headers
        assert result.extra_info == [("resp_body", None)]

    asyncio.run(scenario())


def test_sync_methods_need_the_context_manager() -> None:
    with pytest.raises(RuntimeError, match="with PluginTester"):
        PluginTester(Tag).call([("tag", {"header": "X", "value": "1"})], HTTPRequest())

"""Unit-level plugin tests: run plugins in-process, without a socket or a runner.

:class:`PluginTester` does what a worker does with one call (decode the config
as PrepareConf would, decode an HTTPReqCall, run the chain, build the reply
frame), then parses the reply back the way APISIX reads it. A test sees exactly
the Stop or Rewrite APISIX would apply; :func:`runner.testing.apply_rewrite`
shows the request the upstream would get::

    from runner.testing import HTTPRequest, PluginTester, Stop

    def test_blocks_without_key():
        with PluginTester(ApiKey) as t:
            result = t.call([("api-key", {"keys": ["k1"]})], HTTPRequest(path="/x"))
        assert isinstance(result.action, Stop) and result.action.status == 401

ExtraInfo questions (``await request.var(...)``, ``await request.body()``) are
answered from the request's ``vars`` / ``body`` and listed in
``result.extra_info``. A plugin that raises makes the call raise that same
exception (a worker would answer SERVICE_UNAVAILABLE), so the test shows the
plugin's own traceback. ``startup()`` / ``shutdown()`` run when the ``with``
block opens and closes, on the event loop the calls run on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from runner.api import dispatch
from runner.api.chain import Chain, build_chain
from runner.api.discovery import bundled_plugins_dir, load_plugins
from runner.api.plugin import Plugin, run_hooks
from runner.compat import ADAPTERS
from runner.proto import InfoType, ReqCallView, RespCallView
from runner.testing.frames import (
    Entries,
    HTTPRequest,
    ReqCallResult,
    RespCallResult,
    build_req_call,
    build_resp_call,
    parse_req_call_resp,
    parse_resp_call_resp,
)

#: A route's conf as a test writes it: (plugin name, config). The config may be
#: the string APISIX would send or anything JSON-encodable (encoded with orjson).
ConfList = Sequence[tuple[str, Any]]
_T = TypeVar("_T")


def _conf_strings(conf: ConfList) -> list[tuple[str, str]]:
    return [(name, v if isinstance(v, str) else orjson.dumps(v).decode()) for name, v in conf]


def _instances(plugins: Iterable[Plugin | type[Plugin]]) -> dict[str, Plugin]:
    found: dict[str, Plugin] = {}
    for p in plugins:
        plugin = p() if isinstance(p, type) else p
        if plugin.name in found:
            raise ValueError(f"two plugins are named {plugin.name!r}")
        found[plugin.name] = plugin
    return found


class _Asker:
    """Answers a call's ExtraInfo questions from an HTTPRequest, as APISIX would."""

    def __init__(self, request: HTTPRequest, in_response: bool) -> None:
        self._request = request
        self._in_response = in_response
        self.asked: Entries = []

    async def __call__(self, info_type: int, name: str | None) -> bytes | None:
        if info_type == InfoType.VAR:
            self.asked.append(("var", name))
            value = self._request.vars.get(name or "")
            return None if value is None else value.encode()
        if info_type == InfoType.REQ_BODY:
            self.asked.append(("req_body", None))
            return self._request.body
        self.asked.append(("resp_body", None))
        # APISIX answers RespBody only in the post-resp phase.
        return self._request.resp_body if self._in_response else None


def _unwrap(exc: Exception) -> Exception:
    # A worker maps a raising plugin to SERVICE_UNAVAILABLE; a unit test wants
    # the plugin's own exception and traceback.
    if isinstance(exc, dispatch.PluginFailed) and isinstance(exc.__cause__, Exception):
        return exc.__cause__
    return exc


async def _open_sockets_closed(timeout: float = 0.5) -> None:
    """Let the connections plugins closed at shutdown finish closing before the
    test's event loop goes: a TLS close takes a round trip with the peer (a
    refused Redis login, say), and a loop closed under it leaves the socket to
    the garbage collector, which warns (ResourceWarning). A worker's loop
    outlives its connections; a test's does not. Bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    # asyncio's selector loops keep fd -> transport; uvloop has no such table.
    transports = getattr(loop, "_transports", None)
    deadline = loop.time() + timeout
    while transports and loop.time() < deadline:
        if all(getattr(t, "_sock", None) is None for t in list(transports.values())):
            return
        await asyncio.sleep(0.005)


class PluginTester:
    """Runs plugin chains in-process, exactly as a worker would.

    ``plugins``: Plugin classes or instances; ``plugin_dirs``: directories to
    load as the runner would (every ``*.py``); ``bundled``: also load the
    runner's bundled plugins. Use it as a context manager (sync tests) or an
    async one (tests that already run an event loop); the ``a``-prefixed
    methods are the coroutine versions.
    """

    def __init__(
        self,
        *plugins: Plugin | type[Plugin],
        plugin_dirs: Iterable[str | Path] = (),
        bundled: bool = False,
    ) -> None:
        dirs = [Path(d) for d in plugin_dirs]
        if bundled:
            dirs.insert(0, bundled_plugins_dir())
        self.plugins: dict[str, Plugin] = (
            load_plugins(dirs, entry_points=False, adapters=ADAPTERS) if dirs else {}
        )
        for name, plugin in _instances(plugins).items():
            if name in self.plugins:
                raise ValueError(f"two plugins are named {name!r}")
            self.plugins[name] = plugin
        self._runner: asyncio.Runner | None = None

    # -- lifecycle

    async def astartup(self) -> None:
        await run_hooks(self.plugins, "startup")

    async def ashutdown(self) -> None:
        await run_hooks(self.plugins, "shutdown")

    def __enter__(self) -> Self:
        self._runner = asyncio.Runner()
        self._runner.run(self.astartup())
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._runner is not None
        try:
            self._runner.run(self.ashutdown())
            self._runner.run(_open_sockets_closed())
        finally:
            self._runner.close()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.astartup()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.ashutdown()

    # -- calls

    def prepare(self, conf: ConfList, key: str = "route#1") -> Chain:
        """Decode a route's configs as PrepareConf does (raises ConfError)."""
        return build_chain(self.plugins, key, _conf_strings(conf))

    async def acall(self, conf: ConfList | Chain, request: HTTPRequest) -> ReqCallResult:
        """The HTTPReqCall reply for ``request`` through the route's chain."""
        chain = conf if isinstance(conf, Chain) else self.prepare(conf)
        view = ReqCallView(memoryview(build_req_call(1, request)))
        asker = _Asker(request, in_response=False)
        try:
            if chain.req_async:
                frame = await dispatch.run_req_async(chain, view, asker)
            else:
                frame = dispatch.run_req_sync(chain, view, asker)
        except Exception as exc:
            raise _unwrap(exc) from None
        return parse_req_call_resp(bytes(frame[4:]), asker.asked)

    async def arespond(
        self,
        conf: ConfList | Chain,
        status: int,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        request: HTTPRequest | None = None,
    ) -> RespCallResult:
        """The HTTPRespCall reply for an upstream answer of ``status`` and
        ``headers``; ``request.resp_body`` / ``vars`` answer ExtraInfo."""
        chain = conf if isinstance(conf, Chain) else self.prepare(conf)
        request = request or HTTPRequest()
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        view = RespCallView(memoryview(build_resp_call(1, request.id, status, pairs)))
        asker = _Asker(request, in_response=True)
        try:
            frame = await dispatch.run_resp(chain, view, asker)
        except Exception as exc:
            raise _unwrap(exc) from None
        return parse_resp_call_resp(bytes(frame[4:]), asker.asked)

    def call(self, conf: ConfList | Chain, request: HTTPRequest) -> ReqCallResult:
        return self._run(self.acall(conf, request))

    def respond(
        self,
        conf: ConfList | Chain,
        status: int,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        request: HTTPRequest | None = None,
    ) -> RespCallResult:
        return self._run(self.arespond(conf, status, headers, request))

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._runner is None:
            coro.close()
            raise RuntimeError("use `with PluginTester(...) as t:` (or the async methods)")
        return self._runner.run(coro)

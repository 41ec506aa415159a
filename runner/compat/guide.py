"""Runs plugins written in the ``apisix.plugin.*`` style of the Chinese APISIX
Python plugin guide ("Apache APISIX Python插件开发实战指南"), unchanged::

    from apisix.plugin.runner import Plugin, PluginRunner
    from apisix.plugin.request import Request
    from apisix.plugin.response import Response

    class HeaderRewritePlugin(Plugin):
        def __init__(self):
            self.name = "header-rewrite"
            self.config = {}

        def set_config(self, conf: str):
            self.config = json.loads(conf)

        def filter(self, request: Request, response: Response):
            for key, value in self.config.get("add_headers", {}).items():
                request.headers[key] = value
            return True

How it maps onto this runner (docs/migration.md has the long version):

* **One instance per route.** The guide keeps a route's state on the plugin
  (``self.config``, clients built in ``set_config``), so each prepared route
  config gets its own instance: ``cls()`` then ``set_config(conf)``, at
  PrepareConf, in the worker's running event loop (an ``aiohttp.ClientSession()``
  made in ``__init__`` works there). It lives and goes with the conf store's
  entry for that route. ``set_config`` raising rejects the route (PrepareConf
  fails with the message).
* ``filter(request, response)`` and/or ``async def filter_async(...)`` (preferred
  when both exist). Returning ``False``, or setting ``response.status_code`` or
  ``response.body``, stops the request (``False`` alone answers 403); anything
  else goes on. Headers set on ``response`` without a status are added to the
  upstream's response.
* ``request.body`` in a plain ``def filter`` is fetched from APISIX before the
  filter runs (only for plugins whose filter reads it).
* Plugin instances made outside a running event loop (``PluginRunner().register(
  MyPlugin())`` at the bottom of a file, a unit test) run ``__init__`` in a
  short-lived loop, so ``aiohttp.ClientSession()`` does not refuse; that
  instance only names the plugin, and sessions it opened are closed.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import json
import textwrap
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from runner.api.http import Request as NativeRequest
from runner.api.http import Response as NativeResponse
from runner.api.multidict import Args, Headers, MultiDict
from runner.api.plugin import ConfError, PluginError
from runner.api.plugin import Plugin as NativePlugin
from runner.compat.adapter import (
    apply_mapping,
    as_bytes,
    body_text,
    classes_defined_in,
    first_values,
    plugin_class,
)

FORBIDDEN = 403  # `return False` with nothing set on the response
_closing: set[asyncio.Task[None]] = set()


# --------------------------------------------------------------------------- the plugin base


async def _close_sessions(instance: object) -> None:
    """Close what an instance made outside the worker opened (aiohttp sessions
    and the like: attributes with an async ``close``)."""
    for value in list(getattr(instance, "__dict__", {}).values()):
        close = getattr(value, "close", None)
        if close is not None and inspect.iscoroutinefunction(close):
            await close()


def _loop_safe(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:

            async def build() -> None:
                init(self, *args, **kwargs)
                await _close_sessions(self)

            asyncio.run(build())
            return
        init(self, *args, **kwargs)

    return __init__


class Plugin:
    """``apisix.plugin.runner.Plugin``: set ``self.name`` in ``__init__`` (or as a
    class attribute); override ``set_config``, ``filter`` and/or ``filter_async``."""

    name: str = ""
    config: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _loop_safe(init)  # type: ignore[method-assign]

    def set_config(self, conf: str) -> None:
        """The route's config string; JSON is decoded into ``self.config``."""
        self.config = json.loads(conf) if conf.strip() else {}


# --------------------------------------------------------------------------- request, response


def _replace(target: MultiDict, wanted: Mapping[Any, Any]) -> None:
    apply_mapping(target, wanted, first_values(target))


class Request:
    """``apisix.plugin.request.Request``. Built by the runner around the call;
    ``Request()`` alone is an empty request for unit tests (keyword arguments
    fill it)."""

    def __init__(
        self,
        native: NativeRequest | None = None,
        body: bytes | None = None,
        *,
        method: str = "GET",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        args: Mapping[str, str] | None = None,
        remote_addr: str = "",
    ) -> None:
        self._native = native
        self._body = body_text(body) if body is not None else None
        if native is None:
            self._headers: Headers = Headers(list((headers or {}).items()))
            self._args: Args = Args(list((args or {}).items()))
            self._method, self._path, self._remote_addr = method, path, remote_addr
            self._body = self._body or ""

    @property
    def headers(self) -> Headers:
        """Case-insensitive (``"User-Agent"`` finds APISIX's ``user-agent``)."""
        return self._native.headers if self._native is not None else self._headers

    @headers.setter
    def headers(self, value: Mapping[str, str]) -> None:
        _replace(self.headers, value)

    @property
    def args(self) -> Args:
        return self._native.args if self._native is not None else self._args

    @args.setter
    def args(self, value: Mapping[str, str]) -> None:
        _replace(self.args, value)

    @property
    def path(self) -> str:
        return self._native.path if self._native is not None else self._path

    @path.setter
    def path(self, value: str) -> None:
        if self._native is not None:
            self._native.path = value
        else:
            self._path = value

    @property
    def method(self) -> str:
        return self._native.method if self._native is not None else self._method

    @property
    def remote_addr(self) -> str:
        return self._native.src_ip if self._native is not None else self._remote_addr

    @property
    def id(self) -> int:
        return self._native.id if self._native is not None else 0

    @property
    def body(self) -> str:
        if self._body is None:
            raise RuntimeError(
                "request.body was not fetched: read it in filter itself, or use filter_async "
                "with `await request.native.body()`"
            )
        return self._body

    @body.setter
    def body(self, value: str | bytes) -> None:
        self._body = value if isinstance(value, str) else body_text(value)
        if self._native is not None:
            self._native.set_body(as_bytes(value))

    @property
    def native(self) -> NativeRequest | None:
        """This runner's own request (``await request.native.var(...)``)."""
        return self._native


class Response:
    """``apisix.plugin.response.Response``: a status or body stops the request."""

    def __init__(self, native: NativeResponse | None = None) -> None:
        self._native = native if native is not None else NativeResponse()

    @property
    def status_code(self) -> int | None:
        return self._native.status

    @status_code.setter
    def status_code(self, value: int | None) -> None:
        self._native.status = value

    @property
    def body(self) -> bytes | None:
        return self._native.body

    @body.setter
    def body(self, value: str | bytes | None) -> None:
        self._native.body = None if value is None else as_bytes(value)

    @property
    def headers(self) -> Headers:
        return self._native.headers

    @headers.setter
    def headers(self, value: Mapping[str, str]) -> None:
        _replace(self._native.headers, value)


# --------------------------------------------------------------------------- the wrapper


def _finish(result: Any, response: NativeResponse) -> None:
    if result is False and not response.stopped:
        response.status = FORBIDDEN


class GuidePlugin(NativePlugin):
    """A :class:`runner.Plugin` that runs one guide-style class (``guide_class``)
    with an instance per route."""

    guide_class: ClassVar[type[Plugin]]

    def parse_conf(self, raw: str) -> Any:
        try:
            instance = self.guide_class()
            instance.set_config(raw)
        except Exception as exc:
            raise ConfError(f"{type(exc).__name__}: {exc}") from exc
        return instance

    def release_conf(self, conf: Any) -> None:
        """The route's instance is dropped (evicted, expired, replaced): close
        the sessions it opened, as aiohttp asks, instead of leaving them to the
        garbage collector and its "Unclosed client session" errors."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(_close_sessions(conf))
        _closing.add(task)  # a task nobody references may be collected unfinished
        task.add_done_callback(_closing.discard)


class _Sync(GuidePlugin):
    def filter(self, conf: Any, request: NativeRequest, response: NativeResponse) -> None:
        _finish(conf.filter(Request(request), Response(response)), response)


class _SyncWithBody(GuidePlugin):
    async def filter(self, conf: Any, request: NativeRequest, response: NativeResponse) -> None:
        body = await request.body()
        _finish(conf.filter(Request(request, body), Response(response)), response)


class _Async(GuidePlugin):
    async def filter(self, conf: Any, request: NativeRequest, response: NativeResponse) -> None:
        method = conf.filter_async if hasattr(conf, "filter_async") else conf.filter
        _finish(await method(Request(request), Response(response)), response)


def _function_ast(fn: Any) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None


def _reads_body(fn: Any) -> bool:
    """Whether a filter reads ``<its request parameter>.body``; True when its
    source cannot be read (fetching is always correct, only slower)."""
    node = _function_ast(fn)
    if node is None or len(node.args.args) < 2:
        return True
    param = node.args.args[1].arg  # (self, request, response)
    return any(
        isinstance(n, ast.Attribute) and n.attr == "body"
        and isinstance(n.value, ast.Name) and n.value.id == param
        for n in ast.walk(node)
    )  # fmt: skip


def _base(cls: type[Plugin]) -> type[GuidePlugin]:
    if inspect.iscoroutinefunction(getattr(cls, "filter_async", None)):
        return _Async
    if inspect.iscoroutinefunction(getattr(cls, "filter", None)):
        return _Async
    return _SyncWithBody if _reads_body(getattr(cls, "filter", None)) else _Sync


def _literal_name(cls: type[Plugin]) -> str | None:
    """``self.name = "..."`` in ``__init__``, read from the source: the class is
    not instantiated just to learn its name."""
    if isinstance(cls.__dict__.get("name"), str) and cls.__dict__["name"]:
        return str(cls.__dict__["name"])
    init = cls.__dict__.get("__init__")
    node = _function_ast(getattr(init, "__wrapped__", init)) if init is not None else None
    for n in ast.walk(node) if node is not None else ():
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant):
            for target in n.targets:
                if (
                    isinstance(target, ast.Attribute) and target.attr == "name"
                    and isinstance(target.value, ast.Name) and target.value.id == "self"
                    and isinstance(n.value.value, str)
                ):  # fmt: skip
                    return n.value.value
    return None


def _name(cls: type[Plugin]) -> str:
    name = _literal_name(cls)
    if name is None:
        try:
            name = cls().name
        except Exception as exc:
            raise PluginError(
                f"plugin class {cls.__qualname__}: {cls.__name__}() raised {exc!r}"
            ) from exc
    if not isinstance(name, str) or not name:
        raise PluginError(
            f'plugin class {cls.__qualname__} has no name: set `self.name = "..."` in __init__'
        )
    return name


def wrap(cls: type[Plugin], name: str | None = None) -> type[GuidePlugin]:
    """The :class:`runner.Plugin` class that runs a guide-style plugin class."""
    if not (callable(getattr(cls, "filter", None)) or hasattr(cls, "filter_async")):
        raise PluginError(
            f"plugin class {cls.__qualname__} defines neither filter nor filter_async"
        )
    return plugin_class(_base(cls), "Guide", cls, name or _name(cls), guide_class=cls)


def plugin_classes(module: types.ModuleType) -> Iterator[type[NativePlugin]]:
    """The wrapped guide-style plugin classes a plugin module defines."""
    for cls in classes_defined_in(module):
        if issubclass(cls, Plugin) and cls is not Plugin:
            yield wrap(cls)


def install() -> bool:
    """Nothing to install: ``apisix.plugin.*`` ship as modules of this
    distribution (they import this one)."""
    return True

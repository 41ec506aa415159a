"""Runs plugins written for the old official Python runner, unchanged.

apache/apisix-python-plugin-runner (0.2.0) plugins look like this::

    from apisix.runner.plugin.core import PluginBase
    from apisix.runner.http.request import Request
    from apisix.runner.http.response import Response

    class Stop(PluginBase):
        def name(self) -> str:
            return "stop"

        def config(self, conf: Any) -> Any:
            return conf

        def filter(self, conf: Any, request: Request, response: Response):
            response.set_status_code(403)

Dropped into a plugin directory, such a file runs here as it is:
:func:`install` registers small modules under those three import paths, and
discovery (:func:`plugin_classes`, called by ``runner.api.discovery``) wraps every
``PluginBase`` subclass as a :class:`LegacyPlugin`, a normal :class:`Plugin`.

What is kept from the old runner, and what is not (docs/migration.md has the
long version):

* ``name()`` is called on the class, as the old runner did (``cls.name(cls)``).
* ``config(conf)`` gets the raw config string, but runs **once per route** (at
  PrepareConf, on a fresh instance) instead of once per request. Each request
  then runs ``filter`` on a shallow copy of that instance, so attributes that
  ``config`` sets are seen and attributes that ``filter`` sets stay private to
  the request, as with the old runner's instance per request.
* Calling ``set_header``, ``set_body`` or ``set_status_code`` on the response
  (or putting anything in the dict of ``response.get_headers()``) answers the
  client at once (Stop, status 200 unless set) and ends the chain.
* Only what the plugin changed goes upstream. The old runner re-sent every
  header and arg on every request, collapsing multi-valued ones and dropping
  args without a value (or failing on them); here untouched ones are never sent.
* ``get_body()`` is the body decoded as UTF-8 (undecodable bytes kept as
  surrogate escapes, so ``response.set_body(request.get_body())`` gives back the
  same bytes), not one ``chr()`` per byte.
* A plugin that raises fails the request with SERVICE_UNAVAILABLE in a proper
  error frame; the same name twice in a route runs twice.

Old filters are synchronous, but ``get_var()`` and ``get_body()`` are a round
trip to APISIX on the event loop. A sync function cannot await, so a plugin
whose source mentions ``get_var`` or ``get_body`` runs in a worker thread and
those calls wait there on :func:`asyncio.run_coroutine_threadsafe`, while the
event loop keeps serving other requests and carries the ExtraInfo exchange.
Every other old plugin runs inline on the event loop, exactly like a native
``def filter`` (about 25 µs cheaper per call than the thread hop). A class
attribute ``run_in_thread = True`` (or ``False``) overrides the guess, e.g. for
a plugin that makes blocking network calls. Re-running the filter after
pre-fetching was rejected: a filter with side effects would run them twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import types
from collections.abc import Coroutine, Iterator
from typing import Any, ClassVar, TypeVar

from runner.api.http import Request, Response
from runner.api.multidict import Headers, MultiDict
from runner.api.plugin import ConfError, Plugin, PluginError
from runner.compat import shims
from runner.compat.adapter import (
    as_bytes,
    body_text,
    classes_defined_in,
    derives_from,
    first_values,
    plugin_class,
    source_mentions,
    text,
)
from runner.ops.logs import LogLimiter

log = logging.getLogger("runner.compat")
_limited = LogLimiter(log)  # per-request lines: once, then a count every 10 s

_T = TypeVar("_T")

#: The module the old runner's ``PluginBase`` lives in; old plugins import it from there.
CORE_MODULE = "apisix.runner.plugin.core"
REQUEST_MODULE = "apisix.runner.http.request"
RESPONSE_MODULE = "apisix.runner.http.response"

# Names whose presence in a plugin's source makes it run in a worker thread.
_FETCHES = frozenset(("get_var", "get_body"))
_STATUS_MIN, _STATUS_MAX = 100, 599
# What the old set_method accepted.
_OLD_METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"))


# --------------------------------------------------------------------------- base class


class PluginBase:
    """The old runner's plugin base class (``apisix.runner.plugin.core.PluginBase``).

    Subclasses define ``name()``, ``config(conf)`` and ``filter(conf, request,
    response)``. The defaults do nothing, as in the old runner, except that
    ``config`` passes the raw string through instead of returning None.
    """

    def name(self) -> str | None:
        return None

    def config(self, conf: Any) -> Any:
        return conf

    def filter(self, conf: Any, request: LegacyRequest, response: LegacyResponse) -> Any:
        return None


# Old plugins (and the duck-typed check in _is_legacy) know it by this module.
PluginBase.__module__ = CORE_MODULE


# --------------------------------------------------------------------------- ExtraInfo, threads


class _Bridge:
    """Lets a filter running in a worker thread wait for a coroutine on the loop.

    When the call ends early (timeout, connection lost) the awaiting task is
    cancelled; :meth:`close` then cancels the question the thread waits on, so
    the thread is never left blocked on an answer that will not come.
    """

    __slots__ = ("_closed", "_lock", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[Any] | None = None
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("the call is over (timed out or APISIX disconnected)")
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._pending = fut
        try:
            return fut.result()
        finally:
            with self._lock:
                self._pending = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fut = self._pending
        if fut is not None:
            fut.cancel()


def _fetch(bridge: _Bridge | None, coro: Coroutine[Any, Any, _T], what: str) -> _T:
    if bridge is None:
        # Inline on the event loop: awaiting is impossible. Only reached when the
        # source scan missed the call (e.g. a helper in another module makes it).
        coro.close()
        raise RuntimeError(
            f"{what} asks APISIX, so the plugin must run in a worker thread: "
            "set `run_in_thread = True` on its class"
        )
    return bridge.run(coro)


# --------------------------------------------------------------------------- request


class _DictView:
    """The plain dict the old API hands out for headers or args.

    The old runner returned its internal dict, so plugins mutate it in place
    (``request.get_headers()["X-A"] = "1"``). Before every other access and when
    the filter returns, entries that differ from the last snapshot are written to
    the real multi-valued mapping; untouched ones never are, so passthrough
    leaves multi-valued headers and value-less args alone. Removing a key does
    nothing, as before: the old runner could not delete.
    """

    __slots__ = ("current", "snapshot", "target")

    def __init__(self, target: MultiDict, current: dict[Any, Any]) -> None:
        self.target = target
        self.current = current
        self.snapshot = dict(current)

    def sync(self) -> None:
        current, snapshot = self.current, self.snapshot
        if current == snapshot:
            return
        for key, value in current.items():
            if snapshot.get(key, _MISSING) != value:
                _put(self.target, key, value, if_changed=True)
        self.snapshot = dict(current)

    def note(self, key: str, value: str) -> None:
        # A setter's write shows in the handed-out dict too, as in the old runner
        # (under the dict's own spelling of a header name: they are case-insensitive).
        if isinstance(self.target, Headers):
            lower = key.lower()
            key = next((k for k in self.current if isinstance(k, str) and k.lower() == lower), key)
        self.current[key] = value
        self.snapshot[key] = value


_MISSING = object()


def _put(target: MultiDict, key: Any, value: Any, if_changed: bool = False) -> bool:
    """The old setters' rule: a name and a non-empty value, or nothing happens.

    ``if_changed`` (whole-dict writes): a value equal to the current first one
    is not a change, so ``set_headers(get_headers())`` neither collapses
    multi-valued headers nor sends anything. A single ``set_header`` is taken
    at its word without reading the request's headers, like a native plugin.
    """
    if not key or value is None or value == "":
        return False
    name, value_text = text(key), text(value)
    if not if_changed or target.get(name) != value_text:
        target[name] = value_text
    return True


class LegacyRequest:
    """The old ``apisix.runner.http.request.Request`` API over this runner's
    :class:`~runner.api.http.Request`. Setters return True when they did something."""

    __slots__ = (
        "_args", "_body", "_bridge", "_conf_token", "_configs", "_headers", "_id", "_method",
        "_remote_addr", "_req", "_vars",
    )  # fmt: skip

    def __init__(self, request: Request, bridge: _Bridge | None = None) -> None:
        self._req = request
        self._bridge = bridge
        self._headers: _DictView | None = None
        self._args: _DictView | None = None
        self._body: str | None = None
        self._vars: dict[str, str] = {}
        self._configs: dict[str, Any] = {}
        # Local overrides of read-only fields (the old setters only changed what
        # the plugin reads back; the protocol cannot change them either).
        self._method: str | None = None
        self._remote_addr: str | None = None
        self._id: int | None = None
        self._conf_token: int | None = None

    # -- headers

    def get_header(self, key: str) -> str | None:
        if self._headers is not None:
            self._headers.sync()
        return self._req.headers.get(key)

    def set_header(self, key: str, value: str) -> bool:
        if self._headers is not None:
            self._headers.sync()
        done = _put(self._req.headers, key, value)
        if done and self._headers is not None:
            self._headers.note(text(key), text(value))
        return done

    def get_headers(self) -> dict[str, str]:
        view = self._headers
        if view is None:
            view = self._headers = _DictView(self._req.headers, first_values(self._req.headers))
        else:
            view.sync()
        return view.current

    def set_headers(self, headers: dict[str, str]) -> bool:
        return self._set_all(headers, self._req.headers, "_headers")

    # -- args

    def get_arg(self, key: str) -> str | None:
        if self._args is not None:
            self._args.sync()
        args = self._req.args
        if key not in args:
            return None
        value = args[key]
        return "" if value is None else value

    def set_arg(self, key: str, value: str) -> bool:
        if self._args is not None:
            self._args.sync()
        done = _put(self._req.args, key, value)
        if done and self._args is not None:
            self._args.note(text(key), text(value))
        return done

    def get_args(self) -> dict[str, str]:
        view = self._args
        if view is None:
            view = self._args = _DictView(self._req.args, first_values(self._req.args))
        else:
            view.sync()
        return view.current

    def set_args(self, args: dict[str, str]) -> bool:
        return self._set_all(args, self._req.args, "_args")

    def _set_all(self, entries: dict[str, str], target: MultiDict, slot: str) -> bool:
        if not entries:
            return False
        view: _DictView | None = getattr(self, slot)
        if view is not None:
            view.sync()
        for key, value in entries.items():
            _put(target, key, value, if_changed=True)
        # The old runner adopted the dict itself: later in-place edits count too.
        setattr(self, slot, _DictView(target, entries))
        return True

    # -- path, method, client

    def get_uri(self) -> str:
        return self._req.path

    def set_uri(self, uri: str) -> bool:
        if not uri or not isinstance(uri, str) or not uri.startswith("/"):
            return False
        if "?" in uri:
            # APISIX would escape the '?' into the path (the old runner sent it
            # anyway): refuse, the query belongs in set_arg.
            _limited.warning("set_uri() with a query ignored",
                             "set_uri(%r) ignored: put the query in set_arg(), not in the path",
                             uri)  # fmt: skip
            return False
        if uri != self._req.path:
            self._req.path = uri
        return True

    def get_method(self) -> str:
        return self._method if self._method is not None else self._req.method

    def set_method(self, method: str) -> bool:
        # The protocol has no way to change the method; neither had the old runner.
        if method and method.upper() in _OLD_METHODS:
            self._method = method
            return True
        return False

    def get_remote_addr(self) -> str:
        return self._remote_addr if self._remote_addr is not None else self._req.src_ip

    def set_remote_addr(self, remote_addr: str) -> bool:
        if remote_addr:
            self._remote_addr = remote_addr
            return True
        return False

    def get_conf_token(self) -> int:
        return self._conf_token if self._conf_token is not None else self._req.conf_token

    def set_conf_token(self, conf_token: int) -> bool:
        if conf_token:
            self._conf_token = conf_token
            return True
        return False

    def get_id(self) -> int:
        return self._id if self._id is not None else self._req.id

    def set_id(self, id: int) -> bool:
        if id:
            self._id = id
            return True
        return False

    # -- ExtraInfo

    def get_var(self, key: str) -> str:
        """An nginx/APISIX variable; "" when it is unset (as the old runner answered)."""
        cached = self._vars.get(key)
        if cached:
            return cached
        value = _fetch(self._bridge, self._req.var(key), "request.get_var()") or ""
        self.set_var(key, value)
        return value

    def set_var(self, key: str, val: str) -> bool:
        # Only what get_var returns; nginx variables cannot be set over the protocol.
        if key and val:
            self._vars[key] = val
            return True
        return False

    def get_body(self) -> str:
        """The request body as text: UTF-8, undecodable bytes as surrogate escapes."""
        if self._body is None:
            raw = _fetch(self._bridge, self._req.body(), "request.get_body()")
            self._body = body_text(raw)
        return self._body

    def set_body(self, body: str | bytes) -> bool:
        """Replace the body sent upstream (APISIX >= 3.6; the old runner only
        changed what get_body returned)."""
        if not body:
            return False
        data = as_bytes(body)
        self._req.set_body(data)
        self._body = body_text(data)
        return True

    # -- the route's configs (filled only during PrepareConf in the old runner)

    def get_config(self, key: str) -> Any:
        return self._configs.get(key)

    def set_config(self, key: str, value: Any) -> bool:
        if key:
            self._configs[key] = value
            return True
        return False

    def get_configs(self) -> dict[str, Any]:
        return self._configs

    def set_configs(self, configs: dict[str, Any]) -> bool:
        if configs:
            self._configs = configs
            return True
        return False

    def finish(self) -> None:
        """Apply the last in-place edits of handed-out dicts."""
        if self._headers is not None:
            self._headers.sync()
        if self._args is not None:
            self._args.sync()


# --------------------------------------------------------------------------- response


class LegacyResponse:
    """The old ``apisix.runner.http.response.Response`` API.

    It collects what the plugin sets; :meth:`finish` turns any of it into a Stop
    on this runner's :class:`~runner.api.http.Response` (status 200 unless set).
    """

    __slots__ = ("_body", "_headers", "_req_id", "_resp", "_status")

    def __init__(self, response: Response, req_id: int = 0) -> None:
        self._resp = response
        self._headers: dict[str, str] = {}
        self._body: str | bytes = ""
        self._status = 0
        self._req_id = req_id

    def get_header(self, key: str) -> str | None:
        return self._headers.get(key)

    def set_header(self, key: str, value: str) -> bool:
        if key and value:
            self._headers[key] = value
            return True
        return False

    def get_headers(self) -> dict[str, str]:
        return self._headers

    def set_headers(self, headers: dict[str, str]) -> bool:
        if headers:
            self._headers = headers
            return True
        return False

    def get_body(self) -> str | bytes:
        return self._body

    def set_body(self, body: str | bytes) -> bool:
        if body:
            self._body = body
            return True
        return False

    def get_status_code(self) -> int:
        return self._status or 200

    def set_status_code(self, status_code: int) -> bool:
        # The old check (`>= 100 or <= 599`) let any number through.
        if isinstance(status_code, int) and _STATUS_MIN <= status_code <= _STATUS_MAX:
            self._status = status_code
            return True
        return False

    def get_req_id(self) -> int:
        return self._req_id

    def set_req_id(self, req_id: int) -> bool:
        if req_id:
            self._req_id = req_id
            return True
        return False

    def changed(self) -> bool:
        """Whether the plugin set anything, i.e. whether the request stops here."""
        return bool(self._body or self._headers or self._status)

    def finish(self) -> None:
        if not self.changed():
            return
        resp = self._resp
        for key, value in self._headers.items():
            if key and value is not None:
                resp.headers[text(key)] = text(value)
        body = self._body
        if body:
            resp.body = as_bytes(body)
        resp.status = self._status or 200


# --------------------------------------------------------------------------- the wrapper plugin


class _RouteConf:
    """One route's instance (``config`` already run on it) and its parsed config."""

    __slots__ = ("instance", "value")

    def __init__(self, instance: Any, value: Any) -> None:
        self.instance = instance
        self.value = value

    def fresh(self) -> Any:
        """A shallow copy for one request: the old runner built a new instance
        per request, so plugins may keep per-request state on ``self``."""
        inst = self.instance
        state = getattr(inst, "__dict__", None)
        if state is None:
            return copy.copy(inst)
        clone = object.__new__(type(inst))
        clone.__dict__.update(state)
        return clone


class LegacyPlugin(Plugin):
    """A :class:`Plugin` that runs one old-runner plugin class (``legacy_class``)."""

    legacy_class: ClassVar[type[Any]]
    run_in_thread: ClassVar[bool] = False

    def parse_conf(self, raw: str) -> _RouteConf:
        try:
            instance = self.legacy_class()
            value = instance.config(raw)
        except Exception as exc:
            raise ConfError(f"config() raised {exc!r}") from exc
        return _RouteConf(instance, value)

    def run(
        self, conf: _RouteConf, request: Request, response: Response, bridge: _Bridge | None
    ) -> None:
        req = LegacyRequest(request, bridge)
        resp = LegacyResponse(response, request.id)
        conf.fresh().filter(conf.value, req, resp)  # the return value is ignored, as before
        req.finish()
        resp.finish()


class _InlineLegacyPlugin(LegacyPlugin):
    run_in_thread = False

    def filter(self, conf: _RouteConf, request: Request, response: Response) -> None:
        self.run(conf, request, response, None)


class _ThreadedLegacyPlugin(LegacyPlugin):
    run_in_thread = True

    async def filter(self, conf: _RouteConf, request: Request, response: Response) -> None:
        loop = asyncio.get_running_loop()
        bridge = _Bridge(loop)
        try:
            # The loop's default executor: created lazily in each worker, after the fork.
            await loop.run_in_executor(None, self.run, conf, request, response, bridge)
        finally:
            bridge.close()


def _legacy_name(legacy_class: type[Any]) -> str | None:
    # The old runner registered each subclass under cls.name(cls).
    try:
        name = legacy_class.name(legacy_class)
    except Exception:
        try:
            name = legacy_class().name()
        except Exception as exc:
            raise PluginError(
                f"old-style plugin {legacy_class.__qualname__}: name() failed: {exc!r}"
            ) from exc
    if name is None or name == "":
        return None  # an intermediate base class, not a plugin
    if not isinstance(name, str):
        raise PluginError(
            f"old-style plugin {legacy_class.__qualname__}: name() returned {name!r}, not a str"
        )
    return name


def wrap(legacy_class: type[Any]) -> type[LegacyPlugin]:
    """The :class:`Plugin` class that runs an old-runner plugin class.

    ``PluginTester(wrap(MyOldPlugin))`` tests one without a plugin directory.
    """
    name = _legacy_name(legacy_class)
    if name is None:
        raise PluginError(f"old-style plugin {legacy_class.__qualname__}: name() returned nothing")
    return _wrap(legacy_class, name)


def _wrap(legacy_class: type[Any], name: str) -> type[LegacyPlugin]:
    override = getattr(legacy_class, "run_in_thread", None)
    threaded = override if isinstance(override, bool) else source_mentions(legacy_class, _FETCHES)
    base: type[LegacyPlugin] = _ThreadedLegacyPlugin if threaded else _InlineLegacyPlugin
    return plugin_class(base, "Legacy", legacy_class, name, legacy_class=legacy_class)


def plugin_classes(module: types.ModuleType) -> Iterator[type[Plugin]]:
    """The wrapped old-style plugin classes a plugin module defines."""
    for cls in classes_defined_in(module):
        if derives_from(cls, "PluginBase", CORE_MODULE):
            name = _legacy_name(cls)
            if name is not None:
                yield _wrap(cls, name)


# --------------------------------------------------------------------------- import paths


#: The old runners' http modules (0.1 and 0.2 share their paths; plugins only
#: name the classes, the runner hands each API its own objects).
HTTP_MODULES: dict[str, dict[str, Any]] = {
    REQUEST_MODULE: {"Request": LegacyRequest},
    RESPONSE_MODULE: {"Response": LegacyResponse},
}


def install() -> bool:
    """Make ``apisix.runner.plugin.core``, ``apisix.runner.http.request`` and
    ``apisix.runner.http.response`` importable, holding this module's classes
    (see :mod:`runner.compat.shims`). Idempotent; returns whether the shims
    are in place."""
    return shims.install({CORE_MODULE: {"PluginBase": PluginBase}, **HTTP_MODULES})

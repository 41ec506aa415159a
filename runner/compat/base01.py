"""Runs plugins written for the first release (0.1) of the old official Python
runner, unchanged::

    from apisix.runner.plugin.base import Base
    from apisix.runner.http.request import Request
    from apisix.runner.http.response import Response

    class Stop(Base):
        def __init__(self):
            super(Stop, self).__init__(self.__class__.__name__)

        def filter(self, request: Request, response: Response):
            response.headers = {"X-Resp-A6-Runner": "Python"}
            response.body = "Hello, Python Runner of APISIX"
            response.status_code = 201
            self.stop()

What 0.1 did, and what is kept:

* A plugin is named by its class name in lower case (0.1 matched the route's
  plugin name against ``type(plugin).__name__.lower()``): ``Stop`` is ``stop``.
* ``self.config`` is the route's config decoded from JSON (a dict; anything
  else reads as ``{}``, as in 0.1). A config that is not JSON rejects the
  route at PrepareConf (0.1 failed the whole call).
* ``request.headers``, ``args``, ``path``, ``method``, ``src_ip``, ``id`` are
  read-only copies (dicts for headers and args, one value per name).
* ``self.stop()``: the client gets ``response.status_code`` (200 unless set),
  ``response.headers`` and ``response.body``. ``self.rewrite()`` (the default):
  ``response.headers``, ``response.args`` and ``response.path`` are what goes
  upstream; only what differs from the request is sent (as in 0.1, nothing
  can be removed).
* Each request starts from the route's instance as ``config`` left it, in the
  rewrite state. (0.1 reused one instance for every request of a route, so a
  plugin that called ``stop()`` once stopped every later request too.)
"""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Iterator
from typing import Any, ClassVar

from runner.api.http import Request, Response
from runner.api.plugin import ConfError, Plugin
from runner.compat import shims
from runner.compat.adapter import (
    apply_mapping,
    as_bytes,
    classes_defined_in,
    derives_from,
    first_values,
    plugin_class,
    text,
)
from runner.compat.legacy import HTTP_MODULES

BASE_MODULE = "apisix.runner.plugin.base"
ACTION_STOP, ACTION_REWRITE = 1, 2  # A6.HTTPReqCall.Action


class Base:
    """``apisix.runner.plugin.base.Base`` of the 0.1 runner."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._config: dict[str, Any] = {}
        self._action = ACTION_REWRITE

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = name

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @config.setter
    def config(self, config: Any) -> None:
        self._config = config if config and isinstance(config, dict) else {}

    @property
    def action(self) -> int:
        return self._action

    @action.setter
    def action(self, action: int) -> None:
        self._action = action

    def stop(self) -> None:
        self._action = ACTION_STOP

    def rewrite(self) -> None:
        self._action = ACTION_REWRITE


Base.__module__ = BASE_MODULE  # 0.1 plugins (and the check below) know it by this module


class Request01:
    """What a 0.1 filter reads: copies, changed through the response."""

    def __init__(self, request: Request) -> None:
        self.id = request.id
        self.conf_token = request.conf_token
        self.method = request.method
        self.path = request.path
        self.src_ip = request.src_ip
        self.headers = first_values(request.headers)
        self.args = first_values(request.args)
        # What the plugin was shown: it may edit the dicts above in place and
        # hand them to the response, as the 0.1 examples do.
        self.shown_headers = dict(self.headers)
        self.shown_args = dict(self.args)


class Response01:
    """What a 0.1 filter sets: the stop reply, or the rewrite of the request."""

    def __init__(self) -> None:
        self.headers: dict[str, Any] = {}
        self.args: dict[str, Any] = {}
        self.path = ""
        self.body: str | bytes = ""
        self.status_code = 0


class Base01Plugin(Plugin):
    """A :class:`Plugin` that runs one 0.1 plugin class (``base_class``)."""

    base_class: ClassVar[type[Any]]

    def parse_conf(self, raw: str) -> Any:
        try:
            config = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ConfError(f"the config is not JSON: {exc}") from None
        try:
            instance = self.base_class()
        except Exception as exc:
            raise ConfError(f"{self.base_class.__name__}() raised {exc!r}") from exc
        instance.config = config
        return instance

    def filter(self, conf: Any, request: Request, response: Response) -> None:
        plugin = copy.copy(conf)  # per request: its action, and what filter sets on self
        plugin.rewrite()
        req, resp = Request01(request), Response01()
        plugin.filter(req, resp)
        if plugin.action == ACTION_STOP:
            _stop(resp, response)
        else:
            _rewrite(req, resp, request)


def _stop(resp: Response01, response: Response) -> None:
    for key, value in (resp.headers or {}).items():
        if value is not None:
            response.headers[text(key)] = text(value)
    if resp.body:
        response.body = as_bytes(resp.body)
    response.status = resp.status_code or 200


def _rewrite(req: Request01, resp: Response01, request: Request) -> None:
    # 0.1 sent the dicts' entries as a rewrite; it could not delete.
    if resp.headers:
        apply_mapping(request.headers, resp.headers, req.shown_headers, remove_missing=False)
    if resp.args:
        apply_mapping(request.args, resp.args, req.shown_args, remove_missing=False)
    if resp.path and resp.path != req.path:
        request.path = text(resp.path)


def wrap(base_class: type[Any]) -> type[Base01Plugin]:
    """The :class:`Plugin` class that runs a 0.1 plugin class."""
    return plugin_class(
        Base01Plugin, "Base01", base_class, base_class.__name__.lower(), base_class=base_class
    )


def plugin_classes(module: types.ModuleType) -> Iterator[type[Plugin]]:
    """The wrapped 0.1 plugin classes a plugin module defines."""
    for cls in classes_defined_in(module):
        if derives_from(cls, "Base", BASE_MODULE) and "filter" in vars(cls):
            yield wrap(cls)


def install() -> bool:
    """Make ``apisix.runner.plugin.base`` and the http modules importable."""
    return shims.install({BASE_MODULE: {"Base": Base}, **HTTP_MODULES})

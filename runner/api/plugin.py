"""The Plugin base class and config decoding.

A plugin is a class with a ``name``, an optional ``Config`` type and
``filter`` (request phase) and/or ``response_filter`` (post-resp phase);
either may be ``async def``. One instance per worker process serves every
route; per-route settings arrive as the decoded ``conf`` argument.

Discovery (finding and importing plugin files) is in :mod:`runner.api.discovery`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

if TYPE_CHECKING:
    from runner.api.http import Request, Response, UpstreamResponse

log = logging.getLogger("runner.plugins")


class PluginError(Exception):
    """A plugin that cannot be loaded; start-up stops with this message."""


class ConfError(ValueError):
    """A plugin config that its plugin rejects (PrepareConf fails)."""


class Plugin:
    """Base class of runner plugins.

    ``Config``: a ``msgspec.Struct`` (or any type msgspec decodes from JSON,
    e.g. ``dict[str, str]``); the route's config string is decoded into it once,
    at PrepareConf. Without a ``Config`` the plugin gets the raw string.

    ``filter(conf, request, response)``: runs in the request phase. Change the
    request to rewrite it; give ``response`` a status or body to stop it (the
    rest of the chain is skipped); the return value is not used.

    ``response_filter(conf, response)``: runs in the post-resp phase.

    ``startup()`` / ``shutdown()`` (sync or async): once per worker, after the
    fork, to open and close connection pools.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[Any] = None

    def parse_conf(self, raw: str) -> Any:
        """Decode one route's config. Override for custom parsing; raise
        ``ConfError`` (or ValueError) with a message naming the bad field."""
        if self.Config is None or self.Config is str:
            return raw
        try:
            return msgspec.json.decode(raw.strip() or "{}", type=self.Config)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise ConfError(str(exc)) from None

    def startup(self) -> Any:
        return None

    def shutdown(self) -> Any:
        return None

    # Declared for type checkers and docs; a plugin defines at least one.
    if TYPE_CHECKING:

        def filter(self, conf: Any, request: Request, response: Response) -> Any: ...

        def response_filter(self, conf: Any, response: UpstreamResponse) -> Any: ...


async def run_hooks(plugins: Mapping[str, Plugin], hook: str) -> None:
    """Run every plugin's ``startup`` or ``shutdown`` (sync or async) once.

    A failing startup is fatal (the worker cannot serve those plugins); a
    failing shutdown is logged and the others still run."""
    for name, plugin in plugins.items():
        try:
            result = getattr(plugin, hook)()
            if inspect.isawaitable(result):
                await result
        except Exception:
            if hook == "startup":
                raise
            log.exception("plugin %r: %s failed", name, hook)


def has_filter(plugin: Plugin) -> bool:
    return callable(getattr(plugin, "filter", None))


def has_response_filter(plugin: Plugin) -> bool:
    return callable(getattr(plugin, "response_filter", None))


def is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)

"""The Plugin base class, config decoding, and plugin discovery.

A plugin is a class with a ``name``, an optional ``Config`` type and
``filter`` (request phase) and/or ``response_filter`` (post-resp phase);
either may be ``async def``. One instance per worker process serves every
route; per-route settings arrive as the decoded ``conf`` argument.

Discovery is explicit, never import-time registration: every ``*.py`` file in
the configured plugin directories, and every ``apisix_runner.plugins`` entry
point of installed packages, is imported once and its Plugin subclasses that
define a ``name`` are collected.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

if TYPE_CHECKING:
    from .http import Request, Response, UpstreamResponse

log = logging.getLogger("runner.plugins")

ENTRY_POINT_GROUP = "apisix_runner.plugins"


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


def _plugin_classes(module: ModuleType) -> Iterator[type[Plugin]]:
    for obj in vars(module).values():
        if (
            inspect.isclass(obj)
            and issubclass(obj, Plugin)
            and obj.__module__ == module.__name__
            and bool(getattr(obj, "name", None))
        ):
            yield obj
    # Plugins written for the old official runner (its PluginBase) come wrapped
    # as Plugin classes. Imported here: runner.compat imports this module.
    from .compat import plugin_classes as legacy_plugin_classes

    yield from legacy_plugin_classes(module)


def _import_file(path: Path) -> ModuleType:
    # A private namespace keeps plugin files from shadowing real packages.
    mod_name = f"apisix_runner_plugins.{path.parent.name}.{path.stem}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        # Compiled from the source every time, never from __pycache__: a file
        # rewritten within the same second at the same size would otherwise
        # reload stale bytecode on SIGHUP.
        exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise PluginError(f"plugin file {path} failed to import: {exc!r}") from exc
    return module


def _from_dirs(dirs: Iterable[Path]) -> Iterator[type[Plugin]]:
    for directory in dirs:
        if not directory.is_dir():
            raise PluginError(f"plugin directory {directory} does not exist")
        for path in sorted(directory.glob("*.py")):
            if not path.name.startswith("_"):
                yield from _plugin_classes(_import_file(path))


def _from_entry_points() -> Iterator[type[Plugin]]:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin entry point {ep.name} ({ep.value}) failed: {exc!r}") from exc
        if isinstance(obj, ModuleType):
            yield from _plugin_classes(obj)
        elif inspect.isclass(obj) and issubclass(obj, Plugin):
            yield obj
        else:
            raise PluginError(f"entry point {ep.name} is neither a Plugin class nor a module")


def _instantiate(cls: type[Plugin]) -> Plugin:
    try:
        plugin = cls()
    except Exception as exc:
        raise PluginError(f"plugin {cls.name!r} failed to initialise: {exc!r}") from exc
    if not (has_filter(plugin) or has_response_filter(plugin)):
        raise PluginError(f"plugin {cls.name!r} defines neither filter nor response_filter")
    return plugin


def load_plugins(dirs: Iterable[Path], entry_points: bool = True) -> dict[str, Plugin]:
    """Import every plugin once; a duplicate name or a broken file is fatal."""
    from .compat import install as install_legacy_imports

    # Before any plugin file runs: old-runner plugins import apisix.runner.*.
    install_legacy_imports()
    found: dict[str, Plugin] = {}
    sources = list(_from_dirs(dirs))
    if entry_points:
        sources.extend(_from_entry_points())
    for cls in sources:
        if cls.name in found:
            raise PluginError(f"two plugins are named {cls.name!r}")
        found[cls.name] = _instantiate(cls)
    log.info("loaded plugins: %s", ", ".join(sorted(found)) or "(none)")
    return found

"""Plugin discovery: which plugins a runner serves.

Explicit, never import-time registration: every ``*.py`` file in the
configured plugin directories, and every ``apisix_runner.plugins`` entry
point of installed packages, is imported once and its Plugin subclasses that
define a ``name`` are collected. Plugins written for another plugin API come
in through an :class:`Adapter` (``runner.compat`` holds them), which this
module is given rather than imports.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from runner.api.plugin import Plugin, PluginError, has_filter, has_response_filter
from runner.ops.logs import SUMMARY_LINE

if TYPE_CHECKING:
    from runner.settings import Settings

log = logging.getLogger("runner.plugins")

ENTRY_POINT_GROUP = "apisix_runner.plugins"


class Adapter(Protocol):
    """Another plugin API (an older runner's, ...) made to serve as Plugin classes."""

    def install(self) -> object:
        """Make the API's import paths importable (called before plugin files run)."""

    def plugin_classes(self, module: ModuleType) -> Iterable[type[Plugin]]:
        """The API's plugin classes a module defines, wrapped as Plugin classes."""


def bundled_plugins_dir() -> Path:
    # plugins/ installs as runner.bundled_plugins (see pyproject.toml).
    try:
        bundled = importlib.import_module("runner.bundled_plugins")
    except ModuleNotFoundError:
        # A source checkout imported instead of the installed copy (python -m
        # runner run from inside it): plugins/ sits beside runner/ there.
        beside = Path(__file__).resolve().parents[2] / "plugins"
        if (beside / "__init__.py").is_file():
            return beside
        raise PluginError(
            "the bundled plugins are not installed (runner.bundled_plugins): reinstall "
            "apisix-runner, or set bundled_plugins: false"
        ) from None
    return Path(bundled.__path__[0])


def plugin_dirs(settings: Settings) -> list[Path]:
    """The plugin directories a config names, the bundled one first if enabled."""
    dirs = settings.plugin_paths()
    if settings.bundled_plugins:
        dirs.insert(0, bundled_plugins_dir())
    return dirs


def _plugin_classes(module: ModuleType, adapters: Sequence[Adapter]) -> Iterator[type[Plugin]]:
    for obj in vars(module).values():
        if (
            inspect.isclass(obj)
            and issubclass(obj, Plugin)
            and obj.__module__ == module.__name__
            and bool(getattr(obj, "name", None))
        ):
            yield obj
    # Plugins written for another API (the old official runner's PluginBase, ...)
    # come wrapped as Plugin classes by their adapter.
    for adapter in adapters:
        yield from adapter.plugin_classes(module)


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
        raise PluginError(_import_failure(path, exc)) from exc
    return module


def _import_failure(path: Path, exc: Exception) -> str:
    if isinstance(exc, SyntaxError):  # file:line:col: message, as compilers say it
        return f"{exc.filename or path}:{exc.lineno or 0}:{exc.offset or 0}: {exc.msg}"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "apisix":
        return (
            f"plugin file {path} imports {exc.name}, a module of a plugin API this runner "
            "does not provide; docs/migration.md lists the APIs it runs and what each maps to"
        )
    return f"plugin file {path} failed to import: {exc!r}"


def _from_dirs(dirs: Iterable[Path], adapters: Sequence[Adapter]) -> Iterator[type[Plugin]]:
    for directory in dirs:
        if not directory.is_dir():
            raise PluginError(f"plugin directory {directory} does not exist")
        for path in sorted(directory.glob("*.py")):
            if not path.name.startswith("_"):
                yield from _plugin_classes(_import_file(path), adapters)


def _from_entry_points(adapters: Sequence[Adapter]) -> Iterator[type[Plugin]]:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin entry point {ep.name} ({ep.value}) failed: {exc!r}") from exc
        if isinstance(obj, ModuleType):
            yield from _plugin_classes(obj, adapters)
        elif inspect.isclass(obj) and issubclass(obj, Plugin):
            yield obj
        else:
            raise PluginError(f"entry point {ep.name} is neither a Plugin class nor a module")


def origin(cls: type) -> str:
    """Where a plugin class comes from: its file, else its module."""
    module = sys.modules.get(cls.__module__)
    return str(getattr(module, "__file__", None) or cls.__module__)


def _instantiate(cls: type[Plugin]) -> Plugin:
    try:
        plugin = cls()
    except Exception as exc:
        raise PluginError(f"plugin {cls.name!r} failed to initialise: {exc!r}") from exc
    if not (has_filter(plugin) or has_response_filter(plugin)):
        raise PluginError(f"plugin {cls.name!r} defines neither filter nor response_filter")
    return plugin


def load_plugins(
    dirs: Iterable[Path],
    entry_points: bool = True,
    adapters: Sequence[Adapter] = (),
    registered: Sequence[type[Plugin]] = (),
) -> dict[str, Plugin]:
    """Import every plugin once; a duplicate name or a broken file is fatal.

    ``adapters``: the other plugin APIs to accept (``runner.compat.ADAPTERS``
    for all of them). ``registered``: classes given in code (the guide's
    ``PluginRunner().register``); each replaces a bundled plugin of its name."""
    for adapter in adapters:
        adapter.install()  # before any plugin file runs: it may import the API's modules
    found: dict[str, Plugin] = {}
    sources = list(_from_dirs(dirs, adapters))
    if entry_points:
        sources.extend(_from_entry_points(adapters))
    for cls in sources:
        _add(found, cls)
    bundled = str(bundled_plugins_dir())
    for cls in registered:
        known = found.get(cls.name)
        if known is not None and origin(type(known)).startswith(bundled):
            del found[cls.name]
        _add(found, cls)
    log.info("loaded plugins: %s", ", ".join(sorted(found)) or "(none)", extra=SUMMARY_LINE)
    return found


def _add(found: dict[str, Plugin], cls: type[Plugin]) -> None:
    known = found.get(cls.name)
    if known is not None:
        raise PluginError(
            f"two plugins are named {cls.name!r}: {origin(type(known))} and {origin(cls)}"
        )
    found[cls.name] = _instantiate(cls)

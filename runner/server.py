"""Start-up of a single-process runner: logging, plugins, socket, worker."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from .listener import Listener
from .logs import setup_logging
from .plugins import load_plugins
from .settings import Settings
from .worker import Worker

log = logging.getLogger("runner")


def bundled_plugins_dir() -> Path:
    # plugins/ installs as runner.bundled_plugins (see pyproject.toml).
    bundled = importlib.import_module("runner.bundled_plugins")
    return Path(bundled.__path__[0])


def plugin_dirs(settings: Settings) -> list[Path]:
    dirs = settings.plugin_paths()
    if settings.bundled_plugins:
        dirs.insert(0, bundled_plugins_dir())
    return dirs


def serve(settings: Settings, foreground: bool) -> int:
    setup_logging(settings.logging, foreground)
    plugins = load_plugins(plugin_dirs(settings), settings.entry_points)
    listener = Listener(settings.socket_path, settings.socket.mode, settings.socket.backlog)
    sock = listener.bind()
    try:
        Worker(settings, plugins, sock).run()
    finally:
        listener.close()
    return 0

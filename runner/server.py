"""Start-up: logging, then the supervisor, which loads the plugins, binds the
socket and forks the workers."""

from __future__ import annotations

import importlib
from pathlib import Path

from .logs import setup_logging
from .settings import Settings


def bundled_plugins_dir() -> Path:
    # plugins/ installs as runner.bundled_plugins (see pyproject.toml).
    bundled = importlib.import_module("runner.bundled_plugins")
    return Path(bundled.__path__[0])


def plugin_dirs(settings: Settings) -> list[Path]:
    dirs = settings.plugin_paths()
    if settings.bundled_plugins:
        dirs.insert(0, bundled_plugins_dir())
    return dirs


def serve(settings: Settings, config_path: str, foreground: bool) -> int:
    from .supervisor import main

    setup_logging(settings.logging, foreground)
    return main(settings, config_path)

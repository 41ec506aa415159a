"""Start-up: logging, then the supervisor, which loads the plugins, binds the
socket and forks the workers."""

from __future__ import annotations

import logging
import stat
from collections.abc import Sequence
from pathlib import Path

from runner.api.discovery import plugin_dirs
from runner.api.plugin import Plugin
from runner.ops.logs import setup_logging
from runner.server.supervisor import main
from runner.settings import Settings

log = logging.getLogger("runner.server")


def insecure_plugin_paths(settings: Settings) -> list[Path]:
    """Plugin directories and files anyone may write to: whoever can write
    there runs code inside the gateway's request path."""
    found = []
    for directory in plugin_dirs(settings):
        paths = [directory, *sorted(directory.glob("*.py"))] if directory.is_dir() else []
        found += [p for p in paths if p.stat().st_mode & stat.S_IWOTH]
    return found


def serve(
    settings: Settings,
    config_path: str,
    foreground: bool,
    workers_flag: int | None = None,
    extra: Sequence[type[Plugin]] = (),
) -> int:
    setup_logging(settings.logging, foreground)
    for path in insecure_plugin_paths(settings):
        log.warning("%s is world-writable: anyone can change the code the runner executes", path)
    return main(settings, config_path, workers_flag, extra)

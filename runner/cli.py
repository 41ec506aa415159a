"""Command line: argv -> settings -> runner. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .plugins import PluginError
from .settings import SettingsError, load_settings

log = logging.getLogger("runner")

EXIT_CONFIG = 2
EXIT_PLUGINS = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apisix-runner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="serve APISIX on APISIX_LISTEN_ADDRESS")
    start.add_argument("--config", default="config.yaml", help="path of config.yaml")
    start.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    start.add_argument(
        "--foreground", action="store_true", help="log to the terminal (development)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, workers=args.workers)
        _ = settings.socket_path
    except SettingsError as exc:
        print(f"apisix-runner: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from .server import serve

    try:
        return serve(settings, args.config, foreground=args.foreground)
    except PluginError as exc:
        print(f"apisix-runner: cannot load plugins: {exc}", file=sys.stderr)
        return EXIT_PLUGINS
    except OSError as exc:
        print(f"apisix-runner: cannot listen on {settings.socket_path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG

"""Command line: argv -> settings -> runner. No logic of its own.

``start`` serves APISIX; ``check`` validates config.yaml and imports every
plugin (for CI of plugin repositories and before a deploy).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from runner.api.plugin import PluginError
from runner.settings import Settings, SettingsError, load_settings

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
    start.add_argument(
        "--profile", metavar="DIR", default=None,
        help="write a cProfile of each worker to DIR/worker-<pid>.prof when it exits",
    )  # fmt: skip
    check = sub.add_parser("check", help="validate config.yaml and import every plugin")
    check.add_argument("--config", default="config.yaml", help="path of config.yaml")
    return parser


def _check(settings: Settings) -> int:
    from runner.server.startup import insecure_plugin_paths
    from runner.server.supervisor import load_all

    try:
        plugins = load_all(settings)
    except PluginError as exc:
        print(f"apisix-runner: cannot load plugins: {exc}", file=sys.stderr)
        return EXIT_PLUGINS
    unknown = sorted(set(settings.plugin_options) - set(plugins))
    if unknown:
        print(
            f"apisix-runner: plugin_options names plugins that are not loaded: {unknown}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    for path in insecure_plugin_paths(settings):
        print(f"apisix-runner: warning: {path} is world-writable", file=sys.stderr)
    print(f"ok: {len(plugins)} plugins: {', '.join(sorted(plugins))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(load_settings(args.config))
        settings = load_settings(args.config, workers=args.workers, profile_dir=args.profile)
        _ = settings.socket_path
    except SettingsError as exc:
        print(f"apisix-runner: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from runner.server.startup import serve

    try:
        return serve(settings, args.config, args.foreground, args.workers)
    except PluginError as exc:
        print(f"apisix-runner: cannot load plugins: {exc}", file=sys.stderr)
        return EXIT_PLUGINS
    except OSError as exc:
        print(f"apisix-runner: cannot listen: {exc}", file=sys.stderr)
        return EXIT_CONFIG

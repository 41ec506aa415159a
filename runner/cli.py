"""The command line of apisix-runner.

``start`` serves APISIX on the socket from APISIX_LISTEN_ADDRESS (or
config.yaml's ``socket.path``); ``check`` validates config.yaml and imports
every plugin, for the CI of plugin repositories and before a deploy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import msgspec

from runner import hotpath
from runner.api.plugin import Plugin, PluginError
from runner.settings import Settings, SettingsError, load_settings

log = logging.getLogger("runner")

EXIT_CONFIG = 2
EXIT_PLUGINS = 3
DEFAULT_CONFIG = "config.yaml"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 512:
        raise argparse.ArgumentTypeError(f"must be between 1 and 512, got {value}")
    return value


def _version() -> str:
    try:
        return version("apisix-runner")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None,
        help=f"path of config.yaml (default: {DEFAULT_CONFIG} if it exists, else all defaults)",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apisix-runner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"apisix-runner {_version()}, {hotpath.describe()}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="serve APISIX on APISIX_LISTEN_ADDRESS")
    _config_arg(start)
    start.add_argument(
        "--workers", type=_positive, default=None,
        help="worker processes (default: config.yaml's workers, else one per CPU)",
    )  # fmt: skip
    start.add_argument(
        "--foreground", action="store_true", help="log to the terminal (development)"
    )
    start.add_argument("--debug", action="store_true", help="--foreground with DEBUG logs")
    start.add_argument(
        "--profile", metavar="DIR", default=None,
        help="write a cProfile of each worker to DIR/worker-<pid>.prof when it exits",
    )  # fmt: skip
    check = sub.add_parser("check", help="validate config.yaml and import every plugin")
    _config_arg(check)
    return parser


def _check(settings: Settings) -> int:
    from runner.server.startup import insecure_plugin_paths
    from runner.server.supervisor import load_all

    problem = settings.logging.file_problem()
    if problem is not None:
        print(f"apisix-runner: bad configuration: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        plugins = load_all(settings)
    except PluginError as exc:
        print(f"apisix-runner: cannot load plugins: {exc}", file=sys.stderr)
        return EXIT_PLUGINS
    except SettingsError as exc:
        print(f"apisix-runner: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for path in insecure_plugin_paths(settings):
        print(f"apisix-runner: warning: {path} is world-writable", file=sys.stderr)
    print(f"ok: {len(plugins)} plugins: {', '.join(sorted(plugins))}")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config or DEFAULT_CONFIG
    required = args.config is not None
    if args.command == "check":
        return load_settings(path, required=required)
    settings = load_settings(path, workers=args.workers, profile_dir=args.profile,
                             required=required)  # fmt: skip
    if args.debug:
        debug_logs = msgspec.structs.replace(settings.logging, level="DEBUG")
        settings = msgspec.structs.replace(settings, logging=debug_logs)
    _ = settings.socket_path
    problem = settings.logging.file_problem()
    if problem is not None:
        raise SettingsError(problem)
    return settings


def main(argv: Sequence[str] | None = None, extra: Sequence[type[Plugin]] = ()) -> int:
    """``extra``: plugin classes to serve besides those of the config (the
    guide's ``PluginRunner().register(...)``)."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"apisix-runner: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        return _check(settings)
    from runner.server.startup import serve

    try:
        foreground = args.foreground or args.debug
        return serve(settings, args.config or DEFAULT_CONFIG, foreground, args.workers, extra)
    except PluginError as exc:
        print(f"apisix-runner: cannot load plugins: {exc}", file=sys.stderr)
        return EXIT_PLUGINS
    except SettingsError as exc:
        print(f"apisix-runner: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"apisix-runner: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG

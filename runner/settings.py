"""The runner's settings: ``config.yaml`` plus what APISIX passes in the
environment, as one frozen msgspec tree validated once at start-up.

Environment (set by APISIX before it spawns the runner, docs/protocol.md §10.1):

* ``APISIX_LISTEN_ADDRESS`` — ``unix:/path/to.sock``; overrides ``socket.path``;
* ``APISIX_CONF_EXPIRE_TIME`` — seconds APISIX caches a conf token (default
  3600); tokens live at least twice that long here (docs/protocol.md §4.3).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class PluginOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the runner does with a plugin that fails, hangs or blocks.

    Set per plugin in ``config.yaml`` (``plugin_options``) or by the plugin class
    itself (``blocking = True`` on a plugin whose ``def filter`` does blocking I/O)::

        plugin_options:
          geoip:      {fail_open: true, timeout: 0.2}   # skipped when it fails or is late
          legacy-db:  {blocking: true}                  # its def filter runs in a thread
    """

    # true: when the plugin raises or misses its deadline, log it, count it and
    # go on with the rest of the chain; false (default): the call fails (503).
    fail_open: bool = False
    # The plugin's own deadline in seconds (async and blocking plugins);
    # default: the call's (call_timeout).
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # Run a plain `def` filter in a thread so blocking I/O cannot freeze the loop.
    blocking: bool = False

    @classmethod
    def of(cls, plugin: object) -> PluginOptions | None:
        """Options a plugin class declares for itself (class attributes)."""
        blocking = bool(getattr(plugin, "blocking", False))
        fail_open = bool(getattr(plugin, "fail_open", False))
        if not (blocking or fail_open):
            return None
        return cls(blocking=blocking, fail_open=fail_open)


class SettingsError(ValueError):
    """A bad setting; the message names the key and the expected form."""


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class SocketSettings(_Base, frozen=True):
    # Unix socket path; APISIX_LISTEN_ADDRESS wins when set.
    path: str | None = None
    # APISIX workers often run as `nobody`: they need write permission (docs/protocol.md §10.6).
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)] = 0o766
    # Owner and group of the socket file (names or numeric ids); default: the
    # runner's user. Set them when APISIX's workers run as another user.
    owner: str | None = None
    group: str | None = None
    backlog: Positive = 1024


class ConfCacheSettings(_Base, frozen=True):
    # Sliding lifetime of a token; default 2 x APISIX_CONF_EXPIRE_TIME.
    ttl: Seconds | None = None
    # Live tokens kept at most (oldest-used evicted first; APISIX re-prepares).
    max_entries: Positive = 65536
    # Decoded chains each worker keeps in front of the store.
    worker_cache: Positive = 4096


class MetricsSettings(_Base, frozen=True):
    # host:port of the Prometheus endpoint (/metrics, /healthz); off when
    # unset. Keep it on loopback or a private address: it is not authenticated.
    address: str | None = None

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.address:
            return None
        host, _, port = self.address.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    def __post_init__(self) -> None:
        if self.address:
            _, sep, port = self.address.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise msgspec.ValidationError(
                    f"expected host:port like 127.0.0.1:9091, got {self.address!r}"
                )


class LoggingSettings(_Base, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Log file; None: stderr with --foreground, else nowhere but errors.
    file: str | None = None

    def file_problem(self) -> str | None:
        """Why the log file cannot be written, naming it; None if it can."""
        if self.file is None:
            return None
        path = Path(self.file)
        if path.exists():
            return None if os.access(path, os.W_OK) else f"logging.file {path}: not writable"
        parent = path.parent
        if not parent.is_dir():
            return f"logging.file {path}: the directory {parent} does not exist"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"logging.file {path}: cannot create it in {parent} (not writable)"
        return None


class Settings(_Base, frozen=True):
    socket: SocketSettings = SocketSettings()
    # Worker processes; default: one per CPU.
    # At most 512: the pool's shared table holds old and new workers during a reload.
    workers: Annotated[int, msgspec.Meta(ge=1, le=512)] = msgspec.field(
        default_factory=lambda: min(os.cpu_count() or 1, 512)
    )
    # Load the plugins bundled with the runner (stop, rewrite, hello-world, ...).
    bundled_plugins: bool = True
    # More directories of plugin files, relative to the config file's directory.
    plugin_dirs: list[str] = msgspec.field(default_factory=list)
    # Also load plugins that installed packages declare as entry points.
    entry_points: bool = True
    conf_cache: ConfCacheSettings = ConfCacheSettings()
    # A call whose plugins take longer is answered SERVICE_UNAVAILABLE
    # (APISIX itself gives up after 60 s).
    call_timeout: Seconds = 10.0
    # A plain `def` plugin that holds the event loop longer is interrupted
    # (its call fails, or it is skipped when fail_open); see runner.server.watchdog.
    inline_timeout: Seconds = 2.0
    # Per plugin: fail_open, timeout, blocking (see PluginOptions).
    plugin_options: dict[str, PluginOptions] = msgspec.field(default_factory=dict)
    # Replace a worker after this many calls (0: never), plus a random
    # 0..max_requests_jitter so workers do not all restart together. A
    # safety net for plugins that leak memory; no call is lost.
    max_requests: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_requests_jitter: Annotated[int, msgspec.Meta(ge=0)] = 0
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    # Filled from the environment / location of the config file.
    conf_expire_time: Seconds = 3600.0
    base_dir: str = "."
    # From the command line (--profile DIR): each worker writes a cProfile there.
    profile_dir: str | None = None

    @property
    def socket_path(self) -> str:
        if not self.socket.path:
            raise SettingsError(
                "no socket path: set APISIX_LISTEN_ADDRESS=unix:/path/to.sock "
                "(APISIX does this) or socket.path in config.yaml"
            )
        return self.socket.path

    @property
    def token_ttl(self) -> float:
        return self.conf_cache.ttl or 2 * self.conf_expire_time

    def plugin_paths(self) -> list[Path]:
        return [Path(self.base_dir, d) for d in self.plugin_dirs]


def _read_yaml(path: Path, required: bool) -> tuple[dict[str, object], str]:
    """The mapping in the file, and its text."""
    if not path.exists():
        if required:
            raise SettingsError(f"{path}: no such file (given with --config)")
        return {}, ""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}, text
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return data, text


def _listen_path(address: str) -> str:
    if not address.startswith("unix:") or len(address) <= len("unix:"):
        raise SettingsError(f"APISIX_LISTEN_ADDRESS: expected unix:/path/to.sock, got {address!r}")
    return address[len("unix:") :]


_OCTAL = re.compile(r"(0o?)?[0-7]{1,4}")


def _mode_as_written(text: str) -> str | None:
    """socket.mode as it is written in the YAML text (before YAML reads it)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for key, value in getattr(root, "value", []) if isinstance(root, yaml.MappingNode) else []:
        if key.value == "socket" and isinstance(value, yaml.MappingNode):
            for k, v in value.value:
                if k.value == "mode" and isinstance(v, yaml.ScalarNode):
                    return str(v.value)
    return None


def _octal_mode(data: dict[str, object], text: str) -> None:
    """socket.mode is a file mode, always octal: `0766`, `0o766` or a quoted
    "766". A plain `766` would be read as the decimal 766 (mode 1376)."""
    sock = data.get("socket")
    if not isinstance(sock, dict) or "mode" not in sock:
        return
    mode = sock["mode"]
    written = _mode_as_written(text) if isinstance(mode, int) else mode
    fine = isinstance(written, str) and _OCTAL.fullmatch(written) is not None
    if isinstance(mode, int) and fine and not str(written).startswith("0"):
        fine = False  # an unquoted 766 is a decimal number to YAML
    if not fine:
        raise SettingsError(
            f"socket.mode: {written!r} is not an octal file mode; write it with a leading 0, "
            'e.g. 0766 (or quoted: "766")'
        )
    if isinstance(mode, str):
        sock["mode"] = int(mode, 8)


def _apply_env(data: dict[str, object], env: Mapping[str, str]) -> None:
    address = env.get("APISIX_LISTEN_ADDRESS")
    if address:
        sock = data.get("socket") or {}
        if not isinstance(sock, dict):
            raise SettingsError("socket: expected a mapping")
        data["socket"] = {**sock, "path": _listen_path(address)}
    expire = env.get("APISIX_CONF_EXPIRE_TIME")
    if expire:
        try:
            seconds = float(expire)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise SettingsError(
                f"APISIX_CONF_EXPIRE_TIME: expected a positive number of seconds, got {expire!r}"
            )
        data["conf_expire_time"] = seconds


def load_settings(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
    profile_dir: str | None = None,
    required: bool = False,
) -> Settings:
    """Read config.yaml (a missing file means all defaults, unless
    ``required``: it was named with --config), apply the environment and
    command-line overrides, validate once."""
    path = Path(path)
    data, text = _read_yaml(path, required)
    for key in ("conf_expire_time", "base_dir", "profile_dir"):
        if key in data:
            raise SettingsError(f"{key}: not a config.yaml setting")
    _octal_mode(data, text)
    _apply_env(data, os.environ if env is None else env)
    if workers is not None:
        data["workers"] = workers
    if profile_dir is not None:
        data["profile_dir"] = str(Path(profile_dir).resolve())
    data["base_dir"] = str(path.resolve().parent)
    try:
        return msgspec.convert(data, type=Settings)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{path}: {exc}") from None

"""The end-to-end rig: nginx with an APISIX-compatible Lua ext-plugin client in
front of the runner, and an echo upstream.

::

    client (wrk, curl, tests)
      -> nginx 127.0.0.1:PORT  (bench/gateway/lua: routes, ext-plugin phases, Lua twins)
           -> runner            (unix socket PREFIX/r.sock, python -m runner start)
           -> echo upstream     (unix socket PREFIX/echo.sock, same nginx)

Routes come from a YAML file (``routes.yaml`` here by default)::

    routes:
      - uri: /py/stop                      # exact; "/api/*" is a prefix
        id: py-stop                        # optional; APISIX's route id (token key, $route_id)
        upstream: echo                     # "echo" (default), "host:port" or "unix:/path"
        plugins:                           # the three APISIX ext-plugin phases
          ext-plugin-pre-req:
            conf:                          # absent: a runner round trip with no plugin
              - name: stop
                value: {"body": "hello"}   # a mapping is sent as JSON, a string as is
            allow_degradation: false
          ext-plugin-post-req: {...}
          ext-plugin-post-resp: {...}
        lua:                               # native Lua twins (lua/gateway/native.lua),
          - name: stop                     # run where ext-plugin-pre-req runs
            value: {"body": "hello"}

Start it by hand with ``python -m bench.gateway`` (see README.md); tests and the
wrk matrix use :func:`start`. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import msgspec
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
LUA_DIR = HERE / "lua"
TEMPLATE = HERE / "nginx.conf.tmpl"
DEFAULT_ROUTES = HERE / "routes.yaml"

MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/etc/nginx/modules")
RESTY_CORE = "/usr/share/lua/5.1/resty/core.lua"
START_DEADLINE_S = 15.0
STOP_GRACE_S = 5.0
POLL_S = 0.01

PhaseName = Literal["ext-plugin-pre-req", "ext-plugin-post-req", "ext-plugin-post-resp"]


class RigError(Exception):
    """The rig could not start (a message naming the cause and the log)."""


# --------------------------------------------------------------------------- routes


class PluginConf(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    value: str | dict[str, Any] | list[Any] = "{}"

    def text(self) -> str:
        return (
            self.value if isinstance(self.value, str) else msgspec.json.encode(self.value).decode()
        )


class PhaseConf(msgspec.Struct, forbid_unknown_fields=True):
    conf: list[PluginConf] | None = None
    allow_degradation: bool = False


class Route(msgspec.Struct, forbid_unknown_fields=True):
    uri: str
    id: str | None = None
    upstream: str = "echo"
    plugins: dict[PhaseName, PhaseConf] = msgspec.field(default_factory=dict)
    lua: list[PluginConf] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.uri.startswith("/"):
            raise msgspec.ValidationError(f"uri must start with '/', got {self.uri!r}")


class Routes(msgspec.Struct, forbid_unknown_fields=True):
    routes: list[Route]


def load_routes(source: Path | str | dict[str, Any]) -> Routes:
    """Routes from a YAML/JSON file or an already loaded mapping, validated."""
    data = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    try:
        return msgspec.convert(data, Routes)
    except msgspec.ValidationError as exc:
        where = "dict" if isinstance(source, dict) else source
        raise RigError(f"bad routes ({where}): {exc}") from None


def _upstream_addr(name: str, prefix: Path) -> str:
    return f"unix:{prefix}/echo.sock" if name == "echo" else name


def render_routes(routes: Routes, prefix: Path) -> tuple[bytes, str]:
    """The routes JSON the Lua side loads, and the nginx ``upstream`` blocks."""
    names: dict[str, str] = {}
    out = []
    for i, r in enumerate(routes.routes, 1):
        up = names.setdefault(r.upstream, f"gw_up_{len(names)}")
        phases = {
            name: {
                "conf": None
                if p.conf is None
                else [{"name": c.name, "value": c.text()} for c in p.conf],
                "allow_degradation": p.allow_degradation,
            }
            for name, p in r.plugins.items()
        }
        out.append(
            {
                "id": r.id or str(i),
                "uri": r.uri,
                "upstream": up,
                "upstream_addr": _upstream_addr(r.upstream, prefix),
                "plugins": phases,
                "lua": [{"name": c.name, "value": c.text()} for c in r.lua],
            }
        )
    body = msgspec.json.encode({"routes": out})
    version = hashlib.sha256(body).hexdigest()[:12]
    doc = msgspec.json.encode({"version": version, "routes": out})
    blocks = []
    for addr, name in names.items():
        server = _upstream_addr(addr, prefix)
        blocks.append(
            f"    upstream {name} {{\n        server {server};\n        keepalive 64;\n    }}\n"
        )
    return doc, "".join(blocks)


# --------------------------------------------------------------------------- environment


def find_modules() -> tuple[str, str] | None:
    """(ndk module, lua module) paths of Debian's libnginx-mod-http-lua, or None."""
    for d in MODULE_DIRS:
        lua, ndk = Path(d, "ngx_http_lua_module.so"), Path(d, "ndk_http_module.so")
        if lua.exists() and ndk.exists():
            return str(ndk), str(lua)
    return None


def missing_requirements() -> str | None:
    """Why the rig cannot run here, or None when nginx and its Lua module are installed."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        return "nginx is not installed (apt-get install nginx)"
    if find_modules() is None:
        return "nginx's Lua module is not installed (apt-get install libnginx-mod-http-lua)"
    if not Path(RESTY_CORE).exists():
        return "lua-resty-core is not installed (apt-get install lua-resty-core)"
    return None


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unix_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop_pid(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Signal the process by pid, wait, then SIGKILL it and its own process group
    (it was started in a new session, so the group is its pid)."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the rig


class Rig:
    """A running rig. ``url(path)`` addresses nginx; the runner can be stopped and
    started again on the same socket (``stop_runner`` / ``start_runner``)."""

    def __init__(
        self,
        prefix: Path,
        port: int,
        workers: int | None,
        plugin_dirs: Sequence[str],
        runner_config: dict[str, Any] | None,
    ) -> None:
        self.prefix = prefix
        self.port = port
        self.runner_socket = str(prefix / "r.sock")
        self.workers = workers
        self.plugin_dirs = [str(Path(d).resolve()) for d in plugin_dirs]
        self.runner_config = runner_config
        self.config_path = prefix / "runner-0.yaml"  # the running runner's config.yaml
        self.nginx: subprocess.Popen[bytes] | None = None
        self.runner: subprocess.Popen[bytes] | None = None
        self._runner_starts = 0

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def runner_log_text(self) -> str:
        logs = sorted(self.prefix.glob("runner-*.log"))
        return "".join(p.read_text(errors="replace") for p in logs)

    # ---- runner

    def start_runner(self) -> None:
        """Start ``python -m runner start --foreground`` on the rig's socket and
        wait until it accepts."""
        if self.runner is not None and self.runner.poll() is None:
            raise RigError("the runner is already running")
        n = self._runner_starts
        self._runner_starts += 1
        cfg = dict(self.runner_config or {})
        if self.plugin_dirs:
            cfg["plugin_dirs"] = [*cfg.get("plugin_dirs", []), *self.plugin_dirs]
        cfg_path = self.prefix / f"runner-{n}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["APISIX_LISTEN_ADDRESS"] = f"unix:{self.runner_socket}"
        env["APISIX_CONF_EXPIRE_TIME"] = "3600"
        self.config_path = cfg_path
        argv = [sys.executable, "-m", "runner", "start", "--config", str(cfg_path)]
        if self.workers is not None:  # else config.yaml's `workers`, re-read on SIGHUP
            argv += ["--workers", str(self.workers)]
        argv += ["--foreground"]
        self._spawn_runner(argv, env, n)

    def start_runner_command(self, argv: Sequence[str]) -> None:
        """Start ``argv`` as the runner instead of ours (e.g. ``python -m
        bench.fake_runner SOCKET``): it must listen on ``runner_socket``; waits
        until it accepts. ``stop_runner`` stops it."""
        if self.runner is not None and self.runner.poll() is None:
            raise RigError("the runner is already running")
        n = self._runner_starts
        self._runner_starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        self._spawn_runner(list(argv), env, n)

    def _spawn_runner(self, argv: list[str], env: dict[str, str], n: int) -> None:
        with open(self.prefix / f"runner-{n}.log", "wb") as log:
            self.runner = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while not _unix_accepts(self.runner_socket):
            if self.runner.poll() is not None or time.monotonic() > deadline:
                _stop_pid(self.runner, signal.SIGTERM)
                raise RigError(f"the runner did not start; its log:\n{self.runner_log_text()}")
            time.sleep(POLL_S)

    def reload_runner(self, config: dict[str, Any] | None = None) -> None:
        """SIGHUP the runner, after rewriting its config.yaml when ``config``
        (plugin_dirs are kept) is given."""
        if self.runner is None:
            raise RigError("the runner is not running")
        if config is not None:
            cfg = dict(config)
            if self.plugin_dirs:
                cfg["plugin_dirs"] = [*cfg.get("plugin_dirs", []), *self.plugin_dirs]
            self.config_path.write_text(yaml.safe_dump(cfg))
        self.runner.send_signal(signal.SIGHUP)

    def stop_runner(self) -> None:
        """SIGTERM the runner by pid (it drains and removes its socket)."""
        _stop_pid(self.runner, signal.SIGTERM)
        with contextlib.suppress(FileNotFoundError):
            if not _unix_accepts(self.runner_socket):
                os.unlink(self.runner_socket)

    # ---- nginx

    def start_nginx(self, conf: Path) -> None:
        with open(self.prefix / "nginx.out", "ab") as out:
            self.nginx = subprocess.Popen(
                [nginx_binary(), "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while not _tcp_accepts(self.port):
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                _stop_pid(self.nginx, signal.SIGTERM)
                out_text = (self.prefix / "nginx.out").read_text(errors="replace")
                raise RigError(
                    f"nginx did not start on port {self.port}:\n{out_text}{self.error_log_text()}"
                )
            time.sleep(POLL_S)

    # ---- both

    def stop(self, keep: bool = False) -> None:
        """Stop nginx and the runner by pid; remove the prefix unless ``keep``."""
        try:
            _stop_pid(self.nginx, signal.SIGTERM)
            self.stop_runner()
        finally:
            if not keep:
                shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def render_conf(
    prefix: Path, port: int, routes: Routes, nginx_workers: int, log_level: str
) -> Path:
    """Write the routes JSON and nginx.conf into ``prefix``; return the conf path."""
    modules = find_modules()
    if modules is None:
        raise RigError(missing_requirements() or "nginx's Lua module is missing")
    routes_json, upstreams = render_routes(routes, prefix)
    (prefix / "routes.json").write_bytes(routes_json)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    values = {
        "NDK_MODULE": modules[0],
        "LUA_MODULE": modules[1],
        # Workers of a root master run as `nobody` unless told otherwise.
        "USER": "user root;" if os.geteuid() == 0 else "",
        "NGINX_WORKERS": str(nginx_workers),
        "PREFIX": str(prefix),
        "LOG_LEVEL": log_level,
        "LUA_DIR": str(LUA_DIR),
        "ROUTES_JSON": str(prefix / "routes.json"),
        "RUNNER_SOCKET": str(prefix / "r.sock"),
        "UPSTREAMS": upstreams,
        "PORT": str(port),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def start(
    routes: Path | str | dict[str, Any] | Routes = DEFAULT_ROUTES,
    workers: int | None = 1,
    nginx_workers: int = 1,
    port: int | None = None,
    plugin_dirs: Sequence[str] = (),
    runner_config: dict[str, Any] | None = None,
    with_runner: bool = True,
    log_level: str = "warn",
) -> Rig:
    """Start the runner (``workers`` processes; None: as its config says) and
    nginx on 127.0.0.1:``port`` (a free one by default); returns once both
    accept connections."""
    reason = missing_requirements()
    if reason is not None:
        raise RigError(reason)
    parsed = routes if isinstance(routes, Routes) else load_routes(routes)
    # AF_UNIX paths are short: keep the prefix (and the sockets in it) in /tmp.
    prefix = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    rig = Rig(prefix, port or free_port(), workers, plugin_dirs, runner_config)
    try:
        if with_runner:
            rig.start_runner()
        for attempt in range(3):
            conf = render_conf(prefix, rig.port, parsed, nginx_workers, log_level)
            try:
                rig.start_nginx(conf)
                break
            except RigError:
                # A free port can be taken between the probe and nginx's bind.
                if port is not None or attempt == 2 or "in use" not in rig.error_log_text():
                    raise
                rig.port = free_port()
    except BaseException:
        rig.stop()
        raise
    return rig


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description="Start nginx (APISIX-compatible Lua ext-plugin client) + the runner; "
        "Ctrl-C stops both.",
    )
    p.add_argument(
        "--routes", default=str(DEFAULT_ROUTES), help="routes YAML (default: %(default)s)"
    )
    p.add_argument("--workers", type=int, default=1, help="runner worker processes")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes")
    p.add_argument("--port", type=int, default=None, help="nginx port (default: a free one)")
    p.add_argument("--plugin-dir", action="append", default=[], help="extra runner plugin dir")
    p.add_argument("--log-level", default="warn", help="nginx error_log level")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rig = start(
            args.routes,
            workers=args.workers,
            nginx_workers=args.nginx_workers,
            port=args.port,
            plugin_dirs=args.plugin_dir,
            log_level=args.log_level,
        )
    except RigError as exc:
        print(f"bench.gateway: {exc}", file=sys.stderr)
        return 1
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    assert rig.nginx is not None and rig.runner is not None
    print(f"gateway  {rig.url('/')}  (nginx pid {rig.nginx.pid}, runner pid {rig.runner.pid})")
    print(f"prefix   {rig.prefix}  (nginx.conf, error.log, runner-0.log)")
    for r in load_routes(args.routes).routes:
        print(f"  {rig.url(r.uri)}")
    try:
        while not stop and rig.nginx.poll() is None and rig.runner.poll() is None:
            time.sleep(0.2)
    finally:
        rig.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shipped deployment files (deploy/) and the install steps of
docs/deployment.md, checked as a fresh Debian host would run them.

- supervisord for real: deploy/supervisord.conf rendered into a temporary root
  (the venv, the directories and the user swapped for test ones), the
  directories made exactly as the documented steps make them, supervisord in
  the foreground; the runner must serve as the configured user, reload on
  ``supervisorctl signal HUP`` and stop cleanly.
- systemd without PID 1: ``systemd-analyze verify`` of the unit, and every path
  the unit (or the supervisord program) names must be made by the unit itself
  or by a documented install step, writable by the service user where the
  runner writes.

The documented steps are read from the ``sh`` blocks of docs/deployment.md under
the "Install" heading (both variants) and under the heading naming the variant.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.testing import Client, HTTPRequest, Stop
from runner.testing.pytest_plugin import accepts
from tests.integration.conftest import arun

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deployment.md"
UNIT = REPO / "deploy" / "apisix-runner.service"
SUPERVISORD_CONF = REPO / "deploy" / "supervisord.conf"
CONFIG = REPO / "config.yaml"

# Any Debian host has this user; the test may not create system users.
TEST_USER = "nobody"
DEADLINE_S = 15.0
POLL_S = 0.02

# Paths a fresh Debian host (with the packages the steps install) already has.
HOST_DIRS = {"/", "/etc", "/opt", "/run", "/var", "/var/log", "/var/lib", "/usr", "/tmp"}


# -- docs/deployment.md ---------------------------------------------------------


@dataclass
class Block:
    headings: tuple[str, ...]
    lang: str
    text: str


def doc_blocks() -> list[Block]:
    """The fenced code blocks of the doc, with the headings above each."""
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    lines = DOC.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        fence = re.match(r"```(\w*)", line)
        if fence:
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(tuple(t for _, t in stack), fence.group(1), "\n".join(body)))
        elif heading:
            level = len(heading.group(1))
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, heading.group(2))]
        i += 1
    return blocks


def variant_blocks(variant: str) -> list[Block]:
    """Blocks under the "Install" heading or a heading naming the variant."""
    return [
        b
        for b in doc_blocks()
        if any(h.lower().startswith("install") or variant in h.lower() for h in b.headings)
    ]


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block (split at ``&&``, ``||``, ``;``, ``|``)."""
    commands: list[list[str]] = []
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        current: list[str] = []
        for token in lex:
            if token in ("&&", "||", ";", "|", "&"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


@dataclass
class Host:
    """What the documented steps make on a fresh host."""

    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    # path -> (owner, group, mode or None)
    dirs: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)

    def add_dir(self, path: str, owner: str = "root", group: str = "root", mode: int | None = None):
        self.dirs[os.path.normpath(path)] = (owner, group, mode)

    def made(self, path: str) -> bool:
        """Made by a step, directly or as a parent (``-p``, ``install -d``, venv)."""
        path = os.path.normpath(path)
        made = set(self.dirs) | set(self.files)
        return path in made or any(m.startswith(path + "/") for m in made)

    def exists(self, path: str) -> bool:
        return os.path.normpath(path) in HOST_DIRS or self.made(path)


def _options(argv: list[str], with_value: set[str]) -> tuple[dict[str, str], list[str]]:
    """Options (``-o x``, ``--owner=x``, ``-oX``) and positional arguments."""
    opts: dict[str, str] = {}
    args: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg.partition("=")
            opts[key] = value
        elif arg in with_value:
            opts[arg] = next(it, "")
        elif arg.startswith("-") and len(arg) > 2 and arg[:2] in with_value:
            opts[arg[:2]] = arg[2:]
        elif arg.startswith("-") and arg != "-":
            opts[arg] = ""
        else:
            args.append(arg)
    return opts, args


def _mode(text: str | None) -> int | None:
    return int(text, 8) if text and re.fullmatch(r"[0-7]{3,4}", text) else None


def documented_host(variant: str) -> Host:
    """Run the documented install steps of ``variant`` on paper."""
    host = Host()
    for block in variant_blocks(variant):
        if block.lang not in ("sh", "bash", "shell"):
            continue
        for argv in shell_commands(block.text):
            host.commands.append(argv)
            _apply(host, argv)
    return host


def _apply(host: Host, argv: list[str]) -> None:
    if ">" in argv or ">>" in argv:
        at = argv.index(">") if ">" in argv else argv.index(">>")
        target, words = argv[at + 1], argv[1:at]
        if argv[0] in ("echo", "printf"):
            text = " ".join(words).replace("\\n", "\n")
            host.files[target] = host.files.get(target, "") * (">>" in argv) + text + "\n"
        else:
            host.files.setdefault(target, "")
        argv = argv[:at]
    cmd, rest = os.path.basename(argv[0]), argv[1:]
    if cmd in ("useradd", "adduser"):
        opts, args = _options(
            rest,
            {"-d", "--home-dir", "--home", "-s", "--shell", "-g", "--gid", "--ingroup", "-G",
             "--groups", "-c", "--comment", "--gecos", "-u", "--uid", "-k", "--skel", "-K", "--key",
             "-b", "--base-dir", "-e", "-f", "-p", "-R", "-P", "-Z"},
        )  # fmt: skip
        if args:
            host.users.add(args[-1])
            if {"-U", "--user-group", "--group"} & set(opts):
                host.groups.add(args[-1])
    elif cmd in ("groupadd", "addgroup"):
        _, args = _options(rest, {"-g", "--gid", "-K", "--key", "-p", "-R", "-P"})
        host.groups.update(args[-1:])
    elif cmd == "install":
        opts, args = _options(
            rest, {"-o", "--owner", "-g", "--group", "-m", "--mode", "-t", "-S", "--suffix"}
        )
        owner = opts.get("-o") or opts.get("--owner") or "root"
        group = opts.get("-g") or opts.get("--group") or "root"
        mode = _mode(opts.get("-m") or opts.get("--mode"))
        if "-d" in opts or "--directory" in opts:
            for path in args:
                host.add_dir(path, owner, group, mode)
        elif len(args) >= 2:
            _copy(host, args[:-1], args[-1])
    elif cmd == "mkdir":
        opts, args = _options(rest, {"-m", "--mode"})
        for path in args:
            host.add_dir(path, mode=_mode(opts.get("-m") or opts.get("--mode")))
    elif cmd == "cp":
        _, args = _options(rest, {"-t", "-S"})
        if len(args) >= 2:
            _copy(host, args[:-1], args[-1])
    elif cmd == "chown":
        _, args = _options(rest, set())
        if len(args) >= 2:
            owner, _, group = args[0].partition(":")
            for path in args[1:]:
                path = os.path.normpath(path)
                if path in host.dirs:
                    host.dirs[path] = (owner, group or host.dirs[path][1], host.dirs[path][2])
    elif re.fullmatch(r"python3?(\.\d+)?", cmd) and rest[:2] == ["-m", "venv"]:
        venv = [a for a in rest[2:] if not a.startswith("-")][-1]
        host.add_dir(venv)
        for name in ("python", "python3", "pip"):
            host.files[f"{venv}/bin/{name}"] = ""
    elif cmd == "systemd-tmpfiles" and "--create" in rest:
        names = [a for a in rest if not a.startswith("-")]
        for name, text in host.files.items():
            if name.startswith("/etc/tmpfiles.d/") and (not names or name in names):
                for line in text.splitlines():
                    f = line.split()
                    if len(f) >= 5 and f[0] in ("d", "D"):
                        host.add_dir(f[1], f[3], f[4], _mode(f[2]))


def _copy(host: Host, sources: list[str], target: str) -> None:
    target = os.path.normpath(target)
    for src in sources:
        dest = f"{target}/{os.path.basename(src)}" if target in host.dirs else target
        host.files[dest] = (REPO / src).read_text() if (REPO / src).is_file() else ""


def documented_config() -> dict[str, Any]:
    """config.yaml as the install steps leave it: the shipped file plus the
    settings the doc's install section shows in ``yaml`` blocks (not APISIX's
    ``ext-plugin``/``nginx_config``)."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text()) or {}
    for block in variant_blocks("install"):
        if block.lang != "yaml":
            continue
        data = yaml.safe_load(block.text) or {}
        if isinstance(data, dict) and not {"ext-plugin", "nginx_config", "apisix"} & set(data):
            for key, value in data.items():
                if isinstance(value, dict) and isinstance(config.get(key), dict):
                    config[key] = {**config[key], **value}
                else:
                    config[key] = value
    return config


def runner_log_files() -> list[str]:
    """The runner's log files the doc or config.yaml's example suggest."""
    found = [m.group(1) for m in re.finditer(r"#\s*file:\s*(/\S+)", CONFIG.read_text())]
    logging_conf = documented_config().get("logging") or {}
    if logging_conf.get("file"):
        found.append(str(logging_conf["file"]))
    return sorted(set(found))


def path_for_test() -> set[str]:
    found = set()
    for block in doc_blocks():
        if block.lang == "yaml" and "path_for_test" in block.text:
            data = yaml.safe_load(block.text)
            found.add(data["ext-plugin"]["path_for_test"])
    return found


# -- the shipped files ------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return values


def parse_program(text: str) -> tuple[str, dict[str, str]]:
    """The ``[program:NAME]`` section of the supervisord snippet."""
    name = ""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        header = re.fullmatch(r"\[program:([^\]]+)\]", line)
        if header:
            name = header.group(1)
        elif name and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert name, f"{SUPERVISORD_CONF} has no [program:...] section"
    return name, values


def config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def listen_path(environment: str) -> str:
    found = re.search(r"APISIX_LISTEN_ADDRESS=\"?unix:([^\s\",]+)", environment)
    assert found, f"no APISIX_LISTEN_ADDRESS=unix:... in {environment!r}"
    return found.group(1)


def under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


# -- systemd ------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds nothing wrong (the venv's python, which
    the install steps create, stands in for the one in /opt)."""
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.path.exists(analyze):
        pytest.fail("systemd-analyze is missing (Debian package: systemd)")
    unit = parse_unit(UNIT.read_text())
    (exec_start,) = unit["Service.ExecStart"]
    binary = shlex.split(exec_start)[0].lstrip("-@+!:")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(binary, sys.executable))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


def test_systemd_unit_paths_are_made() -> None:
    """Every path the unit names exists on a fresh host that followed the doc:
    made by the unit (RuntimeDirectory=, LogsDirectory=, ...) or by an install
    step, and writable by the service user where the runner writes."""
    unit = parse_unit(UNIT.read_text())
    host = documented_host("systemd")
    service = {k.partition(".")[2]: v for k, v in unit.items() if k.startswith("Service.")}
    (user,) = service.get("User", ["root"])
    (group,) = service.get("Group", [user])
    problems = []
    if user != "root" and user not in host.users:
        problems.append(f"User={user}: no install step creates it (useradd --system ...)")
    if group != "root" and group not in host.groups:
        problems.append(f"Group={group}: no install step creates it (useradd --user-group)")

    own: dict[str, str] = {}  # directories the unit makes, owned by User=
    for key, base in (
        ("RuntimeDirectory", "/run"),
        ("StateDirectory", "/var/lib"),
        ("CacheDirectory", "/var/cache"),
        ("LogsDirectory", "/var/log"),
    ):
        for value in service.get(key, []):
            for name in value.split():
                own[f"{base}/{name}"] = key

    def exists(path: str) -> bool:
        return under(path, list(own)) or host.exists(path)

    def writable(path: str) -> bool:
        if under(path, list(own)):
            return True
        owner = host.dirs.get(os.path.normpath(path))
        return owner is not None and owner[0] == user

    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    binary = argv[0].lstrip("-@+!:")
    if not host.made(binary):
        problems.append(f"ExecStart {binary}: no install step creates it")
    config = config_arg(argv)
    if config is None or config not in host.files:
        problems.append(f"ExecStart --config {config}: no install step puts config.yaml there")
    for value in service.get("WorkingDirectory", []):
        if not value.startswith("-") and not exists(value):
            problems.append(f"WorkingDirectory={value}: not made by the unit or an install step")

    rw_paths = [p for v in service.get("ReadWritePaths", []) for p in v.split()]
    for path in rw_paths:
        if not path.startswith("-") and not exists(path):
            problems.append(
                f"ReadWritePaths={path}: not made by the unit or an install step "
                "(a missing path fails the start with 226/NAMESPACE)"
            )
    strict = service.get("ProtectSystem", ["no"])[-1] == "strict"
    writable_roots = [p.lstrip("-") for p in rw_paths] + list(own)

    socket = listen_path(" ".join(service.get("Environment", [])))
    written = {"socket directory": os.path.dirname(socket)}
    for log_file in runner_log_files():
        written[f"log file {log_file}: directory"] = os.path.dirname(log_file)
    for what, directory in written.items():
        if not exists(directory):
            problems.append(f"{what} {directory}: not made by the unit or an install step")
        elif not writable(directory):
            problems.append(f"{what} {directory}: not writable by {user}")
        if strict and not under(directory, writable_roots):
            problems.append(f"{what} {directory}: read-only under ProtectSystem=strict")
    if path_for_test() != {socket}:
        problems.append(f"the doc's path_for_test {path_for_test()} is not the socket {socket}")
    if not any(c[:3] == ["systemctl", "reload", UNIT.stem] for c in host.commands):
        problems.append(f"the doc does not show `systemctl reload {UNIT.stem}`")
    assert not problems, "\n".join(problems)


# -- supervisord --------------------------------------------------------------------


def test_supervisord_paths_are_made() -> None:
    """Every path the supervisord program names exists on a fresh host that
    followed the doc (supervisord makes no directories), writable by its user
    where the runner writes; the doc's reload command names the program."""
    name, program = parse_program(SUPERVISORD_CONF.read_text())
    host = documented_host("supervisord")
    user = program.get("user", "root")
    problems = []
    if user != "root" and user not in host.users:
        problems.append(f"user={user}: no install step creates it (useradd --system ...)")
    argv = shlex.split(program["command"])
    if not host.made(argv[0]):
        problems.append(f"command {argv[0]}: no install step creates it")
    config = config_arg(argv)
    if config is None or config not in host.files:
        problems.append(f"command --config {config}: no install step puts config.yaml there")
    if "directory" in program and not host.exists(program["directory"]):
        problems.append(f"directory={program['directory']}: no install step creates it")
    for key in ("stdout_logfile", "stderr_logfile"):
        value = program.get(key, "AUTO")
        if value.startswith("/") and not host.exists(os.path.dirname(value)):
            problems.append(f"{key}={value}: no install step creates its directory")

    socket = listen_path(program.get("environment", ""))
    written = {"socket directory": os.path.dirname(socket)}
    for log_file in runner_log_files():
        written[f"log file {log_file}: directory"] = os.path.dirname(log_file)
    for what, directory in written.items():
        owner = host.dirs.get(os.path.normpath(directory))
        if owner is None:
            problems.append(f"{what} {directory}: no install step creates it")
        elif owner[0] != user:
            problems.append(f"{what} {directory}: owned by {owner[0]}, not {user}")
    if path_for_test() != {socket}:
        problems.append(f"the doc's path_for_test {path_for_test()} is not the socket {socket}")
    if not any(c[1:] == ["signal", "HUP", name] for c in host.commands if c[0] == "supervisorctl"):
        problems.append(f"the doc does not show `supervisorctl signal HUP {name}`")
    assert not problems, "\n".join(problems)


def _tool(name: str) -> str:
    path = Path(sys.prefix) / "bin" / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: pip install -e '.[test]' installs it")
    return found


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _alive(pid: int) -> bool:
    state = _status(pid).get("State", "")
    return bool(state) and not state.startswith(("Z", "X"))


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _status(int(entry)).get("PPid") == str(pid):
            found.append(int(entry))
    return found


def _wait(
    predicate: Any, what: str, diagnostics: Any, timeout: float = DEADLINE_S, failed: Any = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if failed is not None and failed():
            pytest.fail(f"failed waiting for {what}\n{diagnostics()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{diagnostics()}")
        time.sleep(POLL_S)


@dataclass
class Supervised:
    root: Path
    conf: Path
    program: str
    socket: str
    runner_log: Path
    logs: list[Path]
    doc_commands: list[list[str]]
    proc: subprocess.Popen[bytes] | None = None
    pids: set[int] = field(default_factory=set)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [_tool("supervisorctl"), "-c", str(self.conf), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def documented(self, verb: str) -> subprocess.CompletedProcess[str]:
        """Run the doc's ``supervisorctl <verb> ...`` against this supervisord."""
        for argv in self.doc_commands:
            if argv[:2] == ["supervisorctl", verb]:
                return self.ctl(*argv[1:])
        pytest.fail(f"the doc shows no `supervisorctl {verb} ...`")

    def diagnostics(self) -> str:
        parts = []
        if self.proc is not None and self.proc.poll() is not None:
            parts.append(f"supervisord exited with {self.proc.returncode}")
        for path in self.logs:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}:\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def failed(self) -> bool:
        """supervisord exited, or gave up on the program (FATAL)."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        with contextlib.suppress(OSError):
            return "entered FATAL state" in (self.root / "supervisord.log").read_text()
        return False

    def runner_pids(self) -> list[int]:
        done = self.ctl("pid", self.program)
        master = int(done.stdout.strip()) if done.stdout.strip().isdigit() else 0
        pids = [master, *_children(master)] if master else []
        self.pids.update(pids)
        return pids


def _remap(text: str, root: Path) -> str:
    """Absolute paths of a fresh host -> the same paths under ``root``."""
    pattern = r"(?<![\w./])/(?:opt|run|var|etc|srv|home)(?:/[^\s\",;:]*)?"
    return re.sub(pattern, lambda m: f"{root}{m.group(0)}", text)


def _make_venv(venv: Path, user: pwd.struct_passwd) -> None:
    """A venv at the documented place that ``user`` can run, holding this
    checkout's runner and dependencies (a .pth adds the test venv's
    site-packages). Its base is this Python, or the system's Python of the same
    version when ``user`` may not run this one (e.g. one under /root)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = sysconfig.get_paths()["purelib"]
    probe = f"import site; site.addsitedir({site_packages!r}); import runner, uvloop"
    tried = []
    for base in (
        getattr(sys, "_base_executable", sys.executable),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ):
        if not os.path.exists(base) or base in tried:
            continue
        tried.append(base)
        with contextlib.suppress(OSError):  # PermissionError: not for this user
            done = subprocess.run(
                [base, "-c", probe], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                cwd="/", capture_output=True, timeout=30,
            )  # fmt: skip
            if done.returncode == 0:
                break
    else:
        pytest.skip(f"no Python {version} that {user.pw_name} may run and import from: {tried}")
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    pth = Path(venv, "lib", f"python{version}", "site-packages", "apisix-runner-test.pth")
    pth.write_text(f"import site; site.addsitedir({site_packages!r})\n")


def _install(root: Path) -> Supervised:
    """Under ``root``: what the documented steps make (directories, owners, the
    venv, config.yaml with its log file on) and the supervisord config."""
    host = documented_host("supervisord")
    name, program = parse_program(SUPERVISORD_CONF.read_text())
    service_user = program.get("user", "root")
    venvs = [p for p in host.dirs if f"{p}/bin/python" in host.files]
    assert venvs, "the doc's install steps create no virtual environment"
    test_user = pwd.getpwnam(TEST_USER)

    for path, (owner, group, mode) in sorted(host.dirs.items()):
        target = Path(f"{root}{path}")
        if path in venvs:
            target.parent.mkdir(parents=True, exist_ok=True)
            _make_venv(target, test_user)
            continue
        target.mkdir(parents=True, exist_ok=True)
        if mode is not None:
            target.chmod(mode)
        uid = test_user.pw_uid if owner == service_user else pwd.getpwnam(owner).pw_uid
        gid = test_user.pw_gid if group == service_user else grp.getgrnam(group).gr_gid
        os.chown(target, uid, gid)

    # config.yaml as the doc leaves it (its logging.file line uncommented), two workers
    log_file = (documented_config().get("logging") or {}).get("file")
    assert log_file, "the doc sets no logging.file"
    log_file = _remap(log_file, root)
    config_text, found = re.subn(
        r"(?m)^(\s+)#\s*file:\s*\S+", lambda m: f"{m.group(1)}file: {log_file}", CONFIG.read_text()
    )
    assert found == 1, f"{CONFIG}: no commented logging.file line to turn on"
    config_text += "\nworkers: 2\n"
    assert yaml.safe_load(config_text)["logging"]["file"] == log_file
    argv = shlex.split(program["command"])
    config_path = config_arg(argv)
    assert config_path is not None, "the program's command has no --config"
    rendered_config = Path(_remap(config_path, root))
    assert rendered_config.parent.is_dir(), (
        f"{config_path}: its directory is not made by the install steps"
    )
    rendered_config.write_text(config_text)
    rendered_config.chmod(0o644)

    section = SUPERVISORD_CONF.read_text()
    section = re.sub(r"(?m)^user\s*=.*$", f"user={TEST_USER}", section)
    section = _remap(section, root)
    conf = root / "supervisord.conf"
    conf.write_text(
        f"""[unix_http_server]
file={root}/supervisor.sock
chmod=0700

[supervisord]
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}
nodaemon=true
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{root}/supervisor.sock

{section}"""
    )
    _, rendered = parse_program(section)
    logs = [root / "supervisord.log", root / "supervisord.out", Path(log_file)]
    logs += [Path(rendered[k]) for k in ("stdout_logfile", "stderr_logfile") if k in rendered]
    running = Supervised(
        root=root,
        conf=conf,
        program=name,
        socket=listen_path(rendered.get("environment", "")),
        runner_log=Path(log_file),
        logs=logs,
        doc_commands=host.commands,
    )
    return running


@pytest.fixture
def supervised() -> Iterator[Supervised]:
    """deploy/supervisord.conf under a temporary root, with the directories the
    documented steps make (owned by TEST_USER where the doc says the service
    user), supervisord running in the foreground."""
    if os.geteuid() != 0:
        pytest.skip("supervisord's user= needs root: run as root to test deploy/supervisord.conf")
    root = Path(tempfile.mkdtemp(prefix="ard-", dir="/tmp"))
    root.chmod(0o755)  # TEST_USER walks through it
    running = None
    try:
        running = _install(root)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        with open(root / "supervisord.out", "wb") as out:
            running.proc = subprocess.Popen(
                [_tool("supervisord"), "-n", "-c", str(running.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        yield running
    finally:
        if running is not None:
            _stop_supervisord(running)
        shutil.rmtree(root, ignore_errors=True)


def _stop_supervisord(running: Supervised) -> None:
    """supervisord stops its program; then whatever runner process is left."""
    proc = running.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in running.pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _stop_call(socket: str) -> Any:
    async with await Client.connect(socket) as client:
        token = await client.prepare_conf([("stop", '{"status": 200}')])
        return await client.call(token, HTTPRequest(path="/"))


def _check_serves(running: Supervised) -> None:
    result = arun(_stop_call(running.socket))
    assert isinstance(result.action, Stop) and result.action.status == 200, result


def _check_user(running: Supervised) -> list[int]:
    expected = pwd.getpwnam(TEST_USER)
    pids = running.runner_pids()
    assert len(pids) >= 3, f"expected the master and 2 workers, found {pids}"
    for pid in pids:
        status = _status(pid)
        uids, gids = status.get("Uid", "").split(), status.get("Gid", "").split()
        if not uids:  # exited meanwhile (a worker replaced on reload)
            continue
        assert uids == [str(expected.pw_uid)] * 4, f"pid {pid} runs as uid {uids}"
        assert gids == [str(expected.pw_gid)] * 4, f"pid {pid} runs as gid {gids}"
    return pids


def test_supervisord_runs_reloads_and_stops(supervised: Supervised) -> None:
    running = supervised
    accepting = lambda: accepts(running.socket)  # noqa: E731
    _wait(accepting, f"{running.socket} to accept", running.diagnostics, failed=running.failed)
    _check_user(running)
    _check_serves(running)

    offset = len(running.runner_log.read_text(errors="replace"))
    done = running.documented("signal")
    assert done.returncode == 0 and "signalled" in done.stdout, done.stdout + done.stderr

    def reloaded() -> bool:
        return "reload done" in running.runner_log.read_text(errors="replace")[offset:]

    _wait(reloaded, "'reload done' in the runner's log", running.diagnostics)
    _check_user(running)
    _check_serves(running)

    pids = running.runner_pids()
    done = running.documented("stop")
    assert done.returncode == 0 and "stopped" in done.stdout, done.stdout + done.stderr

    def left() -> str:
        return f"{[p for p in pids if _alive(p)]} still run\n{running.diagnostics()}"

    _wait(lambda: not any(_alive(p) for p in running.pids), "the processes to exit", left)

    def gone() -> bool:
        return not os.path.exists(running.socket)

    _wait(gone, f"{running.socket} to be removed", running.diagnostics, timeout=2.0)


def test_remap_moves_host_paths_only() -> None:
    text = "command=/opt/a/.venv/bin/python -m runner --config /opt/a/config.yaml\n"
    text += 'environment=X="unix:/run/a/s",Y="1" ; /tmp/b/c'
    assert _remap(text, Path("/tmp/x")) == (
        "command=/tmp/x/opt/a/.venv/bin/python -m runner --config /tmp/x/opt/a/config.yaml\n"
        'environment=X="unix:/tmp/x/run/a/s",Y="1" ; /tmp/b/c'
    )


def test_doc_parser_reads_install_commands() -> None:
    host = Host()
    for argv in shell_commands(
        "useradd --system --user-group --no-create-home apisix\n"
        "install -d -o apisix -g apisix -m 0750 /var/log/x && mkdir -p /opt/y\n"
        "echo 'd /run/x 0755 apisix apisix -' > /etc/tmpfiles.d/x.conf\n"
        "systemd-tmpfiles --create /etc/tmpfiles.d/x.conf  # now and at boot\n"
        "python3 -m venv /opt/x/.venv\n"
    ):
        _apply(host, argv)
    assert host.users == {"apisix"} and host.groups == {"apisix"}
    assert host.dirs["/var/log/x"] == ("apisix", "apisix", 0o750)
    assert host.dirs["/run/x"] == ("apisix", "apisix", 0o755)
    assert host.made("/opt/x") and host.made("/opt/x/.venv/bin/python") and host.made("/opt/y")
    assert not host.made("/opt/z")

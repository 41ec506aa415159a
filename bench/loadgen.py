"""A load generator that talks to a plugin runner the way APISIX does.

    python -m bench.loadgen [--socket PATH --pid PID [PID ...] | --workers N]
        [--workload NAME | --plugin NAME [--conf JSON] | --chain NAME:JSON ...]
        [--plugin-dir DIR ...] [--runner-config YAML]
        [--connections 16] [--duration 10] [--processes P] [--warmup 1]
        [--var NAME=VALUE ...] [--body-size N] [--timeout 60] [--json OUT]
    python -m bench.loadgen --suite [--rounds 3] [--duration 3] [--only NAME ...]
        [--no-floor] [--prepare-count 200] [--json OUT]

Like APISIX it keeps Unix-socket connections alive, prepares the conf once
(PrepareConf, key "route#1#ext-plugin-pre-req#1"), then sends one HTTPReqCall
at a time per connection, answers the runner's ExtraInfo requests, re-prepares
on CONF_TOKEN_NOT_FOUND and reopens a connection after any error.

Without --socket it starts `python -m runner start --workers N --foreground`
itself (with --plugin-dir directories and --runner-config) and measures that
process and all its descendants. With --socket it measures the --pid
processes (and their descendants): --pid takes several pids, space- or
comma-separated, and may be repeated, so `--pid $(pgrep -f 'runner start')`
(the supervisor and its workers) works; each process is counted once.

--workload NAME runs one row of the target table (WORKLOADS: the
chain, its connections, the ExtraInfo answers, bench/plugins loaded).
--suite runs the whole table against one runner, every workload --rounds
times interleaved, plus the bare-loop floor (bench.fake_runner), PrepareConf
latency for 50 plugins and the workers' RSS, and prints medians with the
target and pass/fail as Markdown.

Frames are built once per client process with the flatc-generated code in
runner/_a6, never with runner.proto, so that a codec bug in the runner cannot
hide behind the same bug in the client. Other scripts can call `run(options)`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, cast

import flatbuffers
import uvloop
import yaml

from runner.testing import text_vector
from runner.testing._a6.A6 import Method
from runner.testing._a6.A6.Err import Resp as ErrResp
from runner.testing._a6.A6.ExtraInfo import Info as XInfo
from runner.testing._a6.A6.ExtraInfo import Req as XReq
from runner.testing._a6.A6.ExtraInfo import Resp as XResp
from runner.testing._a6.A6.ExtraInfo import Var as XVar
from runner.testing._a6.A6.HTTPReqCall import Req as CallReq
from runner.testing._a6.A6.PrepareConf import Req as PrepReq
from runner.testing._a6.A6.PrepareConf import Resp as PrepResp

RPC_ERROR, RPC_PREPARE_CONF, RPC_HTTP_REQ_CALL, RPC_EXTRA_INFO = 0, 1, 2, 3
ERR_KINDS = {0: "bad_request", 1: "service_unavailable", 2: "conf_token_not_found"}
TOKEN_NOT_FOUND = "conf_token_not_found"
PREPARE_KEY = "route#1#ext-plugin-pre-req#1"
REQUEST_ID = 0x00400001  # (worker 1 << 22) + 1; APISIX never checks it
CONNECT_POLL_S, CONNECT_DEADLINE_S, STOP_GRACE_S = 0.02, 15.0, 3.0
EXTRA_CACHE_SIZE = 4096  # distinct ExtraInfo requests remembered per client process
TICK_S = 0.1  # client watchdog / progress counter period


# --------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class Options:
    socket: str | None = None
    pids: tuple[int, ...] = ()
    workers: int = 1
    conf: tuple[tuple[str, str], ...] = ()  # (plugin name, conf string), in order
    connections: int = 16
    duration: float = 10.0
    processes: int = 0  # 0: 1 if connections <= 16 else 2, at most the clients' CPUs
    warmup: float = 1.0
    variables: tuple[tuple[str, str], ...] = ()
    body_size: int = 0
    timeout: float = 60.0  # APISIX's read timeout
    progress: bool = False  # live progress bar on stderr
    plugin_dirs: tuple[str, ...] = ()  # more plugin directories for a runner started here
    runner_config: str | None = None  # a config.yaml to start that runner with
    pin: bool = False  # the runner started here on its own CPUs, the clients on the others

    def client_processes(self) -> int:
        """--processes, else 1 for up to 16 connections and 2 above, but never
        more than the CPUs the clients have: two client processes on one CPU
        take turns at the scheduler's tick (4 ms at 250 Hz), and the one
        waiting reads its replies that much late, which the latency
        percentiles then record as the runner's (a p99 of the tick)."""
        wanted = self.processes or min(1 if self.connections <= 16 else 2, self.client_cpus())
        return max(1, min(wanted, self.connections))

    def client_cpus(self) -> int:
        """The CPUs the client processes have: pinned, those --pin leaves
        them; else those this process may use, less the runner's workers."""
        if self.pin:
            return len(pin_sets(self.workers)[1])
        return max(1, len(os.sched_getaffinity(0)) - self.workers)


@dataclasses.dataclass
class Result:
    requests: int
    duration_s: float
    requests_per_s: float
    latency_us: dict[str, float]  # p50, p90, p99, max, mean
    runner_cpu_us_per_req: float | None
    # Its user-space part (the rest is the kernel's: the socket I/O, wake-ups):
    # what the runner's own code costs, where the total also moves with the peer.
    runner_user_us_per_req: float | None
    loadgen_cpu_us_per_req: float | None
    runner_cpu_cores: float | None  # average busy cores during the window
    errors: dict[str, int]
    connections: int
    processes: int
    payload_bytes: int
    runner_pids: list[int]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- frames


def frame(kind: int, payload: bytes) -> bytes:
    """Header (type byte + 24-bit big-endian length) followed by the payload."""
    return bytes([kind]) + len(payload).to_bytes(3, "big") + payload


def build_prepare(conf: tuple[tuple[str, str], ...], key: str = PREPARE_KEY) -> bytes:
    b = flatbuffers.Builder(256)
    conf_off = text_vector(b, list(conf)) if conf else None
    key_off = b.CreateString(key)
    PrepReq.Start(b)
    if conf_off is not None:
        PrepReq.AddConf(b, conf_off)
    PrepReq.AddKey(b, key_off)
    b.Finish(PrepReq.End(b))
    return frame(RPC_PREPARE_CONF, bytes(b.Output()))


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    method: int
    path: str
    args: tuple[tuple[str, str | None], ...]
    headers: tuple[tuple[str, str | None], ...]
    src_ip: bytes


def realistic_request(body_size: int = 0) -> RequestSpec:
    """A typical browser/API-client request: ~10 headers, ~850 bytes encoded."""
    token = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6" * 3
    cookie = (
        "session=3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a; "
        "csrftoken=Zx8Qm2Lp7Rt4Vw9Yb3Nc6Hd1Jf5Kg0Ps; _ga=GA1.2.1234567890.1700000000; "
        "theme=dark; lang=en-US; tz=Europe%2FParis"
    )
    headers: list[tuple[str, str | None]] = [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9,fr;q=0.8"),
        ("x-request-id", str(uuid.uuid4())),
        ("x-forwarded-for", "203.0.113.195, 70.41.3.18"),
        ("cookie", cookie),
        ("authorization", "Bearer " + token[:150]),
        ("content-type", "application/json"),
    ]
    if body_size:
        headers.append(("content-length", str(body_size)))
    return RequestSpec(
        method=Method.Method.POST if body_size else Method.Method.GET,
        path="/api/v1/users/12345/orders",
        args=(("page", "2"), ("limit", "50"), ("sort", "created_at")),
        headers=tuple(headers),
        src_ip=bytes([192, 0, 2, 17]),
    )


def build_call(spec: RequestSpec, token: int) -> bytes:
    b = flatbuffers.Builder(1024)
    src_ip = b.CreateByteVector(spec.src_ip)
    path = b.CreateString(spec.path)
    args = text_vector(b, list(spec.args))
    headers = text_vector(b, list(spec.headers))
    CallReq.Start(b)
    CallReq.AddId(b, REQUEST_ID)
    CallReq.AddSrcIp(b, src_ip)
    CallReq.AddMethod(b, spec.method)
    CallReq.AddPath(b, path)
    CallReq.AddArgs(b, args)
    CallReq.AddHeaders(b, headers)
    CallReq.AddConfToken(b, token)
    b.Finish(CallReq.End(b))
    return frame(RPC_HTTP_REQ_CALL, bytes(b.Output()))


def build_extra_resp(result: bytes | None) -> bytes:
    b = flatbuffers.Builder(64 + len(result or b""))
    result_off = None if result is None else b.CreateByteVector(result)
    XResp.Start(b)
    if result_off is not None:
        XResp.AddResult(b, result_off)
    b.Finish(XResp.End(b))
    return frame(RPC_EXTRA_INFO, bytes(b.Output()))


def decode_error(payload: bytes) -> str:
    code = int(ErrResp.Resp.GetRootAs(payload, 0).Code())
    return ERR_KINDS.get(code, f"err_code_{code}")


def decode_token(kind: int, payload: bytes) -> int:
    if kind == RPC_ERROR:
        raise PrepareError(decode_error(payload))
    if kind != RPC_PREPARE_CONF:
        raise PrepareError(f"unexpected_type_{kind}")
    return int(PrepResp.Resp.GetRootAs(payload, 0).ConfToken())


class PrepareError(Exception):
    pass


class ExtraInfoAnswers:
    """Precomputed ExtraInfo replies, answered like APISIX's handle_extra_info."""

    def __init__(self, variables: tuple[tuple[str, str], ...], body_size: int) -> None:
        self.absent = build_extra_resp(None)
        self.vars = {n.encode(): build_extra_resp(v.encode()) for n, v in variables}
        body = (b"0123456789abcdef" * (body_size // 16 + 1))[:body_size]
        self.req_body = build_extra_resp(body) if body_size else self.absent
        self.cache: dict[bytes, bytes] = {}

    def answer(self, payload: bytes) -> bytes | None:
        """The reply frame, or None for an info type APISIX does not support.

        Replies are cached by request bytes: a runner asks the same questions
        over and over, and decoding each one would make the client the bottleneck.
        """
        reply = self.cache.get(payload)
        if reply is None:
            reply = self._decode(payload)
            if reply is not None and len(self.cache) < EXTRA_CACHE_SIZE:
                self.cache[payload] = reply
        return reply

    def _decode(self, payload: bytes) -> bytes | None:
        req = XReq.Req.GetRootAs(payload, 0)
        info_type = req.InfoType()
        if info_type == XInfo.Info.Var:
            table = req.Info()
            var = XVar.Var()
            var.Init(table.Bytes, table.Pos)
            return self.vars.get(bytes(var.Name() or b""), self.absent)
        if info_type == XInfo.Info.ReqBody:
            return self.req_body
        if info_type == XInfo.Info.RespBody:
            return self.absent  # APISIX: "not exits" inside a request call
        return None


# --------------------------------------------------------------------------- /proc


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def descendants(roots: tuple[int, ...] | list[int]) -> list[int]:
    """The roots plus all their descendants, by scanning /proc/*/stat for ppids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _proc_stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid for pid in roots if os.path.exists(f"/proc/{pid}")]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


def cpu_and_user_ticks(pids: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """utime + stime, and utime alone (clock ticks), of each pid still alive:
    one read of each /proc/<pid>/stat, so both are of the same moment."""
    cpu, user = {}, {}
    for pid in pids:
        fields = _proc_stat_fields(pid)
        if fields is not None:
            user[pid] = int(fields[11])
            cpu[pid] = user[pid] + int(fields[12])
    return cpu, user


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of each pid still alive."""
    return cpu_and_user_ticks(pids)[0]


def cpu_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU of every thread of ``pids`` (/proc/<pid>/task/*/schedstat):
    precise where clock ticks are too coarse, e.g. for a few hundred PrepareConfs."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
    return total


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU used between two samples; a process that exited counts for nothing."""
    delta = sum(after.get(pid, t) - t for pid, t in before.items())
    return delta / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- managed runner


def _wait_for_socket(path: str, proc: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + CONNECT_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runner exited with {proc.returncode}:\n{_tail(log_path)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError:
                pass
        time.sleep(CONNECT_POLL_S)
    raise RuntimeError(f"runner not listening on {path} after 15 s:\n{_tail(log_path)}")


def _tail(path: str, size: int = 4000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - size))
        return f.read().decode(errors="replace")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the runner's process group, SIGKILL after 3 s."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
            return


def runner_config(base: str | None, plugin_dirs: tuple[str, ...]) -> dict[str, Any]:
    """The config of a runner started here: ``base`` (a config.yaml) plus
    ``plugin_dirs`` (made absolute, since the file is written elsewhere)."""
    config: dict[str, Any] = {}
    if base:
        with open(base) as f:
            config = yaml.safe_load(f) or {}
        base_dir = os.path.dirname(os.path.abspath(base))
        config["plugin_dirs"] = [os.path.join(base_dir, d) for d in config.get("plugin_dirs", [])]
    if plugin_dirs:
        config["plugin_dirs"] = [*config.get("plugin_dirs", []), *map(os.path.abspath, plugin_dirs)]
    return config


def pin_sets(workers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(runner CPUs, load generator CPUs) for --pin: the first ``workers`` of
    the CPUs this process may use for the runner (and the bare-loop floor,
    which takes the same turns), the rest for the client processes. Pinned,
    neither side's CPU time moves with where the scheduler put the other."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= workers:
        raise ValueError(f"--pin needs more CPUs than workers: {len(cpus)} CPUs, {workers} workers")
    return tuple(cpus[:workers]), tuple(cpus[workers:])


def _pinned(cpus: tuple[int, ...]) -> Callable[[], None] | None:
    """A preexec_fn setting the child's CPUs before it runs (its workers inherit them)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def managed_runner(
    workers: int,
    plugin_dirs: tuple[str, ...] = (),
    base_config: str | None = None,
    cpus: tuple[int, ...] = (),
    wrapper: tuple[str, ...] = (),
) -> Iterator[tuple[str, int]]:
    """Start `python -m runner start` (on ``cpus``, if any, under the
    ``wrapper`` command, e.g. valgrind, if any); yields (socket path, pid)."""
    tmp = tempfile.mkdtemp(prefix="lg-", dir="/tmp")
    sock, log_path = os.path.join(tmp, "r.sock"), os.path.join(tmp, "runner.log")
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w") as f:
        f.write(json.dumps(runner_config(base_config, plugin_dirs)) + "\n")  # JSON is YAML
    cmd = [*wrapper, sys.executable, "-m", "runner", "start", "--workers", str(workers)]
    cmd += ["--config", config, "--foreground"]
    env = {**os.environ, "APISIX_LISTEN_ADDRESS": f"unix:{sock}"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_pinned(cpus),
        )  # fmt: skip
    try:
        _wait_for_socket(sock, proc, log_path)
        yield sock, proc.pid
    finally:
        _stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- client process


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    index: int
    socket: str
    connections: int
    conf: tuple[tuple[str, str], ...]
    request: RequestSpec
    variables: tuple[tuple[str, str], ...]
    body_size: int
    timeout: float
    cpus: tuple[int, ...] = ()  # --pin: the CPUs this client process runs on


class Conn(asyncio.Protocol):
    """One keepalive connection with exactly one HTTPReqCall in flight."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.t0 = 0  # perf_counter_ns when the in-flight call was sent
        self.gen = 0  # token generation of the in-flight call
        self.busy = False
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self) -> None:
        assert self.transport is not None
        self.busy = True
        self.gen = self.client.gen
        self.t0 = time.perf_counter_ns()
        self.transport.write(self.client.call_frame)

    def data_received(self, data: bytes) -> None:
        # Fast path: the read holds exactly one whole frame.
        n = len(data)
        if not self.buf and n >= 4 and n == 4 + ((data[1] << 16) | (data[2] << 8) | data[3]):
            self.on_frame(data[0], data)
            return
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        buf = self.buf
        while len(buf) >= 4 and not self.dead:
            end = 4 + ((buf[1] << 16) | (buf[2] << 8) | buf[3])
            if len(buf) < end:
                return
            data = bytes(buf[:end])
            del buf[:end]
            self.on_frame(data[0], data)

    def on_frame(self, kind: int, data: bytes) -> None:
        if kind == RPC_HTTP_REQ_CALL:
            self.client.on_ok(self)
        elif kind == RPC_EXTRA_INFO:
            self._on_extra(data[4:])
        elif kind == RPC_ERROR:
            self.client.fail(self, decode_error(data[4:]))
        else:
            self.client.fail(self, f"unexpected_type_{kind}")

    def _on_extra(self, payload: bytes) -> None:
        reply = self.client.answers.answer(payload)
        if reply is None:
            self.client.fail(self, "unsupported_info_type")
        else:
            assert self.transport is not None
            self.transport.write(reply)

    def close(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.dead:
            self.client.fail(self, "closed")


class Client:
    """Per-process state: the shared frames, counters and latency samples."""

    def __init__(self, cfg: ClientConfig, progress: Any) -> None:
        self.cfg = cfg
        self.progress = progress  # shared counter read by the parent's progress bar
        self.prepare_frame = build_prepare(cfg.conf)
        self.answers = ExtraInfoAnswers(cfg.variables, cfg.body_size)
        self.call_frame = b""
        self.gen = 0
        self.conns: set[Conn] = set()
        self.lat = array.array("q")
        self.errors: dict[str, int] = {}
        self.done = 0
        self.running = False
        self.measuring = False
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()

    def set_token(self, token: int) -> None:
        self.call_frame = build_call(self.cfg.request, token)
        self.gen += 1

    # hot path ------------------------------------------------------------------
    def on_ok(self, conn: Conn) -> None:
        now = time.perf_counter_ns()
        if self.measuring:
            self.lat.append(now - conn.t0)
        self.done += 1
        if self.running:
            assert conn.transport is not None
            conn.t0 = now
            conn.transport.write(self.call_frame)
        else:
            conn.busy = False

    # errors --------------------------------------------------------------------
    def count(self, kind: str) -> None:
        if self.measuring:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def fail(self, conn: Conn, kind: str) -> None:
        """Like APISIX: count the error, close the connection, use a new one."""
        self.count(kind)
        conn.close()
        self.conns.discard(conn)
        if self.running:
            refresh = conn.gen if kind == TOKEN_NOT_FOUND else None
            task = asyncio.ensure_future(self.replace(refresh))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def replace(self, stale_gen: int | None) -> None:
        if stale_gen is not None:
            await self.refresh(stale_gen)
        while self.running:
            try:
                conn = await self.connect()
            except OSError:
                self.count("connect_failed")
                await asyncio.sleep(TICK_S)
                continue
            if self.running:
                conn.send()
            else:
                conn.close()
            return

    async def refresh(self, stale_gen: int) -> None:
        """Re-prepare once per stale token, however many connections saw it."""
        async with self.lock:
            while self.gen == stale_gen and self.running:
                try:
                    self.set_token(await self.prepare())
                except (OSError, PrepareError):
                    self.count("prepare_failed")
                    await asyncio.sleep(TICK_S)

    # connections -----------------------------------------------------------------
    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(lambda: Conn(self), self.cfg.socket)
        self.conns.add(conn)
        return conn

    async def prepare(self) -> int:
        """PrepareConf on its own connection, like APISIX's nested connection B."""
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(s, self.cfg.socket), self.cfg.timeout)
            await loop.sock_sendall(s, self.prepare_frame)
            header = await asyncio.wait_for(_recv_exact(loop, s, 4), self.cfg.timeout)
            size = int.from_bytes(header[1:4], "big")
            payload = await asyncio.wait_for(_recv_exact(loop, s, size), self.cfg.timeout)
        return decode_token(header[0], payload)

    def tick(self) -> None:
        """Every TICK_S: publish progress and time out stuck calls."""
        self.progress.value = self.done
        limit = time.perf_counter_ns() - int(self.cfg.timeout * 1e9)
        for conn in [c for c in self.conns if c.busy and c.t0 < limit]:
            self.fail(conn, "timeout")

    async def setup(self) -> None:
        self.set_token(await self.prepare())
        for _ in range(self.cfg.connections):
            await self.connect()

    async def drain(self, grace_s: float) -> None:
        """Stop sending; give the in-flight calls a moment, then close everything."""
        self.running = False
        deadline = time.monotonic() + grace_s
        while any(c.busy for c in self.conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.conns):
            conn.close()
        for task in list(self.tasks):
            task.cancel()


async def _recv_exact(loop: asyncio.AbstractEventLoop, s: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await loop.sock_recv(s, n - len(data))
        if not chunk:
            raise PrepareError("closed")
        data += chunk
    return bytes(data)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _recv_pipe(pipe: Connection) -> Any:
    """Receive from a multiprocessing pipe without blocking the event loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pipe.fileno(), _resolve, ready)
    try:
        await ready
    finally:
        loop.remove_reader(pipe.fileno())
        os.set_blocking(pipe.fileno(), True)  # add_reader made it non-blocking
    return pipe.recv()


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def client_main(cfg: ClientConfig, pipe: Connection, progress: Any) -> dict[str, Any]:
    client = Client(cfg, progress)
    await client.setup()
    pipe.send(("ready", cfg.index))
    begin, warmup, duration = await _recv_pipe(pipe)
    ticker = _Ticker(client)
    await _sleep_until(begin)
    client.running = True
    for conn in list(client.conns):
        conn.send()
    await _sleep_until(begin + warmup)
    client.measuring = True
    await _sleep_until(begin + warmup + duration)
    client.measuring = False
    await client.drain(1.0)
    ticker.stop()
    progress.value = client.done
    return {"lat": client.lat.tobytes(), "errors": client.errors}


class _Ticker:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.handle = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self.client.tick()
        self.handle = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def stop(self) -> None:
        self.handle.cancel()


def client_process(cfg: ClientConfig, pipe: Connection, progress: Any) -> None:
    """Entry point of a client process (multiprocessing target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if cfg.cpus:
        os.sched_setaffinity(0, cfg.cpus)
    try:
        pipe.send(("result", uvloop.run(client_main(cfg, pipe, progress))))
    except Exception as exc:
        pipe.send(("error", f"client {cfg.index}: {type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------- parent


@dataclasses.dataclass
class Child:
    process: BaseProcess
    pipe: Connection
    progress: Any


def _start_children(opts: Options, path: str) -> list[Child]:
    ctx = multiprocessing.get_context("spawn")
    n = opts.client_processes()
    request = realistic_request(opts.body_size)
    children = []
    for i in range(n):
        share = opts.connections // n + (1 if i < opts.connections % n else 0)
        cpus = pin_sets(opts.workers)[1] if opts.pin else ()
        cfg = ClientConfig(
            i, path, share, opts.conf, request, opts.variables, opts.body_size, opts.timeout, cpus
        )
        parent_end, child_end = ctx.Pipe()
        progress = ctx.RawValue("Q", 0)
        proc = ctx.Process(target=client_process, args=(cfg, child_end, progress), daemon=True)
        proc.start()
        child_end.close()
        children.append(Child(proc, parent_end, progress))
    return children


def _receive(child: Child, timeout: float) -> Any:
    """The next message from a child; raises if it failed or stayed silent."""
    if not child.pipe.poll(timeout):
        raise RuntimeError(f"client process {child.process.pid} did not answer")
    try:
        tag, value = child.pipe.recv()
    except EOFError:
        raise RuntimeError(f"client process {child.process.pid} died") from None
    if tag == "error":
        raise RuntimeError(value)
    return value


def _stop_children(children: list[Child]) -> None:
    for child in children:
        child.process.join(2.0)
        if child.process.is_alive():
            child.process.terminate()
            child.process.join(2.0)


class Progress:
    """Live one-line progress on stderr (only when it is a terminal)."""

    def __init__(self, children: list[Child], begin: float, opts: Options) -> None:
        self.children, self.begin, self.opts = children, begin, opts
        self.history: collections.deque[tuple[float, int]] = collections.deque()
        self.base = 0  # requests done when the measured window started
        self.measuring = False

    def wait_until(self, t: float) -> None:
        while (left := t - time.monotonic()) > 0:
            time.sleep(min(left, 0.25))
            if self.opts.progress:
                self._show()

    def start_window(self) -> None:
        self.base, self.measuring = self._done(), True

    def _done(self) -> int:
        return sum(int(c.progress.value) for c in self.children)

    def _rate(self, now: float, n: int) -> float:
        """Requests/s over the last second or so (the counters move every TICK_S)."""
        self.history.append((now, n))
        while len(self.history) > 1 and now - self.history[1][0] >= 1.0:
            self.history.popleft()
        t0, n0 = self.history[0]
        return (n - n0) / (now - t0) if now > t0 else 0.0

    def _show(self) -> None:
        now, n = time.monotonic(), self._done()
        rate = self._rate(now, n)
        elapsed = now - self.begin - self.opts.warmup
        phase = f"{elapsed:5.1f}/{self.opts.duration:g}s" if self.measuring else "warm-up"
        line = f"  {phase}  {n - self.base:>10,} req  {rate:>10,.0f} req/s"
        sys.stderr.write("\r\x1b[K" + line)
        sys.stderr.flush()

    def clear(self) -> None:
        if self.opts.progress:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@dataclasses.dataclass
class Window:
    """CPU samples taken at the start and the end of the measured window."""

    runner_pids: list[int]
    runner_s: float = 0.0
    runner_user_s: float = 0.0
    loadgen_s: float = 0.0
    wall_s: float = 0.0


def _measure(opts: Options, children: list[Child], root_pids: tuple[int, ...]) -> Window:
    for child in children:
        _receive(child, 60.0)  # "ready": connected and prepared
    begin = time.monotonic() + 0.05
    for child in children:
        child.pipe.send((begin, opts.warmup, opts.duration))
    progress = Progress(children, begin, opts)
    progress.wait_until(begin + opts.warmup)
    progress.start_window()
    window = Window(descendants(root_pids) if root_pids else [])
    client_pids = [c.process.pid for c in children if c.process.pid is not None]
    pids = window.runner_pids
    t0, (r0, u0), l0 = time.monotonic(), cpu_and_user_ticks(pids), cpu_ticks(client_pids)
    progress.wait_until(begin + opts.warmup + opts.duration)
    t1, (r1, u1), l1 = time.monotonic(), cpu_and_user_ticks(pids), cpu_ticks(client_pids)
    progress.clear()
    if lost := sorted(set(r0) - set(r1)):
        print(f"loadgen: runner pids {lost} exited; their CPU is not counted", file=sys.stderr)
    window.runner_s, window.runner_user_s = cpu_seconds(r0, r1), cpu_seconds(u0, u1)
    window.loadgen_s, window.wall_s = cpu_seconds(l0, l1), t1 - t0
    return window


def _percentile(sorted_ns: array.array[int], p: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    if not sorted_ns:
        return 0.0
    rank = min(len(sorted_ns) - 1, max(0, math.ceil(p / 100 * len(sorted_ns)) - 1))
    return sorted_ns[rank] / 1000


def _summarize(opts: Options, window: Window, results: list[dict[str, Any]]) -> Result:
    samples = array.array("q")
    errors: dict[str, int] = {}
    for r in results:
        samples.frombytes(r["lat"])
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    lat = array.array("q", sorted(samples))
    n = len(lat)
    latency = {f"p{p}": _percentile(lat, p) for p in (50, 90, 99)}
    latency["max"] = lat[-1] / 1000 if n else 0.0
    latency["mean"] = sum(lat) / n / 1000 if n else 0.0

    def per_req(cpu_s: float) -> float | None:
        return cpu_s * 1e6 / n if n else None

    measured = bool(window.runner_pids)
    return Result(
        requests=n,
        duration_s=opts.duration,
        requests_per_s=n / opts.duration,
        latency_us=latency,
        runner_cpu_us_per_req=per_req(window.runner_s) if measured else None,
        runner_user_us_per_req=per_req(window.runner_user_s) if measured else None,
        loadgen_cpu_us_per_req=per_req(window.loadgen_s),
        runner_cpu_cores=window.runner_s / window.wall_s if measured and window.wall_s else None,
        errors=dict(sorted(errors.items())),
        connections=opts.connections,
        processes=opts.client_processes(),
        payload_bytes=payload_size(opts),
        runner_pids=window.runner_pids,
    )


def payload_size(opts: Options) -> int:
    """Size of one HTTPReqCall payload (frame header excluded)."""
    return len(build_call(realistic_request(opts.body_size), 1)) - 4


def _run_against(opts: Options, path: str, root_pids: tuple[int, ...]) -> Result:
    children = _start_children(opts, path)
    try:
        window = _measure(opts, children, root_pids)
        results = [_receive(c, opts.timeout + 10.0) for c in children]
    finally:
        _stop_children(children)
    return _summarize(opts, window, results)


def run(opts: Options) -> Result:
    """Run one load test (starting the runner unless opts.socket is set).

    Client processes are started with the "spawn" method, so a calling script
    needs the usual `if __name__ == "__main__":` guard.
    """
    if opts.socket:
        return _run_against(opts, opts.socket.removeprefix("unix:"), opts.pids)
    cpus = pin_sets(opts.workers)[0] if opts.pin else ()
    with managed_runner(opts.workers, opts.plugin_dirs, opts.runner_config, cpus) as (path, pid):
        return _run_against(opts, path, (pid,))


# --------------------------------------------------------------------------- output


def format_table(r: Result) -> str:
    def us(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.1f} us"

    cores = "" if r.runner_cpu_cores is None else f"  ({r.runner_cpu_cores:.2f} cores busy)"
    errors = ", ".join(f"{k}={v}" for k, v in r.errors.items()) or "none"
    rows = [
        ("requests", f"{r.requests:,}"),
        ("duration", f"{r.duration_s:g} s"),
        ("requests/s", f"{r.requests_per_s:,.0f}"),
        ("connections", f"{r.connections} ({r.processes} client processes)"),
        *((f"latency {k}", us(v)) for k, v in r.latency_us.items()),
        ("runner CPU/req", us(r.runner_cpu_us_per_req) + cores),
        ("  of it user", us(r.runner_user_us_per_req)),
        ("loadgen CPU/req", us(r.loadgen_cpu_us_per_req)),
        ("runner pids", " ".join(map(str, r.runner_pids)) or "not measured"),
        ("errors", errors),
    ]
    return "\n".join(f"{name:<16} {value}" for name, value in rows)


# --------------------------------------------------------------------------- suite
#
# The target table, measured side by side: one runner (1 worker, the
# bundled plugins and bench/plugins loaded), every workload run once per round,
# rounds interleaved, the median of the rounds reported. Interleaving matters
# on a shared machine: a noisy minute hits every workload, not just one.

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BENCH_PLUGINS = os.path.join(BENCH_DIR, "plugins")
REPO_ROOT = os.path.dirname(BENCH_DIR)
SUITE_VARS = (("remote_addr", "192.0.2.17"),)  # what APISIX answers to ExtraInfo Var
PREPARE_PLUGINS = 50
PREPARE_TARGET_US = 1000.0
RSS_TARGET_MIB = 40.0
RUN_OVERHEAD_S = 1.0  # per suite run: client processes started, connected, prepared


@dataclasses.dataclass(frozen=True)
class Workload:
    """One row of the target table: a chain, and what it must achieve."""

    name: str
    what: str
    conf: tuple[tuple[str, str], ...]
    connections: int = 16
    cpu_target_us: float | None = None  # runner CPU per request, at most
    tail_target: float | None = None  # p99 / p50, at most
    # Runner CPU per request at most this many times a bare-loop floor row's,
    # measured in the same run (the absolute target applies with --no-floor).
    floor_target: tuple[str, float] | None = None


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "stop",
            "`stop` plugin",
            (("stop", '{"body":"hello"}'),),
            cpu_target_us=7.5,
            floor_target=("floor-stop", 1.15),
        ),
        Workload(
            "rewrite",
            "`bench-rewrite`: 2 headers + 1 arg, values computed per request",
            (("bench-rewrite", "{}"),),
            cpu_target_us=12.0,
            floor_target=("floor-stop", 1.6),
        ),
        Workload(
            "var-stop",
            "`bench-var-stop`: 1 var through ExtraInfo, then stop",
            (("bench-var-stop", '{"var":"remote_addr"}'),),
            cpu_target_us=13.0,
            floor_target=("floor-var", 1.15),
        ),
        Workload(
            "noop3",
            "chain of 3 `bench-noop`",
            (("bench-noop", "{}"),) * 3,
            cpu_target_us=8.0,
            floor_target=("floor-stop", 1.2),
        ),
        Workload(
            "stop-64",
            "`stop` plugin, 64 connections: latency tail",
            (("stop", '{"body":"hello"}'),),
            connections=64,
            tail_target=3.0,
        ),
    )
}


def prepare_conf_of(n: int) -> tuple[tuple[str, str], ...]:
    """A route with ``n`` plugins, each with its own config (as APISIX sends
    them: one JSON string per plugin), drawn from the bundled and bench plugins."""
    kinds = (
        ("rewrite", '{{"headers":{{"X-A":"{i}","X-Drop":null}},"args":{{"v":"{i}"}}}}'),
        ("response-rewrite", '{{"headers":{{"X-Cache":"miss-{i}"}}}}'),
        ("hello-world", '{{"n":{i}}}'),
        ("bench-noop", "{{}}"),
        ("bench-rewrite", '{{"prefix":"p{i}-"}}'),
    )
    return tuple((kinds[i % 5][0], kinds[i % 5][1].format(i=i)) for i in range(n))


@dataclasses.dataclass
class PrepareResult:
    count: int
    plugins: int
    latency_us: dict[str, float]  # p50, p99, max
    runner_cpu_us_per_prepare: float | None


def measure_prepare(
    path: str, root_pids: tuple[int, ...], conf: tuple[tuple[str, str], ...], count: int
) -> PrepareResult:
    """``count`` PrepareConfs of ``conf`` one after the other on one connection,
    each with a new route key (so each is parsed and stored anew, as when a
    route is created or changed), timed from send to reply."""
    nonce = uuid.uuid4().hex[:8]
    frames = [build_prepare(conf, f"route#{nonce}-{i}#ext-plugin-pre-req#1") for i in range(count)]
    lat = array.array("q")
    pids = descendants(root_pids)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30.0)
        s.connect(path)
        c0 = cpu_ns(pids)
        for data in frames:
            t0 = time.perf_counter_ns()
            s.sendall(data)
            header = _recv_blocking(s, 4)
            payload = _recv_blocking(s, int.from_bytes(header[1:4], "big"))
            lat.append(time.perf_counter_ns() - t0)
            decode_token(header[0], payload)  # raises on an error reply
        c1 = cpu_ns(pids)
    lat = array.array("q", sorted(lat))
    return PrepareResult(
        count=count,
        plugins=len(conf),
        latency_us={
            "p50": _percentile(lat, 50),
            "p99": _percentile(lat, 99),
            "max": lat[-1] / 1000,
        },
        runner_cpu_us_per_prepare=(c1 - c0) / 1000 / count if pids else None,
    )


def _recv_blocking(s: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise PrepareError("closed")
        data += chunk
    return bytes(data)


def rss_mib(pid: int) -> dict[str, float]:
    """Resident (RSS) and proportional (PSS: shared pages split between the
    processes that share them, e.g. after fork) memory of a process, in MiB."""
    out: dict[str, float] = {}
    for name, key in (("status", "VmRSS:"), ("smaps_rollup", "Pss:")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    out[key.rstrip(":").lower()] = int(line.split()[1]) / 1024
                    break
    return out


@contextlib.contextmanager
def fake_runner(
    extra_var: str | None, cpus: tuple[int, ...] = (), wrapper: tuple[str, ...] = ()
) -> Iterator[tuple[str, int]]:
    """`python -m bench.fake_runner` (the floor: a bare uvloop server answering
    precomputed frames), on ``cpus`` and under ``wrapper`` as managed_runner;
    yields (socket path, pid)."""
    tmp = tempfile.mkdtemp(prefix="lg-fake-", dir="/tmp")
    sock, log_path = os.path.join(tmp, "f.sock"), os.path.join(tmp, "fake.log")
    cmd = [*wrapper, sys.executable, "-m", "bench.fake_runner", sock]
    if extra_var:
        cmd += ["--extra-var", extra_var]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_pinned(cpus),
        )  # fmt: skip
    try:
        _wait_for_socket(sock, proc, log_path)
        yield sock, proc.pid
    finally:
        _stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    duration: float = 3.0
    warmup: float = 1.0
    rounds: int = 3
    workers: int = 1
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    plugin_dirs: tuple[str, ...] = ()
    runner_config: str | None = None
    floor: bool = True  # also measure bench.fake_runner, the bare-loop floor
    prepare_count: int = 200
    progress: bool = False
    pin: bool = False  # see Options.pin


@dataclasses.dataclass
class Row:
    """One line of the target table with every round's figures."""

    name: str
    what: str
    target: str
    runs: list[Result]
    value: float | None = None  # the median of the checked figure
    passed: bool | None = None  # None: informational (no target)
    floor_ratio: float | None = None  # runner CPU per request / its floor row's

    def median(self, get: Any) -> float | None:
        values = [v for v in (get(r) for r in self.runs) if v is not None]
        return statistics.median(values) if values else None


def _cpu(r: Result) -> float | None:
    return r.runner_cpu_us_per_req


def _tail_ratio(r: Result) -> float | None:
    p50 = r.latency_us.get("p50") or 0.0
    return r.latency_us["p99"] / p50 if p50 else None


def _workload_options(w: Workload, s: SuiteOptions) -> Options:
    return Options(
        conf=w.conf,
        connections=w.connections,
        duration=s.duration,
        warmup=s.warmup,
        variables=SUITE_VARS,
        progress=s.progress,
        workers=s.workers,
        pin=s.pin,
    )


def _target_text(w: Workload, floor: bool) -> str:
    if w.floor_target is not None and floor:
        name, ratio = w.floor_target
        return f"<= {ratio:g}x {name}"
    if w.cpu_target_us is not None:
        return f"<= {w.cpu_target_us:g} us/req"
    return f"p99 <= {w.tail_target:g}x p50"


def _judge(row: Row, w: Workload, floors: dict[str, Row]) -> None:
    """The row's value (what its target is about) and whether it passed."""
    floor = floors[w.floor_target[0]].value if w.floor_target is not None else None
    cpu = row.median(_cpu)
    if w.floor_target is not None and floor:
        row.value = cpu
        row.floor_ratio = None if cpu is None else cpu / floor
        row.passed = row.floor_ratio is not None and row.floor_ratio <= w.floor_target[1]
    elif w.cpu_target_us is not None:
        row.value = cpu
        row.passed = cpu is not None and cpu <= w.cpu_target_us
    elif w.tail_target is not None:
        row.value = row.median(_tail_ratio)
        row.passed = row.value is not None and row.value <= w.tail_target


def run_suite(s: SuiteOptions) -> dict[str, Any]:
    """Run the target table; returns it as JSON-ready data (see format_suite)."""
    workloads = [WORKLOADS[name] for name in s.workloads]
    rows = {w.name: Row(w.name, w.what, _target_text(w, s.floor), []) for w in workloads}
    floors = {
        "floor-stop": Row("floor-stop", "bare uvloop server, precomputed Stop", "(reference)", []),
        "floor-var": Row("floor-var", "bare uvloop server, 1 ExtraInfo + Stop", "(reference)", []),
    }
    prepares: list[PrepareResult] = []
    plugin_dirs = (BENCH_PLUGINS, *s.plugin_dirs)
    with contextlib.ExitStack() as stack:
        cpus = pin_sets(s.workers)[0] if s.pin else ()
        path, pid = stack.enter_context(
            managed_runner(s.workers, plugin_dirs, s.runner_config, cpus)
        )
        fakes = {}
        if s.floor:
            fakes["floor-stop"] = stack.enter_context(fake_runner(None, cpus))
            fakes["floor-var"] = stack.enter_context(fake_runner("remote_addr", cpus))
        workers = [p for p in descendants((pid,)) if p != pid]
        at_start = {str(p): rss_mib(p) for p in workers}
        runs = s.rounds * (len(workloads) + len(fakes) + 1)  # + 1: the PrepareConf round
        progress = RunProgress(runs, s.warmup + s.duration + RUN_OVERHEAD_S)
        for rnd in range(s.rounds):
            for w in workloads:
                progress.step(f"round {rnd + 1}/{s.rounds}: {w.name}")
                rows[w.name].runs.append(_run_against(_workload_options(w, s), path, (pid,)))
            for name, (fpath, fpid) in fakes.items():
                progress.step(f"round {rnd + 1}/{s.rounds}: {name}")
                fw = WORKLOADS["stop"]
                floors[name].runs.append(_run_against(_workload_options(fw, s), fpath, (fpid,)))
        # Memory before the PrepareConf rounds: each of their routes leaves a
        # 50-plugin chain in the worker's cache (~20 KiB each), which says
        # nothing about the footprint of the runner and its plugins.
        memory = {str(p): rss_mib(p) for p in workers}
        conf50 = prepare_conf_of(PREPARE_PLUGINS)
        measure_prepare(path, (pid,), conf50, 20)  # warm-up: caches, SQLite pages
        for rnd in range(s.rounds):
            progress.step(f"round {rnd + 1}/{s.rounds}: PrepareConf x {s.prepare_count}")
            prepares.append(measure_prepare(path, (pid,), conf50, s.prepare_count))
        after_prepares = {str(p): rss_mib(p) for p in workers}
    for row in floors.values():
        row.value = row.median(_cpu)
    for w in workloads:
        _judge(rows[w.name], w, floors)
    p99s = [p.latency_us["p99"] for p in prepares]
    rss = max((m.get("vmrss", 0.0) for m in memory.values()), default=0.0)
    return {
        "options": dataclasses.asdict(s),
        "rows": [_row_json(r) for r in rows.values()],
        "floors": [_row_json(r) for r in floors.values() if r.runs],
        "prepare": {
            "what": f"PrepareConf, {PREPARE_PLUGINS} plugins, a new route key each",
            "target": f"p99 <= {PREPARE_TARGET_US:g} us",
            "runs": [dataclasses.asdict(p) for p in prepares],
            "value": statistics.median(p99s) if p99s else None,
            "passed": bool(p99s) and statistics.median(p99s) <= PREPARE_TARGET_US,
        },
        "memory": {
            "what": "RSS per worker after the request runs (bundled + bench plugins loaded)",
            "target": f"<= {RSS_TARGET_MIB:g} MiB",
            "workers": memory,
            "at_start": at_start,
            "after_prepares": after_prepares,
            "value": rss,
            "passed": bool(memory) and rss <= RSS_TARGET_MIB,
        },
    }


class RunProgress:
    """One line per run on stderr, terminal or not (the suite's runs, the wrk
    matrix's): ``[k/N] LABEL (~M s left)``. The time left is the runs still to
    do (this one included) times the mean of the runs done so far, or
    ``run_s`` before the first one ends."""

    def __init__(self, total: int, run_s: float) -> None:
        self.total, self.run_s = total, run_s
        self.done = 0
        self.start = time.monotonic()

    def step(self, label: str) -> None:
        elapsed = time.monotonic() - self.start
        per_run = elapsed / self.done if self.done else self.run_s
        left = (self.total - self.done) * per_run
        self.done += 1
        clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a live progress line
        sys.stderr.write(f"{clear}[{self.done}/{self.total}] {label} (~{left:.0f} s left)\n")
        sys.stderr.flush()


def _row_json(row: Row) -> dict[str, Any]:
    return {
        "name": row.name,
        "what": row.what,
        "target": row.target,
        "value": row.value,
        "floor_ratio": row.floor_ratio,
        "passed": row.passed,
        "median": {
            "runner_cpu_us_per_req": row.median(_cpu),
            "runner_user_us_per_req": row.median(lambda r: r.runner_user_us_per_req),
            "requests_per_s": row.median(lambda r: r.requests_per_s),
            "p50_us": row.median(lambda r: r.latency_us["p50"]),
            "p99_us": row.median(lambda r: r.latency_us["p99"]),
            "runner_cpu_cores": row.median(lambda r: r.runner_cpu_cores),
            "loadgen_cpu_us_per_req": row.median(lambda r: r.loadgen_cpu_us_per_req),
        },
        "runs": [r.to_json() for r in row.runs],
    }


def _verdict(passed: bool | None) -> str:
    return "" if passed is None else ("**pass**" if passed else "**MISS**")


def format_suite(data: dict[str, Any]) -> str:
    """The target table as Markdown (pasted as is into bench/README.md)."""

    def num(v: float | None, fmt: str = ",.1f") -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        "| workload | target | runner CPU us/req (runs) | median (its user part) | req/s | p50 us "
        "| p99 us | runner cores | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in [*data["rows"], *data["floors"]]:
        cpus = " / ".join(num(r["runner_cpu_us_per_req"], ".2f") for r in row["runs"])
        m = row["median"]
        value = m["runner_cpu_us_per_req"]
        shown = f"{num(value, '.2f')}"
        if row["name"] == "stop-64":
            ratio = row["value"]
            shown += f" (p99/p50 {num(ratio, '.2f')})"
        elif row.get("floor_ratio") is not None:
            shown += f" ({row['floor_ratio']:.2f}x)"
        if (user := m.get("runner_user_us_per_req")) is not None:
            shown += f", user {user:.2f}"
        errors = sum(sum(r["errors"].values()) for r in row["runs"])
        what = row["what"] + (f" ({errors} errors)" if errors else "")
        lines.append(
            f"| {what} | {row['target']} | {cpus} | {shown} | {num(m['requests_per_s'], ',.0f')} "
            f"| {num(m['p50_us'], ',.0f')} | {num(m['p99_us'], ',.0f')} "
            f"| {num(m['runner_cpu_cores'], '.2f')} | {_verdict(row['passed'])} |"
        )
    p = data["prepare"]
    p50s = " / ".join(num(r["latency_us"]["p50"], ",.0f") for r in p["runs"])
    p99s = " / ".join(num(r["latency_us"]["p99"], ",.0f") for r in p["runs"])
    cpu = statistics.median(
        [r["runner_cpu_us_per_prepare"] for r in p["runs"] if r["runner_cpu_us_per_prepare"]]
        or [0.0]
    )
    lines.append(
        f"| {p['what']} | {p['target']} | runner CPU {num(cpu, ',.0f')} us/PrepareConf "
        f"| p99 {num(p['value'], ',.0f')} us | | {p50s} | {p99s} | | {_verdict(p['passed'])} |"
    )
    m = data["memory"]
    per_worker = ", ".join(
        f"RSS {num(v.get('vmrss'))} / PSS {num(v.get('pss'))} MiB "
        f"(at start {num(m['at_start'].get(pid, {}).get('vmrss'))}, after the PrepareConfs "
        f"{num(m['after_prepares'].get(pid, {}).get('vmrss'))})"
        for pid, v in m["workers"].items()
    )
    lines.append(
        f"| {m['what']} | {m['target']} | {per_worker} | {num(m['value'])} MiB "
        f"| | | | | {_verdict(m['passed'])} |"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _pair(text: str, sep: str) -> tuple[str, str]:
    name, found, value = text.partition(sep)
    if not found or not name:
        raise argparse.ArgumentTypeError(f"expected NAME{sep}VALUE, got {text!r}")
    return name, value


def _pids(text: str) -> list[int]:
    """One --pid word: a pid, or several separated by commas or white space
    (`--pid "$(pgrep -f 'runner start')"` gives one word with newlines)."""
    words = text.replace(",", " ").split()
    if not words:
        raise argparse.ArgumentTypeError(f"expected a pid, got {text!r}")
    pids = []
    for word in words:
        if not word.isdigit() or int(word) <= 0:
            raise argparse.ArgumentTypeError(f"not a pid: {word!r}")
        pids.append(int(word))
    return pids


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--socket", help="load a runner already listening on this path")
    target.add_argument("--workers", type=int, default=1, help="start a runner with N workers")
    p.add_argument(
        "--pid",
        type=_pids,
        nargs="+",
        action="extend",
        default=[],
        metavar="PID",
        help="runner pid(s) to measure, with their descendants: several after one --pid, "
        "comma-separated or repeated, e.g. --pid $(pgrep -f 'runner start')",
    )
    p.add_argument("--plugin", help="plugin name for PrepareConf")
    p.add_argument("--conf", default="{}", help="the plugin's conf string (JSON)")
    p.add_argument(
        "--chain",
        action="append",
        default=[],
        type=lambda s: _pair(s, ":"),
        metavar="NAME:JSON",
        help="a plugin of a chain (repeatable, in order)",
    )
    p.add_argument(
        "--workload",
        metavar="NAME",
        help=f"a workload of the target table ({', '.join(WORKLOADS)}): its chain, "
        "connections and ExtraInfo answers, with bench/plugins loaded",
    )
    p.add_argument(
        "--plugin-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="another plugin directory for the runner started here (repeatable), "
        "e.g. bench/plugins",
    )
    p.add_argument("--runner-config", metavar="YAML", help="start the runner with this config")
    p.add_argument("--connections", type=int, default=None, help="default 16")
    p.add_argument(
        "--duration", type=float, default=None, help="measured seconds (10; 3 per run in a suite)"
    )
    p.add_argument(
        "--processes", type=int, default=0,
        help="client processes (default: 1 up to 16 connections, else 2; at most the CPUs "
        "the clients have)",
    )  # fmt: skip
    p.add_argument("--warmup", type=float, default=1.0, help="seconds excluded from figures")
    p.add_argument(
        "--var",
        action="append",
        default=[],
        type=lambda s: _pair(s, "="),
        metavar="NAME=VALUE",
        help="ExtraInfo Var answer (repeatable)",
    )
    p.add_argument("--body-size", type=int, default=0, help="ExtraInfo ReqBody size")
    p.add_argument("--timeout", type=float, default=60.0, help="per-frame read timeout (s)")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    p.add_argument(
        "--pin", action="store_true",
        help="run the runner started here (and the floor) on the first --workers CPUs and the "
        "client processes on the others: less noise from the scheduler moving them",
    )  # fmt: skip
    suite = p.add_argument_group("the target table (--suite)")
    suite.add_argument(
        "--suite",
        action="store_true",
        help="run every workload --rounds times, interleaved, and print the target table "
        "(medians, pass/fail)",
    )
    suite.add_argument("--rounds", type=int, default=3)
    suite.add_argument(
        "--only", action="append", metavar="NAME", help="only these workloads (repeatable)"
    )
    suite.add_argument("--no-floor", action="store_true", help="skip the bare-loop reference rows")
    suite.add_argument("--prepare-count", type=int, default=200, help="PrepareConfs per round")
    return p


def options_from_args(argv: list[str] | None = None) -> tuple[Options, str | None]:
    opts, _suite, json_out = parse_args(argv)
    return opts, json_out


def parse_args(argv: list[str] | None = None) -> tuple[Options, SuiteOptions | None, str | None]:
    """(options of one run, suite options or None, --json path)."""
    p = _parser()
    a = p.parse_args(argv)
    conf = list(a.chain)
    if a.plugin:
        conf.insert(0, (a.plugin, a.conf))
    plugin_dirs = tuple(a.plugin_dir)
    variables = tuple(a.var)
    connections = a.connections
    if a.workload:
        if a.workload not in WORKLOADS:
            p.error(f"unknown workload {a.workload!r}; known: {', '.join(WORKLOADS)}")
        w = WORKLOADS[a.workload]
        conf = [*w.conf, *conf]
        plugin_dirs = (BENCH_PLUGINS, *plugin_dirs)
        variables = variables or SUITE_VARS
        connections = connections or w.connections
    progress = sys.stderr.isatty()
    suite = None
    if a.suite:
        if a.socket:
            p.error("--suite starts its own runner; it cannot use --socket")
        names = tuple(a.only or WORKLOADS)
        if unknown := sorted(set(names) - set(WORKLOADS)):
            p.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
        suite = SuiteOptions(
            duration=a.duration or 3.0,
            warmup=a.warmup,
            rounds=a.rounds,
            workers=a.workers,
            workloads=names,
            plugin_dirs=plugin_dirs,
            runner_config=a.runner_config,
            floor=not a.no_floor,
            prepare_count=a.prepare_count,
            progress=progress,
            pin=a.pin,
        )
    opts = Options(
        socket=a.socket,
        pids=tuple(dict.fromkeys(pid for group in a.pid for pid in group)),
        workers=a.workers,
        conf=tuple(conf),
        connections=connections or 16,
        duration=a.duration or 10.0,
        processes=a.processes,
        warmup=a.warmup,
        variables=variables,
        body_size=a.body_size,
        timeout=a.timeout,
        progress=progress,
        plugin_dirs=plugin_dirs,
        runner_config=a.runner_config,
        pin=a.pin,
    )
    if a.pin:
        if a.socket:
            p.error("--pin places the runner it starts; it cannot pin one given by --socket")
        try:
            pin_sets(a.workers)
        except ValueError as exc:
            p.error(str(exc))
    return opts, suite, a.json


def _write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    opts, suite, json_out = parse_args(argv)
    print(f"HTTPReqCall payload: {payload_size(opts)} bytes", flush=True)
    try:
        if suite is not None:
            data = run_suite(suite)
            data["command"] = " ".join(["python -m bench.loadgen", *(argv or sys.argv[1:])])
            print(format_suite(data))
        else:
            result = run(opts)
            print(format_table(result))
            data = result.to_json()
    except (RuntimeError, OSError, PrepareError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    if json_out:
        _write_json(json_out, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A load generator that talks to a plugin runner the way APISIX does.

    python -m bench.loadgen [--socket PATH --pid PID ... | --workers N]
        [--plugin NAME] [--conf JSON] [--chain NAME:JSON ...]
        [--connections 16] [--duration 10] [--processes P] [--warmup 1]
        [--var NAME=VALUE ...] [--body-size N] [--timeout 60] [--json OUT]

Like APISIX it keeps Unix-socket connections alive, prepares the conf once
(PrepareConf, key "route#1#ext-plugin-pre-req#1"), then sends one HTTPReqCall
at a time per connection, answers the runner's ExtraInfo requests, re-prepares
on CONF_TOKEN_NOT_FOUND and reopens a connection after any error.

Without --socket it starts `python -m runner start --workers N --foreground`
itself and measures that process and all its descendants. With --socket it
measures the --pid processes (and their descendants).

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
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, cast

import flatbuffers
import uvloop

from runner._a6.A6 import Method, TextEntry
from runner._a6.A6.Err import Resp as ErrResp
from runner._a6.A6.ExtraInfo import Info as XInfo
from runner._a6.A6.ExtraInfo import Req as XReq
from runner._a6.A6.ExtraInfo import Resp as XResp
from runner._a6.A6.ExtraInfo import Var as XVar
from runner._a6.A6.HTTPReqCall import Req as CallReq
from runner._a6.A6.PrepareConf import Req as PrepReq
from runner._a6.A6.PrepareConf import Resp as PrepResp

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
    processes: int = 0  # 0: 1 if connections <= 16 else 2
    warmup: float = 1.0
    variables: tuple[tuple[str, str], ...] = ()
    body_size: int = 0
    timeout: float = 60.0  # APISIX's read timeout
    progress: bool = False  # live progress bar on stderr

    def client_processes(self) -> int:
        wanted = self.processes or (1 if self.connections <= 16 else 2)
        return max(1, min(wanted, self.connections))


@dataclasses.dataclass
class Result:
    requests: int
    duration_s: float
    requests_per_s: float
    latency_us: dict[str, float]  # p50, p90, p99, max, mean
    runner_cpu_us_per_req: float | None
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


def _text_entries(b: flatbuffers.Builder, entries: list[tuple[str, str | None]]) -> int:
    """Build a [TextEntry] vector; returns its offset."""
    offsets = []
    for name, value in entries:
        name_off = b.CreateString(name)
        value_off = None if value is None else b.CreateString(value)
        TextEntry.Start(b)
        TextEntry.AddName(b, name_off)
        if value_off is not None:
            TextEntry.AddValue(b, value_off)
        offsets.append(TextEntry.End(b))
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    end: int = b.EndVector()
    return end


def build_prepare(conf: tuple[tuple[str, str], ...], key: str = PREPARE_KEY) -> bytes:
    b = flatbuffers.Builder(256)
    conf_off = _text_entries(b, list(conf)) if conf else None
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
    args = _text_entries(b, list(spec.args))
    headers = _text_entries(b, list(spec.headers))
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


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of each pid still alive."""
    ticks = {}
    for pid in pids:
        fields = _proc_stat_fields(pid)
        if fields is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


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


@contextlib.contextmanager
def managed_runner(workers: int) -> Iterator[tuple[str, int]]:
    """Start `python -m runner start`; yields (socket path, pid)."""
    tmp = tempfile.mkdtemp(prefix="lg-", dir="/tmp")
    sock, log_path = os.path.join(tmp, "r.sock"), os.path.join(tmp, "runner.log")
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w") as f:
        f.write("{}\n")
    cmd = [sys.executable, "-m", "runner", "start", "--workers", str(workers)]
    cmd += ["--config", config, "--foreground"]
    env = {**os.environ, "APISIX_LISTEN_ADDRESS": f"unix:{sock}"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
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
        cfg = ClientConfig(
            i, path, share, opts.conf, request, opts.variables, opts.body_size, opts.timeout
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
    t0, r0, l0 = time.monotonic(), cpu_ticks(window.runner_pids), cpu_ticks(client_pids)
    progress.wait_until(begin + opts.warmup + opts.duration)
    t1, r1, l1 = time.monotonic(), cpu_ticks(window.runner_pids), cpu_ticks(client_pids)
    progress.clear()
    if lost := sorted(set(r0) - set(r1)):
        print(f"loadgen: runner pids {lost} exited; their CPU is not counted", file=sys.stderr)
    window.runner_s, window.loadgen_s, window.wall_s = (
        cpu_seconds(r0, r1),
        cpu_seconds(l0, l1),
        t1 - t0,
    )
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
    with managed_runner(opts.workers) as (path, pid):
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
        ("loadgen CPU/req", us(r.loadgen_cpu_us_per_req)),
        ("runner pids", " ".join(map(str, r.runner_pids)) or "not measured"),
        ("errors", errors),
    ]
    return "\n".join(f"{name:<16} {value}" for name, value in rows)


# --------------------------------------------------------------------------- CLI


def _pair(text: str, sep: str) -> tuple[str, str]:
    name, found, value = text.partition(sep)
    if not found or not name:
        raise argparse.ArgumentTypeError(f"expected NAME{sep}VALUE, got {text!r}")
    return name, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--socket", help="load a runner already listening on this path")
    target.add_argument("--workers", type=int, default=1, help="start a runner with N workers")
    p.add_argument("--pid", type=int, action="append", default=[], help="runner pid to measure")
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
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--processes", type=int, default=0, help="client processes")
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
    return p


def options_from_args(argv: list[str] | None = None) -> tuple[Options, str | None]:
    a = _parser().parse_args(argv)
    conf = list(a.chain)
    if a.plugin:
        conf.insert(0, (a.plugin, a.conf))
    opts = Options(
        socket=a.socket,
        pids=tuple(a.pid),
        workers=a.workers,
        conf=tuple(conf),
        connections=a.connections,
        duration=a.duration,
        processes=a.processes,
        warmup=a.warmup,
        variables=tuple(a.var),
        body_size=a.body_size,
        timeout=a.timeout,
        progress=sys.stderr.isatty(),
    )
    return opts, a.json


def main(argv: list[str] | None = None) -> int:
    opts, json_out = options_from_args(argv)
    print(f"HTTPReqCall payload: {payload_size(opts)} bytes", flush=True)
    try:
        result = run(opts)
    except (RuntimeError, OSError, PrepareError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result.to_json(), f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

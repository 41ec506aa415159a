"""Malformed input against the real runner (one worker), as one table of cases.

Every case is sent on a connection of its own while a *bystander* connection
to the same worker (there is only one) keeps calling a plain and an
ExtraInfo-asking route. Each case must end, within a bounded time, in a type-0
BAD_REQUEST or a closed connection: never a worker crash (the worker's pid is
unchanged, the supervisor replaced nobody, nothing logged a traceback), never
a hang, never an unbounded allocation (the worker's RSS stays small), and the
bystander is served during and after the case.

Already covered in test_errors.py and not repeated here: the 9/0/3/5/255 type
bytes with a 12-byte payload, the ``ff16``/``short``/``empty``/``bad-vtable``
payloads of types 1, 2 and 4, 2 header bytes then close, 65536 announced and 1
sent then close, and a new call while a call waits for ExtraInfo.

The payloads are valid frames built with the flatc reference code
(``runner.testing``) and then corrupted at one spot located with a small
flatbuffer reader of this module's own (independent of ``runner.proto``).
The unmutated frames are cases too (``*-valid``): they must be answered
normally, so every corruption is what makes the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.testing import (
    MAX_PAYLOAD,
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_PREPARE_CONF,
    Client,
    HTTPRequest,
    Stop,
    build_extra_info_resp,
    build_prepare_conf,
    build_req_call,
    build_resp_call,
    encode_frame,
)
from runner.testing.pytest_plugin import RunningRunner

from .conftest import PLUGINS_DIR, arun, err_code, start_runner, stop_of_final

HARDENING_DIR = str(Path(__file__).resolve().parent / "plugins_hardening")
CONFIG = {"plugin_dirs": [PLUGINS_DIR, HARDENING_DIR], "workers": 1}

BAD_REQUEST = 0
READ_TIMEOUT = 5.0  # every read of a case is bounded: a hang fails the case
RSS_LIMIT_KIB = 300 * 1024  # the worker after any case (it starts near 30 MiB)
# Lines that a malformed input must never cause in the runner's log.
FORBIDDEN_LOG = ("Traceback", "replacing it", "exited with", "internal error")

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")


# --------------------------------------------------------------------------- processes


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- flatbuffer surgery


class Surgery:
    """A finished flatbuffer under repair in reverse: find a spot, break it.
    Positions are absolute offsets into the payload."""

    def __init__(self, payload: bytes) -> None:
        self.b = bytearray(payload)

    def u32(self, pos: int) -> int:
        return int(_U32.unpack_from(self.b, pos)[0])

    @property
    def root(self) -> int:
        return self.u32(0)

    def vtable(self, table: int) -> int:
        return table - int(_I32.unpack_from(self.b, table)[0])

    def slot(self, table: int, fid: int) -> int:
        """Where the vtable holds field ``fid``'s offset."""
        vt = self.vtable(table)
        assert 4 + 2 * fid < _U16.unpack_from(self.b, vt)[0], f"field {fid} not in the vtable"
        return vt + 4 + 2 * fid

    def field(self, table: int, fid: int) -> int:
        off = int(_U16.unpack_from(self.b, self.slot(table, fid))[0])
        assert off, f"field {fid} is absent"
        return table + off

    def target(self, table: int, fid: int) -> int:
        """Where an offset field (string, vector, table) points."""
        pos = self.field(table, fid)
        return pos + self.u32(pos)

    def entry_slot(self, table: int, fid: int, index: int) -> int:
        return self.target(table, fid) + 4 + 4 * index

    def entry(self, table: int, fid: int, index: int) -> int:
        slot = self.entry_slot(table, fid, index)
        return slot + self.u32(slot)

    def set_u32(self, pos: int, value: int) -> None:
        _U32.pack_into(self.b, pos, value)

    def set_i32(self, pos: int, value: int) -> None:
        _I32.pack_into(self.b, pos, value)

    def set_u16(self, pos: int, value: int) -> None:
        _U16.pack_into(self.b, pos, value)

    def spoil_string(self, table: int, fid: int) -> None:
        """Make a string field's first byte 0xFF: never valid in UTF-8."""
        s = self.target(table, fid)
        assert self.u32(s) >= 1, "empty string"
        self.b[s + 4] = 0xFF

    # -- corruptions of one table, by kind

    def table_outside(self, slot_pos: int) -> None:
        """A uoffset at ``slot_pos`` pointing past the end of the buffer."""
        self.set_u32(slot_pos, len(self.b) + 64 - slot_pos)

    def vtable_after_end(self, table: int) -> None:
        self.set_i32(table, table - len(self.b) - 16)

    def vtable_negative(self, table: int) -> None:
        self.set_i32(table, table + 16)

    def vtable_loop(self, table: int) -> None:
        """soffset 0: the table is its own vtable (its size reads as 0)."""
        self.set_i32(table, 0)

    def vtable_odd(self, table: int) -> None:
        self.set_u16(self.vtable(table), 7)

    def vtable_overrun(self, table: int) -> None:
        self.set_u16(self.vtable(table), 0xFFFE)

    def field_outside(self, table: int, fid: int) -> None:
        """The vtable places field ``fid`` far past the end of the buffer."""
        self.set_u16(self.slot(table, fid), 0xFFF0)

    def length_overrun(self, table: int, fid: int) -> None:
        """A string's or vector's length far larger than the buffer."""
        self.set_u32(self.target(table, fid), 0x3FFFFFFF)

    def offset_outside(self, table: int, fid: int) -> None:
        self.table_outside(self.field(table, fid))


Mutation = Callable[[Surgery], None]


def root_mutations() -> dict[str, Mutation]:
    """Corruptions of the root table that apply to every message type."""
    return {
        "root-outside": lambda s: s.table_outside(0),
        "root-huge": lambda s: s.set_u32(0, 0xFFFFFFFF),
        "vtable-after-end": lambda s: s.vtable_after_end(s.root),
        "vtable-negative": lambda s: s.vtable_negative(s.root),
        "vtable-loop": lambda s: s.vtable_loop(s.root),
        "vtable-odd-size": lambda s: s.vtable_odd(s.root),
        "vtable-overrun": lambda s: s.vtable_overrun(s.root),
        "truncated": lambda s: s.b.__delitem__(slice(len(s.b) // 2, None)),
    }


def entry_mutations(fid: int, prefix: str) -> dict[str, Mutation]:
    """Corruptions of a ``[TextEntry]`` vector (field ``fid`` of the root)
    and of its first entry (name: field 0, value: field 1)."""
    return {
        f"{prefix}-vector-overrun": lambda s: s.length_overrun(s.root, fid),
        f"{prefix}-vector-outside": lambda s: s.offset_outside(s.root, fid),
        f"{prefix}-entry-outside": lambda s: s.table_outside(s.entry_slot(s.root, fid, 0)),
        f"{prefix}-entry-vtable-negative": lambda s: s.vtable_negative(s.entry(s.root, fid, 0)),
        f"{prefix}-entry-vtable-after-end": lambda s: s.vtable_after_end(s.entry(s.root, fid, 0)),
        f"{prefix}-entry-vtable-loop": lambda s: s.vtable_loop(s.entry(s.root, fid, 0)),
        f"{prefix}-entry-vtable-overrun": lambda s: s.vtable_overrun(s.entry(s.root, fid, 0)),
        f"{prefix}-name-not-utf8": lambda s: s.spoil_string(s.entry(s.root, fid, 0), 0),
        f"{prefix}-value-not-utf8": lambda s: s.spoil_string(s.entry(s.root, fid, 0), 1),
        f"{prefix}-name-outside": lambda s: s.offset_outside(s.entry(s.root, fid, 0), 0),
        f"{prefix}-value-overrun": lambda s: s.length_overrun(s.entry(s.root, fid, 0), 1),
    }


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Tokens:
    touch: int  # h-touch-all: decodes every request field
    touch_async: int  # h-touch-all-async
    resp: int  # response-rewrite
    digest: int  # body-digest: asks ExtraInfo ReqBody
    pid: int  # h-pid
    slow: int  # h-slow-pid: 300 ms, async


@dataclass(frozen=True)
class PayloadCase:
    """A frame of type ``rpc`` whose payload is ``build(tokens)`` with
    ``mutate`` applied; ``during_extra_info``: sent as the answer to the
    ExtraInfo question of a body-digest call."""

    rpc: int
    build: Callable[[Tokens], bytes]
    mutate: Mutation | None
    during_extra_info: bool = False


REQUEST = HTTPRequest(
    method="POST",
    path="/abcd",
    args=[("arg", "value"), ("flag", None)],
    headers=[("name", "value"), ("x-two", "abcd")],
    src_ip="10.0.0.1",
    id=77,
)
RESP_HEADERS = [("Name", "value"), ("X-Two", "abcd")]


def _prepare(t: Tokens) -> bytes:
    return build_prepare_conf([("stop", '{"body": "ok"}'), ("h-pid", "abcd")], "route#m#1")


def _req(t: Tokens) -> bytes:
    return build_req_call(t.touch, REQUEST)


def _req_async(t: Tokens) -> bytes:
    return build_req_call(t.touch_async, REQUEST)


def _resp(t: Tokens) -> bytes:
    return build_resp_call(t.resp, 7, 200, RESP_HEADERS)


def _extra(t: Tokens) -> bytes:
    return build_extra_info_resp(b"abcdefgh")


def payload_cases() -> dict[str, PayloadCase]:
    cases: dict[str, PayloadCase] = {}
    messages: list[tuple[str, int, Callable[[Tokens], bytes], dict[str, Mutation], bool]] = [
        (
            "prepare-conf",
            RPC_PREPARE_CONF,
            _prepare,
            {
                "key-not-utf8": lambda s: s.spoil_string(s.root, 1),
                "key-outside": lambda s: s.offset_outside(s.root, 1),
                "key-overrun": lambda s: s.length_overrun(s.root, 1),
                "key-field-outside": lambda s: s.field_outside(s.root, 1),
                **entry_mutations(0, "conf"),
            },
            False,
        ),
        (
            "req-call",
            RPC_HTTP_REQ_CALL,
            _req,
            {
                "path-not-utf8": lambda s: s.spoil_string(s.root, 3),
                "path-outside": lambda s: s.offset_outside(s.root, 3),
                "path-overrun": lambda s: s.length_overrun(s.root, 3),
                "src-ip-overrun": lambda s: s.length_overrun(s.root, 1),
                "method-unknown": lambda s: s.b.__setitem__(s.field(s.root, 2), 99),
                "token-field-outside": lambda s: s.field_outside(s.root, 6),
                **entry_mutations(5, "header"),
                **entry_mutations(4, "arg"),
            },
            False,
        ),
        (
            "req-call-async",
            RPC_HTTP_REQ_CALL,
            _req_async,
            {
                "path-not-utf8": lambda s: s.spoil_string(s.root, 3),
                "header-vector-overrun": lambda s: s.length_overrun(s.root, 5),
                "header-entry-vtable-negative": lambda s: s.vtable_negative(s.entry(s.root, 5, 0)),
                "arg-name-not-utf8": lambda s: s.spoil_string(s.entry(s.root, 4, 1), 0),
            },
            False,
        ),
        (
            "resp-call",
            RPC_HTTP_RESP_CALL,
            _resp,
            {
                "status-field-outside": lambda s: s.field_outside(s.root, 1),
                **entry_mutations(2, "header"),
            },
            False,
        ),
        (
            "extra-info-reply",
            RPC_EXTRA_INFO,
            _extra,
            {
                "result-overrun": lambda s: s.length_overrun(s.root, 0),
                "result-outside": lambda s: s.offset_outside(s.root, 0),
                "result-field-outside": lambda s: s.field_outside(s.root, 0),
                "empty-payload": lambda s: s.b.clear(),
            },
            True,
        ),
    ]
    for name, rpc, build, mutations, extra in messages:
        cases[f"{name}-valid"] = PayloadCase(rpc, build, None, extra)
        all_mutations = mutations if name == "req-call-async" else root_mutations() | mutations
        for mname, mutate in all_mutations.items():
            cases[f"{name}-{mname}"] = PayloadCase(rpc, build, mutate, extra)
    return cases


PAYLOAD_CASES = payload_cases()


# --------------------------------------------------------------------------- connections


class Raw:
    """One connection driven frame by frame, every read bounded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> Raw:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5.0)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = READ_TIMEOUT) -> tuple[int, bytes] | None:
        """The next frame, or None when the runner closed the connection at a
        frame boundary. A truncated frame or a timeout fails the test."""

        async def read() -> tuple[int, bytes] | None:
            try:
                header = await self.reader.readexactly(4)
            except asyncio.IncompleteReadError as exc:
                assert not exc.partial, f"truncated header {exc.partial!r}"
                return None
            except ConnectionResetError:
                return None
            length = int.from_bytes(header[1:], "big")
            return header[0], await self.reader.readexactly(length)

        try:
            return await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            pytest.fail(f"no frame and no close within {timeout} s: the runner hangs")

    async def half_close(self) -> None:
        self.writer.write_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Bystander:
    """Another connection to the same worker, calling a plain route and an
    ExtraInfo route in turn for as long as the case runs."""

    def __init__(self, path: str, tokens: Tokens, worker: int) -> None:
        self.path = path
        self.tokens = tokens
        self.worker = worker
        self.calls = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Bystander:
        self._task = asyncio.ensure_future(self._run())
        await self.progress(2)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            await self.progress(3)  # served after the case too
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        try:
            async with await Client.connect(self.path, read_timeout=READ_TIMEOUT) as client:
                n = 0
                while not self._stop.is_set():
                    n += 1
                    result = await client.call(self.tokens.pid, HTTPRequest(id=n))
                    if result.action != Stop(200, [], str(self.worker).encode()):
                        self.errors.append(f"call {n}: {result}")
                    body = b"b" * (n % 100)
                    result = await client.call(self.tokens.digest, HTTPRequest(id=n, body=body))
                    action = result.action
                    if not isinstance(action, Stop) or json.loads(action.body)["len"] != len(body):
                        self.errors.append(f"ExtraInfo call {n}: {result}")
                    self.calls += 2
        except Exception as exc:
            self.errors.append(f"bystander failed: {exc!r}")

    async def progress(self, n: int, timeout: float = 10.0) -> None:
        """Wait until the bystander has made ``n`` more calls."""
        target = self.calls + n
        deadline = time.monotonic() + timeout
        while self.calls < target and not self.errors:
            assert self._task is not None and not self._task.done(), self.errors
            if time.monotonic() > deadline:
                pytest.fail(f"the bystander was not served for {timeout} s: {self.errors}")
            await asyncio.sleep(0.002)
        assert not self.errors, self.errors


# --------------------------------------------------------------------------- fixtures


@dataclass
class Target:
    runner: RunningRunner
    tokens: Tokens
    worker: int


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    yield from _target()


@pytest.fixture
def fresh_target() -> Iterator[Target]:
    yield from _target()


def _target() -> Iterator[Target]:
    running = start_runner(plugins_dir=None, config=CONFIG)

    async def prepare() -> tuple[Tokens, int]:
        async with await running.client() as client:
            tokens = Tokens(
                touch=await client.prepare_conf([("h-touch-all", "")], "route#touch#1"),
                touch_async=await client.prepare_conf([("h-touch-all-async", "")], "route#ta#1"),
                resp=await client.prepare_conf(
                    [("response-rewrite", '{"headers": {"X-R": "1"}}')], "route#resp#1"
                ),
                digest=await client.prepare_conf([("body-digest", "")], "route#digest#1"),
                pid=await client.prepare_conf([("h-pid", "")], "route#pid#1"),
                slow=await client.prepare_conf([("h-slow-pid", "300")], "route#slow#1"),
            )
            result = await client.call(tokens.pid, HTTPRequest())
            assert isinstance(result.action, Stop)
            return tokens, int(result.action.body)

    tokens, worker = arun(prepare())
    assert children(running.proc.pid) == {worker}
    yield Target(running, tokens, worker)
    running.stop()


@contextlib.contextmanager
def unharmed(t: Target) -> Iterator[None]:
    """The case leaves the worker as it found it: same pid, no respawn, no
    traceback in the log, a bounded RSS."""
    offset = len(t.runner.log_text())
    yield
    log = t.runner.log_text()[offset:]
    assert t.runner.proc.poll() is None, log
    assert children(t.runner.proc.pid) == {t.worker}, log
    for needle in FORBIDDEN_LOG:
        assert needle not in log, log
    rss = status_kib(t.worker, "VmRSS")
    assert rss < RSS_LIMIT_KIB, f"worker RSS {rss} KiB after the case"


async def assert_bad_request(conn: Raw) -> None:
    answer = await conn.frame()
    assert answer is not None, "closed instead of answering BAD_REQUEST"
    assert answer[0] == RPC_ERROR, answer
    assert err_code(answer[1]) == BAD_REQUEST


async def assert_still_serves(conn: Raw, t: Target, req_id: int = 5) -> None:
    """The same connection answers a plain call: the bad frame was consumed whole."""
    await conn.send(
        encode_frame(RPC_HTTP_REQ_CALL, build_req_call(t.tokens.pid, HTTPRequest(id=req_id)))
    )
    answer = await conn.frame()
    assert answer is not None and answer[0] == RPC_HTTP_REQ_CALL, answer
    assert stop_of_final(answer[1]) == (req_id, 200, str(t.worker).encode())


# --------------------------------------------------------------------------- payload cases


# Were xfails until fixed in runner/proto (kept as a hook for new findings).
XFAIL_PAYLOAD_CASES: dict[str, pytest.MarkDecorator] = {}


@pytest.mark.parametrize(
    "case_id",
    [pytest.param(c, marks=XFAIL_PAYLOAD_CASES.get(c, ())) for c in PAYLOAD_CASES],
)
def test_malformed_payload(target: Target, case_id: str) -> None:
    case = PAYLOAD_CASES[case_id]
    payload = case.build(target.tokens)
    if case.mutate is not None:
        surgery = Surgery(payload)
        case.mutate(surgery)
        assert bytes(surgery.b) != payload
        payload = bytes(surgery.b)

    async def scenario() -> None:
        async with Bystander(target.runner.socket_path, target.tokens, target.worker) as by:
            conn = await Raw.open(target.runner.socket_path)
            try:
                if case.during_extra_info:
                    call = build_req_call(target.tokens.digest, HTTPRequest(id=9))
                    await conn.send(encode_frame(RPC_HTTP_REQ_CALL, call))
                    question = await conn.frame()
                    assert question is not None and question[0] == RPC_EXTRA_INFO, question
                    await by.progress(2)  # served while this call waits
                await conn.send(encode_frame(case.rpc, payload))
                if case_id.endswith("not-utf8"):
                    # Not malformed: HTTP allows such bytes (obs-text, %ff in a
                    # path); calls are answered as usual, a conf names a plugin
                    # that does not exist or a config its plugin may reject.
                    answer = await conn.frame()
                    assert answer is not None, "a frame with non-UTF-8 text got no answer"
                    expected = RPC_HTTP_REQ_CALL if case.during_extra_info else case.rpc
                    usual = case.rpc in (RPC_HTTP_REQ_CALL, RPC_HTTP_RESP_CALL)
                    assert answer[0] == expected or (not usual and answer[0] == 0), answer
                elif case.mutate is None:
                    answer = await conn.frame()
                    assert answer is not None, "a valid frame got no answer"
                    expected = RPC_HTTP_REQ_CALL if case.during_extra_info else case.rpc
                    assert answer[0] == expected, answer
                else:
                    await assert_bad_request(conn)
                await by.progress(2)
                await assert_still_serves(conn, target)
            finally:
                await conn.close()

    with unharmed(target):
        arun(scenario())


# --------------------------------------------------------------------------- stream cases


MAX_HEADER = bytes((RPC_HTTP_REQ_CALL,)) + MAX_PAYLOAD.to_bytes(3, "big")


@pytest.mark.parametrize(
    "sent",
    [
        b"\x02",
        b"\x02\x00\x00",
        bytes((RPC_HTTP_REQ_CALL,)) + (1000).to_bytes(3, "big") + b"x" * 10,
        bytes((RPC_HTTP_REQ_CALL,)) + (1 << 20).to_bytes(3, "big") + b"x" * 100_000,
        MAX_HEADER,
        MAX_HEADER + b"x" * 70_000,
    ],
    ids=[
        "header-1-byte",
        "header-3-bytes",
        "length-1000-sent-10",
        "length-1MiB-sent-100k",
        "length-max-header-only",
        "length-max-sent-70k",
    ],
)
def test_incomplete_frame_then_close(target: Target, sent: bytes) -> None:
    """A partial frame is held while other calls are served; when APISIX
    closes its side the runner closes too, answering nothing."""

    async def scenario() -> None:
        async with Bystander(target.runner.socket_path, target.tokens, target.worker) as by:
            conn = await Raw.open(target.runner.socket_path)
            try:
                await conn.send(sent)
                await by.progress(4)  # served while the partial frame is held
                await conn.half_close()
                assert await conn.frame() is None  # closed, nothing sent
            finally:
                await conn.close()

    with unharmed(target):
        arun(scenario())


@pytest.mark.parametrize(
    ("rpc_type", "size"),
    [(RPC_HTTP_REQ_CALL, MAX_PAYLOAD), (7, 1 << 20), (200, 0), (RPC_PREPARE_CONF, 70_000)],
    ids=[
        "req-call-max-length-garbage",
        "type-7-1MiB",
        "type-200-empty",
        "prepare-conf-70k-garbage",
    ],
)
def test_whole_garbage_frame_is_bad_request(target: Target, rpc_type: int, size: int) -> None:
    """A frame of the largest length (there is no larger: the field has 24
    bits), or of an unknown type with a payload larger than the read buffer,
    is read whole and answered BAD_REQUEST; the connection carries on."""
    garbage = bytes(range(256)) * (size // 256) + b"\xff" * (size % 256)

    async def scenario() -> None:
        async with Bystander(target.runner.socket_path, target.tokens, target.worker) as by:
            conn = await Raw.open(target.runner.socket_path)
            try:
                await conn.send(bytes((rpc_type,)) + size.to_bytes(3, "big"))
                await conn.send(garbage[: size // 2])
                await by.progress(2)
                await conn.send(garbage[size // 2 :])
                await assert_bad_request(conn)
                await assert_still_serves(conn, target)
            finally:
                await conn.close()

    with unharmed(target):
        arun(scenario())


# --------------------------------------------------------------------------- out-of-turn frames


def test_extra_info_reply_when_none_was_asked(target: Target) -> None:
    """A type-3 frame on an idle connection: BAD_REQUEST, the connection goes on."""

    async def scenario() -> None:
        async with Bystander(target.runner.socket_path, target.tokens, target.worker):
            conn = await Raw.open(target.runner.socket_path)
            try:
                await conn.send(encode_frame(RPC_EXTRA_INFO, build_extra_info_resp(b"unasked")))
                await assert_bad_request(conn)
                await assert_still_serves(conn, target)
            finally:
                await conn.close()

    with unharmed(target):
        arun(scenario())


OUT_OF_TURN: dict[str, tuple[int, Callable[[Tokens], bytes]]] = {
    "extra-info-reply-during-a-call-that-asked-nothing": (
        RPC_EXTRA_INFO,
        lambda t: build_extra_info_resp(b"unasked"),
    ),
    "second-call-before-the-first-was-answered": (
        RPC_HTTP_REQ_CALL,
        lambda t: build_req_call(t.pid, HTTPRequest(id=2)),
    ),
    "prepare-conf-before-the-call-was-answered": (
        RPC_PREPARE_CONF,
        lambda t: build_prepare_conf([("h-pid", "")], "route#pid#1"),
    ),
    "resp-call-before-the-call-was-answered": (
        RPC_HTTP_RESP_CALL,
        lambda t: build_resp_call(t.resp, 2, 200, []),
    ),
}


@pytest.mark.parametrize("case_id", list(OUT_OF_TURN))
def test_frame_out_of_turn_during_an_async_call(target: Target, case_id: str) -> None:
    """While an async call (300 ms, no ExtraInfo) is in flight, APISIX never
    sends anything on that connection. Something else is a protocol violation:
    the runner answers the first call and a type-0 error for the intruder, or
    closes the connection, and never sends a wrong answer."""
    rpc_type, build = OUT_OF_TURN[case_id]

    async def scenario() -> None:
        async with Bystander(target.runner.socket_path, target.tokens, target.worker) as by:
            conn = await Raw.open(target.runner.socket_path)
            try:
                call = build_req_call(target.tokens.slow, HTTPRequest(id=1))
                await conn.send(encode_frame(RPC_HTTP_REQ_CALL, call))
                await asyncio.sleep(0.05)
                await conn.send(encode_frame(rpc_type, build(target.tokens)))
                await by.progress(2)
                answers: list[tuple[int, bytes]] = []
                while (answer := await conn.frame()) is not None:
                    answers.append(answer)
                    if len(answers) == 2:
                        break
                if answers:  # the call's own answer first, then an error for the intruder
                    assert answers[0][0] == RPC_HTTP_REQ_CALL, answers
                    assert stop_of_final(answers[0][1]) == (1, 200, str(target.worker).encode())
                    assert len(answers) == 2 and answers[1][0] == RPC_ERROR, answers
            finally:
                await conn.close()

    with unharmed(target):
        arun(scenario())


def test_extra_info_answered_twice(target: Target) -> None:
    """One question, two answers in one write: the call is answered (or the
    connection closed); the surplus answer never becomes a wrong reply."""

    async def scenario() -> None:
        async with Bystander(target.runner.socket_path, target.tokens, target.worker):
            conn = await Raw.open(target.runner.socket_path)
            try:
                call = build_req_call(target.tokens.digest, HTTPRequest(id=4))
                await conn.send(encode_frame(RPC_HTTP_REQ_CALL, call))
                question = await conn.frame()
                assert question is not None and question[0] == RPC_EXTRA_INFO
                reply = encode_frame(RPC_EXTRA_INFO, build_extra_info_resp(b"abc"))
                await conn.send(reply + reply)
                answers: list[tuple[int, bytes]] = []
                while len(answers) < 2 and (answer := await conn.frame()) is not None:
                    answers.append(answer)
                for rpc_type, payload in answers:
                    if rpc_type == RPC_HTTP_REQ_CALL:
                        req_id, status, body = stop_of_final(payload)
                        assert (req_id, status, json.loads(body)["len"]) == (4, 200, 3)
                    else:
                        assert rpc_type == RPC_ERROR, answers
            finally:
                await conn.close()

    with unharmed(target):
        arun(scenario())


def test_sync_calls_sent_back_to_back_are_answered_in_order(target: Target) -> None:
    """The second call sent before the first was answered, on a plain route:
    the runner handles frames in order, so both are answered, in order."""

    async def scenario() -> None:
        conn = await Raw.open(target.runner.socket_path)
        try:
            frames = [
                encode_frame(
                    RPC_HTTP_REQ_CALL, build_req_call(target.tokens.pid, HTTPRequest(id=i))
                )
                for i in (1, 2, 3)
            ]
            await conn.send(b"".join(frames))
            for i in (1, 2, 3):
                answer = await conn.frame()
                assert answer is not None and answer[0] == RPC_HTTP_REQ_CALL
                assert stop_of_final(answer[1]) == (i, 200, str(target.worker).encode())
        finally:
            await conn.close()

    with unharmed(target):
        arun(scenario())


# --------------------------------------------------------------------------- allocation bounds


def _align(out: bytearray) -> None:
    out += b"\0" * (-len(out) & 3)


def _root_table(nfields: int, inline: dict[int, int]) -> tuple[bytearray, dict[int, int]]:
    """Root offset, vtable and root table with a 4-byte slot per field of
    ``inline`` (field id -> initial value); returns the buffer and the slot
    position of each field. The table comes first, so the uoffsets of its
    children (appended later) point forward, as flatbuffers require."""
    fids = sorted(inline)
    offsets = [0] * nfields
    for k, fid in enumerate(fids):
        offsets[fid] = 4 + 4 * k
    out = bytearray(4)
    vt = len(out)
    out += struct.pack(f"<{2 + nfields}H", 4 + 2 * nfields, 4 + 4 * len(fids), *offsets)
    _align(out)
    table = len(out)
    _U32.pack_into(out, 0, table)
    out += _I32.pack(table - vt)
    slots = {}
    for fid in fids:
        slots[fid] = len(out)
        out += _U32.pack(inline[fid])
    return out, slots


def _link(out: bytearray, slot: int, target: int) -> None:
    _U32.pack_into(out, slot, target - slot)


def _append_string(out: bytearray, text: bytes) -> int:
    _align(out)
    pos = len(out)
    out += _U32.pack(len(text)) + text + b"\0"
    return pos


def _append_aliased_vector(out: bytearray, count: int, name: bytes, value: bytes) -> int:
    """A ``[TextEntry]`` vector of ``count`` slots that all point to ONE
    entry: a DAG, which a flatbuffer may be, but whose decoded size is
    ``count`` times the entry. Returns the vector's position."""
    _align(out)
    vec = len(out)
    out += _U32.pack(count) + bytes(4 * count)
    vt = len(out)
    out += struct.pack("<4H", 8, 12, 4, 8)
    entry = len(out)
    out += _I32.pack(entry - vt) + bytes(8)
    for i in range(count):
        _link(out, vec + 4 + 4 * i, entry)
    _link(out, entry + 4, _append_string(out, name))
    _link(out, entry + 8, _append_string(out, value))
    return vec


def aliased_prepare_conf(count: int, value_size: int) -> bytes:
    """PrepareConf.Req: ``count`` conf slots aliasing one ("stop", <a
    ``value_size``-byte JSON config>) entry."""
    value = b'{"body": "x"' + b" " * (value_size - 13) + b"}"
    out, slots = _root_table(2, {0: 0, 1: 0})
    _link(out, slots[0], _append_aliased_vector(out, count, b"stop", value))
    _link(out, slots[1], _append_string(out, b"route#aliased#1"))
    return bytes(out)


def aliased_req_call(token: int, count: int, name_size: int) -> bytes:
    """HTTPReqCall.Req for ``token`` with ``count`` header slots aliasing one
    (<``name_size`` bytes>, "v") header."""
    out, slots = _root_table(7, {5: 0, 6: token})
    _link(out, slots[5], _append_aliased_vector(out, count, b"h" * name_size, b"v"))
    return bytes(out)


@pytest.mark.parametrize("message", ["prepare-conf", "req-call-headers"])
def test_aliased_entries_are_not_an_amplifier(target: Target, message: str) -> None:
    """A ~48 KiB frame whose TextEntry slots all point to one 24 KiB entry
    would decode into 2048 x 24 KiB = 48 MiB of strings. A well-formed
    flatbuffer never holds more string bytes than its own size, so the runner
    must reject it (BAD_REQUEST) without committing that memory."""
    count, size = 2048, 24 * 1024
    if message == "prepare-conf":
        rpc, payload = RPC_PREPARE_CONF, aliased_prepare_conf(count, size)
    else:
        rpc, payload = RPC_HTTP_REQ_CALL, aliased_req_call(target.tokens.touch, count, size)
    assert len(payload) < 64 * 1024
    worker = target.worker
    if not reset_peak(worker):
        pytest.skip("cannot reset VmHWM (/proc/<pid>/clear_refs)")
    before = status_kib(worker, "VmRSS")

    async def scenario() -> tuple[int, bytes] | None:
        conn = await Raw.open(target.runner.socket_path)
        try:
            await conn.send(encode_frame(rpc, payload))
            return await conn.frame(timeout=20.0)
        finally:
            await conn.close()

    with unharmed(target):
        answer = arun(scenario())
    growth = status_kib(worker, "VmHWM") - before
    assert answer is not None and answer[0] == RPC_ERROR, answer
    assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB for a {len(payload)}-byte frame"


def test_announced_length_commits_no_memory_before_the_data(target: Target) -> None:
    """Eight connections announce the largest frame and send nothing more;
    the worker must not commit 8 x 16 MiB for bytes that never came."""
    worker = target.worker

    async def scenario() -> int:
        before = status_kib(worker, "VmRSS")
        conns = [await Raw.open(target.runner.socket_path) for _ in range(8)]
        try:
            for conn in conns:
                await conn.send(MAX_HEADER)
            await asyncio.sleep(0.3)
            return status_kib(worker, "VmRSS") - before
        finally:
            for conn in conns:
                await conn.close()

    with unharmed(target):
        growth = arun(scenario())
    assert growth < 32 * 1024, f"RSS grew by {growth} KiB for 8 four-byte headers"


def test_closed_connections_release_their_buffers(fresh_target: Target) -> None:
    """Four connections each send 4 MiB of a 16 MiB frame, then close. Once
    they are closed the worker's RSS must come back down (an idle worker runs
    no garbage collection, so memory held by a cycle stays). A runner of its
    own: nothing freed earlier tunes malloc's thresholds."""
    target = fresh_target
    worker = target.worker

    async def scenario() -> tuple[int, int]:
        base = status_kib(worker, "VmRSS")
        conns = [await Raw.open(target.runner.socket_path) for _ in range(4)]
        for conn in conns:
            await conn.send(MAX_HEADER + b"x" * (4 << 20))
        await asyncio.sleep(0.2)
        held = status_kib(worker, "VmRSS") - base
        for conn in conns:
            await conn.half_close()
            assert await conn.frame() is None
            await conn.close()
        await asyncio.sleep(0.5)
        return held, status_kib(worker, "VmRSS") - base

    with unharmed(target):
        held, after = arun(scenario())
    assert held >= 12 * 1024, f"the partial frames were not held? grew {held} KiB"
    assert after < 8 * 1024, f"RSS still {after} KiB above the start after the close"


def test_hardening_plugins_loaded(target: Target) -> None:
    """Guard: the cases above rely on these routes existing."""
    assert os.path.isdir(HARDENING_DIR)
    assert target.tokens.touch and target.tokens.digest and target.tokens.slow

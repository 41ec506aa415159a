"""An APISIX-like client of the ext-plugin protocol, for testing plugins and runners.

This module plays the part of APISIX: it connects to a runner's Unix socket, sends
``PrepareConf`` / ``HTTPReqCall`` / ``HTTPRespCall`` frames exactly as APISIX's Lua
code builds them, and answers the runner's ``ExtraInfo`` questions from the data you
put into an :class:`HTTPRequest`.

It is deliberately independent of the runner's own codec: requests are built and
replies parsed only with the flatc-generated reference code in ``runner._a6`` and
the ``flatbuffers`` package, so a bug in the runner's codec cannot hide behind the
same bug here.

Typical use in a test (see also the ``runner`` pytest fixture in
:mod:`runner.pytest_plugin`)::

    async def scenario(socket_path: str) -> None:
        async with await Client.connect(socket_path) as client:
            token = await client.prepare_conf([("my_plugin", '{"limit": 3}')])
            result = await client.call(
                token,
                HTTPRequest(method="POST", path="/hello", args=[("x", "1")],
                            headers=[("host", "example.com")],
                            vars={"remote_addr": "10.0.0.1"}, body=b"payload"),
            )
            assert isinstance(result.action, Stop)
            assert result.action.status == 403
            assert result.extra_info == [("var", "remote_addr")]

    asyncio.run(scenario(path))
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import flatbuffers

from runner._a6.A6 import TextEntry as TextEntryMod
from runner._a6.A6.Err import Resp as ErrResp
from runner._a6.A6.ExtraInfo import Req as ExtraInfoReq
from runner._a6.A6.ExtraInfo import Resp as ExtraInfoResp
from runner._a6.A6.ExtraInfo.Info import Info
from runner._a6.A6.ExtraInfo.Var import Var
from runner._a6.A6.HTTPReqCall import Req as ReqCallReq
from runner._a6.A6.HTTPReqCall import Resp as ReqCallResp
from runner._a6.A6.HTTPReqCall.Action import Action
from runner._a6.A6.HTTPReqCall.Rewrite import Rewrite as RewriteTable
from runner._a6.A6.HTTPReqCall.Stop import Stop as StopTable
from runner._a6.A6.HTTPRespCall import Req as RespCallReq
from runner._a6.A6.HTTPRespCall import Resp as RespCallResp
from runner._a6.A6.Method import Method
from runner._a6.A6.PrepareConf import Req as PrepareConfReq
from runner._a6.A6.PrepareConf import Resp as PrepareConfResp

if TYPE_CHECKING:
    from .plugintest import PluginTester

__all__ = [
    "MAX_PAYLOAD",
    "METHODS",
    "RPC_ERROR",
    "RPC_EXTRA_INFO",
    "RPC_HTTP_REQ_CALL",
    "RPC_HTTP_RESP_CALL",
    "RPC_PREPARE_CONF",
    "Client",
    "HTTPRequest",
    "PluginTester",
    "ProtocolError",
    "ReqCallResult",
    "RespCallResult",
    "Rewrite",
    "RunnerError",
    "Stop",
    "apply_rewrite",
    "build_prepare_conf",
    "build_req_call",
    "build_resp_call",
    "encode_frame",
    "parse_req_call_resp",
    "parse_resp_call_resp",
    "text_vector",
]

# RPC type numbers (first byte of every frame).
RPC_ERROR: Final = 0
RPC_PREPARE_CONF: Final = 1
RPC_HTTP_REQ_CALL: Final = 2
RPC_EXTRA_INFO: Final = 3
RPC_HTTP_RESP_CALL: Final = 4

#: Largest payload a frame can carry (the length field is 24 bits).
MAX_PAYLOAD: Final = (1 << 24) - 1

#: HTTP method name -> ``A6.Method`` enum value, taken from the generated code.
METHODS: Final[dict[str, int]] = {
    name: int(value)
    for name, value in vars(Method).items()
    if not name.startswith("_") and isinstance(value, int)
}

_ERR_NAMES: Final = {0: "BAD_REQUEST", 1: "SERVICE_UNAVAILABLE", 2: "CONF_TOKEN_NOT_FOUND"}
_RPC_NAMES: Final = {
    RPC_ERROR: "RPC_ERROR",
    RPC_PREPARE_CONF: "RPC_PREPARE_CONF",
    RPC_HTTP_REQ_CALL: "RPC_HTTP_REQ_CALL",
    RPC_EXTRA_INFO: "RPC_EXTRA_INFO",
    RPC_HTTP_RESP_CALL: "RPC_HTTP_RESP_CALL",
}
_ENC: Final = "utf-8"
_ERRS: Final = "surrogateescape"  # keep arbitrary bytes round-trippable

Entries = list[tuple[str, str | None]]
_T = TypeVar("_T")


class RunnerError(Exception):
    """The runner answered a request with a type-0 ``Err`` frame.

    ``code`` is the ``A6.Err.Code`` value: 0 ``BAD_REQUEST``, 1 ``SERVICE_UNAVAILABLE``,
    2 ``CONF_TOKEN_NOT_FOUND`` (the only code APISIX retries on; the others become 503).
    """

    def __init__(self, code: int) -> None:
        self.code = code
        self.name = _ERR_NAMES.get(code, f"unknown err {code}")
        super().__init__(f"runner answered with error {self.name} (code {code})")


class ProtocolError(Exception):
    """The runner broke the protocol: unexpected frame type, truncated frame,
    unparsable payload, or the connection closed in the middle of a call."""


@dataclass
class Stop:
    """A ``Stop`` action: APISIX answers the client itself, skipping the upstream.

    ``status`` is as sent by the runner (0 if absent; APISIX turns 0 into 200),
    ``body`` is ``b""`` when absent.
    """

    status: int
    headers: Entries
    body: bytes


@dataclass
class Rewrite:
    """A ``Rewrite`` action: APISIX modifies the request, then proxies it.

    Absent fields are ``None`` (path, body) or ``[]`` (entry lists). An entry whose
    value is ``None`` means "delete". Use :func:`apply_rewrite` to see the request
    APISIX would send upstream.
    """

    path: str | None
    headers: Entries
    args: Entries
    resp_headers: Entries
    body: bytes | None


@dataclass
class ReqCallResult:
    """The runner's answer to an ``HTTPReqCall`` (type 2).

    ``action`` is ``None`` when the runner let the request continue unchanged.
    ``extra_info`` lists, in order, the ``ExtraInfo`` questions the runner asked
    during the call: ``("var", name)``, ``("req_body", None)`` or ``("resp_body", None)``.
    """

    id: int
    action: Stop | Rewrite | None
    extra_info: Entries


@dataclass
class RespCallResult:
    """The runner's answer to an ``HTTPRespCall`` (type 4).

    ``status`` 0 means "keep the upstream status". If ``headers`` is non-empty APISIX
    sends only these headers; ``body`` is ``None`` when absent. ``extra_info`` is as
    in :class:`ReqCallResult`.
    """

    id: int
    status: int
    headers: Entries
    body: bytes | None
    extra_info: Entries


@dataclass
class HTTPRequest:
    """What APISIX sends in an ``HTTPReqCall``, plus what it would answer to ``ExtraInfo``.

    ``args`` entries with a ``None`` value are args without ``=`` (``?flag``).
    Header names should be lower-case, as APISIX sends them; a multi-valued header is
    several entries. ``src_ip`` is IPv4 or IPv6 text, sent as 4 or 16 packed bytes.
    ``vars`` answers ``ExtraInfo.Var`` (an unknown var gets no result), ``body``
    answers ``ExtraInfo.ReqBody`` and ``resp_body`` answers ``ExtraInfo.RespBody``
    (only inside a response call; in a request call APISIX answers no result).
    """

    method: str = "GET"
    path: str = "/"
    args: Entries = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    src_ip: str = "127.0.0.1"
    id: int = 0
    vars: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    resp_body: bytes | None = None


# --------------------------------------------------------------------------- building


def encode_frame(rpc_type: int, payload: bytes) -> bytes:
    """Return one wire frame: 1 byte type, 3-byte big-endian length, payload."""
    if not 0 <= rpc_type <= 0xFF:
        raise ValueError(f"rpc type must fit in one byte, got {rpc_type}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"the max length of data is {MAX_PAYLOAD} but got {len(payload)}")
    return bytes((rpc_type,)) + len(payload).to_bytes(3, "big") + payload


def _header(rpc_type: int, length: int) -> bytes:
    if length > MAX_PAYLOAD:
        raise ValueError(f"the max length of data is {MAX_PAYLOAD} but got {length}")
    return bytes((rpc_type,)) + length.to_bytes(3, "big")


def _string(b: Any, s: str) -> Any:
    return b.CreateString(s.encode(_ENC, _ERRS))


def _text_entries(b: Any, entries: Iterable[tuple[str, str | None]]) -> Any:
    """Create each TextEntry table, return their offsets (vector built by caller)."""
    offsets = []
    for name, value in entries:
        name_off = _string(b, name)
        value_off = None if value is None else _string(b, value)
        TextEntryMod.Start(b)
        TextEntryMod.AddName(b, name_off)
        if value_off is not None:
            TextEntryMod.AddValue(b, value_off)
        offsets.append(TextEntryMod.End(b))
    return offsets


def text_vector(b: Any, entries: Iterable[tuple[str, str | None]], start_vector: Any = None) -> Any:
    """Build a ``[TextEntry]`` vector with the flatc-generated code; returns its
    offset. ``start_vector`` is the table's ``Start<Field>Vector`` (all are
    ``StartVector(4, n, 4)``, the default)."""
    start = start_vector or (lambda b, n: b.StartVector(4, n, 4))
    return _offset_vector(b, start, _text_entries(b, entries))


def _offset_vector(b: Any, start_vector: Any, offsets: list[Any]) -> Any:
    start_vector(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def build_prepare_conf(
    conf: list[tuple[str, str]] | None, key: str = "route#1#ext-plugin-pre-req#1"
) -> bytes:
    """Payload of a ``PrepareConf.Req``; ``conf=None`` leaves the field absent."""
    b = flatbuffers.Builder(256)
    conf_vec = None
    if conf is not None:
        conf_vec = _offset_vector(b, PrepareConfReq.StartConfVector, _text_entries(b, conf))
    key_off = _string(b, key)
    PrepareConfReq.Start(b)
    if conf_vec is not None:
        PrepareConfReq.AddConf(b, conf_vec)
    PrepareConfReq.AddKey(b, key_off)
    b.Finish(PrepareConfReq.End(b))
    return bytes(b.Output())


def build_req_call(token: int, request: HTTPRequest) -> bytes:
    """Payload of an ``HTTPReqCall.Req``, built like APISIX does (defaults omitted,
    ``args`` and ``headers`` vectors always present)."""
    try:
        method = METHODS[request.method.upper()]
    except KeyError:
        raise ValueError(f"method {request.method!r} is not in the A6.Method enum") from None
    src_ip = ipaddress.ip_address(request.src_ip).packed
    b = flatbuffers.Builder(1024)
    path_off = _string(b, request.path)
    args_vec = _offset_vector(b, ReqCallReq.StartArgsVector, _text_entries(b, request.args))
    headers_vec = _offset_vector(
        b, ReqCallReq.StartHeadersVector, _text_entries(b, request.headers)
    )
    ip_vec = b.CreateByteVector(src_ip)
    ReqCallReq.Start(b)
    ReqCallReq.AddId(b, request.id)
    ReqCallReq.AddSrcIp(b, ip_vec)
    ReqCallReq.AddMethod(b, method)
    ReqCallReq.AddPath(b, path_off)
    ReqCallReq.AddArgs(b, args_vec)
    ReqCallReq.AddHeaders(b, headers_vec)
    ReqCallReq.AddConfToken(b, token)
    b.Finish(ReqCallReq.End(b))
    return bytes(b.Output())


def build_resp_call(token: int, id: int, status: int, headers: list[tuple[str, str]]) -> bytes:
    """Payload of an ``HTTPRespCall.Req`` (upstream status and response headers)."""
    b = flatbuffers.Builder(512)
    headers_vec = _offset_vector(b, RespCallReq.StartHeadersVector, _text_entries(b, headers))
    RespCallReq.Start(b)
    RespCallReq.AddId(b, id)
    RespCallReq.AddStatus(b, status)
    RespCallReq.AddHeaders(b, headers_vec)
    RespCallReq.AddConfToken(b, token)
    b.Finish(RespCallReq.End(b))
    return bytes(b.Output())


def build_extra_info_resp(result: bytes | None) -> bytes:
    """Payload of an ``A6.ExtraInfo.Resp`` (what APISIX answers to a type-3 frame)."""
    b = flatbuffers.Builder(64 if result is None else len(result) + 64)
    vec = None if result is None else b.CreateByteVector(result)
    ExtraInfoResp.Start(b)
    if vec is not None:
        ExtraInfoResp.AddResult(b, vec)
    b.Finish(ExtraInfoResp.End(b))
    return bytes(b.Output())


# --------------------------------------------------------------------------- parsing


def _decode(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(_ENC, _ERRS)


def _read_entries(length: Any, get: Any) -> Entries:
    out: Entries = []
    for i in range(int(length())):
        entry = get(i)
        out.append((_decode(entry.Name()) or "", _decode(entry.Value())))
    return out


def _byte_vector(obj: Any, vtable_offset: int) -> bytes | None:
    """Read a ``[ubyte]`` field in one slice (the generated accessor is per byte)."""
    tab = obj._tab
    o = int(tab.Offset(vtable_offset))
    if o == 0:
        return None
    start = int(tab.Vector(o))
    return bytes(tab.Bytes[start : start + int(tab.VectorLen(o))])


def _parse_err(payload: bytes) -> RunnerError:
    if not payload:
        raise ProtocolError("empty RPC_ERROR payload")
    return RunnerError(int(ErrResp.Resp.GetRootAs(payload, 0).Code()))


def _parse_stop(tab: Any) -> Stop:
    stop = StopTable()
    stop.Init(tab.Bytes, tab.Pos)
    return Stop(
        status=int(stop.Status()),
        headers=_read_entries(stop.HeadersLength, stop.Headers),
        body=_byte_vector(stop, 8) or b"",
    )


def _parse_rewrite(tab: Any) -> Rewrite:
    rw = RewriteTable()
    rw.Init(tab.Bytes, tab.Pos)
    return Rewrite(
        path=_decode(rw.Path()),
        headers=_read_entries(rw.HeadersLength, rw.Headers),
        args=_read_entries(rw.ArgsLength, rw.Args),
        resp_headers=_read_entries(rw.RespHeadersLength, rw.RespHeaders),
        body=_byte_vector(rw, 12),
    )


def parse_req_call_resp(payload: bytes, extra: Entries) -> ReqCallResult:
    resp = ReqCallResp.Resp.GetRootAs(payload, 0)
    action_type = int(resp.ActionType())
    action: Stop | Rewrite | None = None
    if action_type != Action.NONE:
        tab = resp.Action()
        if tab is None:
            raise ProtocolError(f"action_type {action_type} but no action table")
        if action_type == Action.Stop:
            action = _parse_stop(tab)
        elif action_type == Action.Rewrite:
            action = _parse_rewrite(tab)
        else:
            raise ProtocolError(f"unknown action type {action_type}")
    return ReqCallResult(id=int(resp.Id()), action=action, extra_info=extra)


def parse_resp_call_resp(payload: bytes, extra: Entries) -> RespCallResult:
    resp = RespCallResp.Resp.GetRootAs(payload, 0)
    return RespCallResult(
        id=int(resp.Id()),
        status=int(resp.Status()),
        headers=_read_entries(resp.HeadersLength, resp.Headers),
        body=_byte_vector(resp, 10),
        extra_info=extra,
    )


# --------------------------------------------------------------------------- rewrite


def apply_rewrite(request: HTTPRequest, rw: Rewrite) -> HTTPRequest:
    """Return the request APISIX would send upstream after applying ``rw`` (§6.6).

    Headers are set or deleted (value ``None``) case-insensitively, the new name
    lower-cased; a later entry for the same header overwrites an earlier one.
    Args: ``None`` deletes, the first entry for a name replaces the existing values,
    later entries for it append. The path is replaced when present; a non-empty body
    replaces the request body. ``resp_headers`` do not affect the upstream request.
    """
    headers = list(request.headers)
    for name, value in rw.headers:
        lname = name.lower()
        headers = [(n, v) for n, v in headers if n.lower() != lname]
        if value is not None:
            headers.append((lname, value))

    args = list(request.args)
    seen: set[str] = set()
    for name, arg_value in rw.args:
        if arg_value is None:
            args = [(n, v) for n, v in args if n != name]
            seen.discard(name)
            continue
        if name not in seen:
            args = [(n, v) for n, v in args if n != name]
            seen.add(name)
        args.append((name, arg_value))

    return dataclasses.replace(
        request,
        path=request.path if rw.path is None else rw.path,
        headers=headers,
        args=args,
        body=rw.body if rw.body else request.body,
    )


# --------------------------------------------------------------------------- client


class Client:
    """One connection to a runner, like one pooled APISIX connection.

    Calls on one client are sequential (a lock serializes them), as in APISIX.
    Use :meth:`connect` to create one; it is an async context manager::

        async with await Client.connect("/tmp/runner.sock") as client:
            ...

    Unlike APISIX, the connection is *not* closed after a :class:`RunnerError`, so a
    test can check that the runner keeps serving the connection.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        read_timeout: float | None = 60.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._read_timeout = read_timeout
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, path: str, timeout: float = 5.0, read_timeout: float | None = 60.0
    ) -> Client:
        """Connect to the runner's Unix socket at ``path`` (no ``unix:`` prefix).

        ``timeout`` bounds the connect; ``read_timeout`` bounds each frame read
        (APISIX uses 60 s) and raises :class:`TimeoutError` when exceeded.
        """
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        return cls(reader, writer, read_timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # ---- raw frames

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes (for malformed-input tests)."""
        self._writer.write(data)
        await self._writer.drain()

    async def send_frame(self, rpc_type: int, payload: bytes) -> None:
        """Write one frame with the given type and payload."""
        self._writer.writelines((_header(rpc_type, len(payload)), payload))
        await self._writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        """Read one frame: exactly 4 header bytes, then exactly ``len`` payload bytes.

        Raises :class:`ProtocolError` if the connection closes before the frame is
        complete and :class:`TimeoutError` after ``read_timeout``.
        """
        return await asyncio.wait_for(self._read_frame(), self._read_timeout)

    async def _read_frame(self) -> tuple[int, bytes]:
        try:
            header = await self._reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise ProtocolError("connection closed by the runner") from None
            raise ProtocolError(f"header too short: got {len(e.partial)} of 4 bytes") from None
        except ConnectionError as e:
            raise ProtocolError(f"connection error: {e}") from e
        rpc_type = header[0]
        length = int.from_bytes(header[1:4], "big")
        try:
            payload = await self._reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as e:
            raise ProtocolError(
                f"data truncated: got {len(e.partial)} of {length} bytes"
                f" ({_RPC_NAMES.get(rpc_type, rpc_type)})"
            ) from None
        except ConnectionError as e:
            raise ProtocolError(f"connection error: {e}") from e
        return rpc_type, payload

    # ---- RPCs

    async def prepare_conf(
        self, conf: list[tuple[str, str]] | None, key: str = "route#1#ext-plugin-pre-req#1"
    ) -> int:
        """Send ``PrepareConf`` (type 1) and return the conf token.

        ``conf`` is the ordered ``[(plugin_name, config_string), ...]`` list; ``None``
        leaves the field absent (a route without ``conf``). Raises
        :class:`RunnerError` on a type-0 answer.
        """
        async with self._lock:
            await self.send_frame(RPC_PREPARE_CONF, build_prepare_conf(conf, key))
            rpc_type, payload = await self.read_frame()
            self._check_final(rpc_type, payload, RPC_PREPARE_CONF)
            return int(
                self._parse(lambda p: PrepareConfResp.Resp.GetRootAs(p, 0).ConfToken(), payload)
            )

    async def call(self, token: int, request: HTTPRequest) -> ReqCallResult:
        """Send an ``HTTPReqCall`` (type 2), answer ``ExtraInfo`` questions from
        ``request``, and return the runner's final answer.

        Raises :class:`RunnerError` on a type-0 answer and :class:`ProtocolError` on
        any other unexpected frame.
        """
        async with self._lock:
            await self.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, request))
            payload, extra = await self._await_final(RPC_HTTP_REQ_CALL, request)
            return self._parse(lambda p: parse_req_call_resp(p, extra), payload)

    async def resp_call(
        self,
        token: int,
        status: int,
        headers: list[tuple[str, str]],
        request: HTTPRequest | None = None,
        id: int = 0,
    ) -> RespCallResult:
        """Send an ``HTTPRespCall`` (type 4) with the upstream ``status`` and response
        ``headers``; ``ExtraInfo`` questions are answered from ``request`` (its
        ``resp_body`` answers ``RespBody``). Errors as in :meth:`call`.
        """
        req = HTTPRequest() if request is None else request
        async with self._lock:
            await self.send_frame(RPC_HTTP_RESP_CALL, build_resp_call(token, id, status, headers))
            payload, extra = await self._await_final(RPC_HTTP_RESP_CALL, req)
            return self._parse(lambda p: parse_resp_call_resp(p, extra), payload)

    # ---- internals

    @staticmethod
    def _parse(fn: Callable[[bytes], _T], payload: bytes) -> _T:
        if not payload:
            raise ProtocolError("empty payload where a flatbuffer was expected")
        try:
            return fn(payload)
        except ProtocolError:
            raise
        except (struct.error, IndexError, ValueError, TypeError, UnicodeError) as e:
            raise ProtocolError(f"unparsable payload: {e!r}") from e

    @staticmethod
    def _check_final(rpc_type: int, payload: bytes, expected: int) -> None:
        if rpc_type == RPC_ERROR:
            raise Client._parse(lambda p: _parse_err(p), payload)
        if rpc_type != expected:
            raise ProtocolError(
                f"unexpected type {rpc_type}, expected {expected} ({_RPC_NAMES[expected]})"
            )

    async def _await_final(self, expected: int, request: HTTPRequest) -> tuple[bytes, Entries]:
        extra: Entries = []
        while True:
            rpc_type, payload = await self.read_frame()
            if rpc_type != RPC_EXTRA_INFO:
                self._check_final(rpc_type, payload, expected)
                return payload, extra
            kind, name = self._parse(lambda p: _parse_extra_info_req(p), payload)
            extra.append((kind, name))
            result: bytes | None
            if kind == "var":
                value = request.vars.get(name or "")
                result = None if value is None else value.encode(_ENC, _ERRS)
            elif kind == "req_body":
                result = request.body
            else:  # resp_body: only available inside a response call
                result = request.resp_body if expected == RPC_HTTP_RESP_CALL else None
            await self.send_frame(RPC_EXTRA_INFO, build_extra_info_resp(result))


def _parse_extra_info_req(payload: bytes) -> tuple[str, str | None]:
    req = ExtraInfoReq.Req.GetRootAs(payload, 0)
    info_type = int(req.InfoType())
    if info_type == Info.Var:
        tab = req.Info()
        if tab is None:
            raise ProtocolError("ExtraInfo Var without a table")
        var = Var()
        var.Init(tab.Bytes, tab.Pos)
        return "var", _decode(var.Name()) or ""
    if info_type == Info.ReqBody:
        return "req_body", None
    if info_type == Info.RespBody:
        return "resp_body", None
    # APISIX: "unsupported info type", closes the connection, request gets 503.
    raise ProtocolError(f"unsupported info type {info_type}")


def __getattr__(name: str) -> Any:
    # The unit-level kit lives in runner.plugintest (it runs the runner's own
    # dispatcher); exported here lazily so both levels come from one module.
    if name == "PluginTester":
        from .plugintest import PluginTester

        return PluginTester
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

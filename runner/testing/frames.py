"""The ext-plugin frames a test builds and reads, as APISIX's Lua client does.

Requests are built and replies parsed only with the flatc-generated reference
code in ``runner.testing._a6`` and the ``flatbuffers`` package, never with the
runner's own codec, so that a bug there cannot hide behind the same bug here.
Shared by the socket client (:mod:`runner.testing.client`) and the unit-level
kit (:mod:`runner.testing.plugintest`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import flatbuffers

from runner.testing._a6.A6 import TextEntry as TextEntryMod
from runner.testing._a6.A6.Err import Resp as ErrResp
from runner.testing._a6.A6.ExtraInfo import Req as ExtraInfoReq
from runner.testing._a6.A6.ExtraInfo import Resp as ExtraInfoResp
from runner.testing._a6.A6.ExtraInfo.Info import Info
from runner.testing._a6.A6.ExtraInfo.Var import Var
from runner.testing._a6.A6.HTTPReqCall import Req as ReqCallReq
from runner.testing._a6.A6.HTTPReqCall import Resp as ReqCallResp
from runner.testing._a6.A6.HTTPReqCall.Action import Action
from runner.testing._a6.A6.HTTPReqCall.Rewrite import Rewrite as RewriteTable
from runner.testing._a6.A6.HTTPReqCall.Stop import Stop as StopTable
from runner.testing._a6.A6.HTTPRespCall import Req as RespCallReq
from runner.testing._a6.A6.HTTPRespCall import Resp as RespCallResp
from runner.testing._a6.A6.Method import Method
from runner.testing._a6.A6.PrepareConf import Req as PrepareConfReq

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
RPC_NAMES: Final = {
    RPC_ERROR: "RPC_ERROR",
    RPC_PREPARE_CONF: "RPC_PREPARE_CONF",
    RPC_HTTP_REQ_CALL: "RPC_HTTP_REQ_CALL",
    RPC_EXTRA_INFO: "RPC_EXTRA_INFO",
    RPC_HTTP_RESP_CALL: "RPC_HTTP_RESP_CALL",
}
ENC: Final = "utf-8"
ERRS: Final = "surrogateescape"  # keep arbitrary bytes round-trippable

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


def frame_header(rpc_type: int, length: int) -> bytes:
    if length > MAX_PAYLOAD:
        raise ValueError(f"the max length of data is {MAX_PAYLOAD} but got {length}")
    return bytes((rpc_type,)) + length.to_bytes(3, "big")


def _string(b: Any, s: str) -> Any:
    return b.CreateString(s.encode(ENC, ERRS))


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
    return None if raw is None else raw.decode(ENC, ERRS)


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


def parse_err(payload: bytes) -> RunnerError:
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
    """Return the request APISIX would send upstream after applying ``rw`` (docs/protocol.md §5.4).

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


def parse_extra_info_req(payload: bytes) -> tuple[str, str | None]:
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

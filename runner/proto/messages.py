"""Views of the messages APISIX sends and builders of the runner's replies.

Schema: ext-plugin-proto v0.6.1 (``ext-plugin.fbs`` beside this file, docs/protocol.md §3).
Views decode a field on first access and keep nothing but the payload's ``bytes``
(the frame decoder's one copy, or ``fb.Table.root``'s of a view), so they outlive
the read buffer.
Builders return complete frames, header included, so the transport writes
one ``bytes``-like object per reply.
"""

from __future__ import annotations

import enum
import functools
import struct
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from librt.strings import BytesWriter
from mypy_extensions import mypyc_attr

from .chelpers import c_function
from .fb import (
    TEXT_VTABLES,
    TEXTVEC_MODULE,
    Changes,
    DecodeError,
    Table,
    TextPairs,
    align4,
    begin_table,
    changes_vector,
    encoded,
    patch,
    put_u32,
    root_bytes0,
    text_vector,
    u16_at,
    u32_at,
    vtable,
    write_bytes,
    write_string,
    write_text_vector,
    write_u16,
    write_u32,
)
from .frame import HEADER_SIZE, MAX_PAYLOAD, FrameTooLarge, RpcType

__all__ = [
    "METHODS",
    "DecodeError",
    "ErrCode",
    "ExtraInfoResp",
    "PrepareConfReq",
    "ReqCallView",
    "RespCallView",
    "build_err",
    "build_extra_info",
    "build_prepare_conf_resp",
    "build_req_call_none",
    "build_req_call_rewrite",
    "build_req_call_stop",
    "build_resp_call_resp",
    "extra_info_result",
]


class ErrCode(enum.IntEnum):
    BAD_REQUEST = 0
    SERVICE_UNAVAILABLE = 1
    CONF_TOKEN_NOT_FOUND = 2


class InfoType(enum.IntEnum):
    VAR = 1
    REQ_BODY = 2
    RESP_BODY = 3


METHODS: Final = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "OPTIONS",
    "PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE",
)  # fmt: skip

_ACTION_STOP: Final = 1
_ACTION_REWRITE: Final = 2

# --------------------------------------------------------------------------- views


class PrepareConfReq:
    """``A6.PrepareConf.Req``: conf (0) [TextEntry], key (1) string."""

    __slots__ = ("_t",)

    def __init__(self, payload: bytes | memoryview) -> None:
        self._t = Table.root(payload)

    @property
    def key(self) -> str:
        return self._t.string(1) or ""

    @property
    def conf(self) -> list[tuple[str, str]]:
        """(plugin name, config string) in execution order; duplicates kept."""
        return [(name, value or "") for name, value in self._t.text_pairs(0)]


@mypyc_attr(free_list_len=1, acyclic=True)
class ReqCallView:
    """``A6.HTTPReqCall.Req``. ``id`` and ``conf_token`` are read at once (every
    call needs them); the rest only when a plugin asks."""

    __slots__ = ("_t", "conf_token", "id")

    def __init__(self, payload: bytes | memoryview) -> None:
        t = Table.root(payload)
        self._t = t
        # t.u32(0) and t.u32(6) written out (two method calls less per call).
        buf, pos, size, vt, vtlen = t.buf, t.pos, t.size, t.vt, t.vtlen
        off = u16_at(buf, vt + 4) if vtlen > 4 else 0
        if off and pos + off + 4 > size:
            raise DecodeError("field 0 outside the buffer")
        self.id = u32_at(buf, pos + off) if off else 0
        off = u16_at(buf, vt + 16) if vtlen > 16 else 0
        if off and pos + off + 4 > size:
            raise DecodeError("field 6 outside the buffer")
        self.conf_token = u32_at(buf, pos + off) if off else 0

    @property
    def src_ip(self) -> bytes:
        return self._t.byte_vector(1) or b""

    @property
    def method(self) -> str:
        code = self._t.u8(2)
        if code >= len(METHODS):
            raise DecodeError(f"unknown method code {code}")
        return METHODS[code]

    @property
    def path(self) -> str:
        return self._t.string(3) or ""

    @property
    def args(self) -> TextPairs:
        return self._t.text_pairs(4)

    @property
    def headers(self) -> TextPairs:
        return self._t.text_pairs(5)

    @property
    def header_count(self) -> int:
        """How many header entries APISIX sent, without decoding them."""
        return self._t.table_count(5)

    def validate(self) -> None:
        """Decode every field once, so that a malformed request fails before
        any plugin sees it."""
        _ = (self.src_ip, self.method, self.path, self.args, self.headers)


@mypyc_attr(free_list_len=1, acyclic=True)
class RespCallView:
    """``A6.HTTPRespCall.Req``: id (0), status (1), headers (2), conf_token (3)."""

    __slots__ = ("_t", "conf_token", "id")

    def __init__(self, payload: bytes | memoryview) -> None:
        t = Table.root(payload)
        self._t = t
        self.id = t.u32(0)
        self.conf_token = t.u32(3)

    @property
    def status(self) -> int:
        return self._t.u16(1)

    @property
    def headers(self) -> TextPairs:
        return self._t.text_pairs(2)

    def validate(self) -> None:
        _ = (self.status, self.headers)


def extra_info_result(payload: bytes | memoryview) -> bytes | None:
    """ExtraInfo.Resp's result (field 0, [ubyte]; None when APISIX had nil),
    read without a Table: the connection calls this for every answer. (A def,
    not an alias of root_bytes0: compiled, a call to an alias is a lookup in
    the module's dict and a Python-level call.)"""
    return root_bytes0(payload)


class ExtraInfoResp:
    """``A6.ExtraInfo.Resp``: result (0) [ubyte], absent when APISIX had nil."""

    __slots__ = ("result",)

    def __init__(self, payload: bytes | memoryview) -> None:
        self.result = root_bytes0(payload)


# --------------------------------------------------------------------------- builders

_PACK_HEADER: Final = struct.Struct(">I").pack_into


def _start() -> bytearray:
    # Frame header placeholder + root offset. Payload offsets are relative and
    # the payload starts 4-aligned, so building after the header is safe.
    return bytearray(8)


def _finish(out: bytearray, rpc_type: int, root: int) -> bytearray:
    length = len(out) - HEADER_SIZE
    if length > MAX_PAYLOAD:
        raise FrameTooLarge(f"the max length of a frame is {MAX_PAYLOAD} but got {length}")
    _PACK_HEADER(out, 0, (rpc_type << 24) | length)
    patch(out, HEADER_SIZE, root)
    return out


@functools.cache
def _vt(*offsets: int, table_size: int) -> bytes:
    return vtable(*offsets, table_size=table_size)


def _offsets_table(out: bytearray, present: Sequence[bool], scalars: bytes = b"") -> int:
    """A table whose fields are all offsets (patched later by the caller at
    ``pos + 4 + 4*k`` for the k-th present field), then ``scalars`` inline."""
    offsets = []
    k = 0
    for here in present:
        offsets.append(4 + 4 * k if here else 0)
        k += here
    size = 4 + 4 * k + len(scalars)
    align4(out)
    return begin_table(out, _vt(*offsets, table_size=size), b"\0" * (4 * k) + scalars)


def build_err(code: int) -> bytes:
    return _ERR_FRAMES[code]


def _build_err(code: int) -> bytes:
    out = _start()
    # An empty vtable slot means BAD_REQUEST (the default); write the code anyway.
    pos = begin_table(out, vtable(4, table_size=8), bytes((code, 0, 0, 0)))
    return bytes(_finish(out, RpcType.ERR, pos))


_ERR_FRAMES: Final[dict[int, bytes]] = {c: _build_err(c) for c in ErrCode}


def build_prepare_conf_resp(token: int) -> bytearray:
    out = _start()
    pos = begin_table(out, _vt(4, table_size=8), struct.pack("<I", token))
    return _finish(out, RpcType.PREPARE_CONF, pos)


_RESP_NONE_VT: Final = vtable(4, table_size=8)
_RESP_ACTION_VT: Final = vtable(8, 12, 4, table_size=16)
_STOP_VT: Final = vtable(12, 4, 8, table_size=16)
_ID_AT: Final = 28  # the request id in every HTTPReqCall.Resp laid out below


def _none_template() -> bytes:
    out = _start()
    pos = begin_table(out, _RESP_NONE_VT, bytes(4))
    return bytes(_finish(out, RpcType.HTTP_REQ_CALL, pos))


# A complete frame but for the id, its last 4 bytes.
_NONE_HEAD: Final = _none_template()[:-4]


def build_req_call_none(req_id: int) -> bytes:
    return _NONE_HEAD + req_id.to_bytes(4, "little")


def _action_prefix(action_type: int) -> tuple[bytearray, int]:
    """Frame header, root offset and an HTTPReqCall.Resp with an action;
    returns (buffer, root table position). The action offset slot is at root + 4."""
    out = _start()
    root = begin_table(out, _RESP_ACTION_VT, struct.pack("<IIB3x", 0, 0, action_type))
    patch(out, HEADER_SIZE, root)
    assert root + 8 == _ID_AT
    return out, root


# Stop and Rewrite replies are built from a template: everything up to the
# first child (frame header, root offset, Resp vtable and table, the action's
# vtable and table, and the two TextEntry vtables that all header and arg
# entries share) is laid out once. A reply is written into one BytesWriter
# (librt.strings): the template's constant runs, its few variable fields
# (id, status, ...), the children, then the offsets that only the children's
# positions decide and the frame header, overwritten in place. Compiled, each
# write is a few inline instructions into one buffer (256 bytes inline, so a
# usual reply allocates nothing but the final bytes).


def _stop_template() -> tuple[bytes, int]:
    out, root = _action_prefix(_ACTION_STOP)
    stop = begin_table(out, _STOP_VT, struct.pack("<IIH2x", 0, 0, 0))
    patch(out, root + 4, stop)
    out += TEXT_VTABLES
    patch(out, stop + 4, len(out))  # the headers vector comes first, always here
    assert (root, stop, len(out)) == (20, 48, 80), "layout constants below"
    return bytes(out), stop


_STOP_LAYOUT: Final = _stop_template()
_STOP_TEMPLATE: Final = _STOP_LAYOUT[0]
_STOP_BODY_AT: Final = _STOP_LAYOUT[1] + 8  # the body's offset (u32)
_STOP_STATUS_AT: Final = _STOP_BODY_AT + 4  # the status (u16), right after it
_STOP_VTABLES: Final = len(_STOP_TEMPLATE) - len(TEXT_VTABLES)
# The template's constant runs between its variable fields.
_STOP_HEAD: Final = _STOP_TEMPLATE[:_ID_AT]
_STOP_MID: Final = _STOP_TEMPLATE[_ID_AT + 4 : _STOP_BODY_AT]
_STOP_TAIL: Final = _STOP_TEMPLATE[_STOP_BODY_AT + 6 :]


_REQ_CALL: Final = int(RpcType.HTTP_REQ_CALL)  # an enum member costs an attribute lookup
_REQ_CALL_HI: Final = _REQ_CALL << 24
_TOO_LARGE: Final = "the max length of a frame is {} but got {}"


# A body up to this size is written into the reply's buffer; a larger one is
# joined to it once at the end, where writing it would grow the buffer by
# doubling (copying it again) before getvalue() copies it once more.
_INLINE_BODY: Final = 4096


def _framed(w: BytesWriter, type_hi: int, body: bytes = b"") -> bytes:
    """The frame in ``w`` then ``body``, its header (``type_hi``: the type << 24) written in."""
    length = len(w) + len(body) - HEADER_SIZE
    if length > MAX_PAYLOAD:
        raise FrameTooLarge(_TOO_LARGE.format(MAX_PAYLOAD, length))
    w[0] = type_hi >> 24
    w[1] = length >> 16
    w[2] = length >> 8 & 0xFF
    w[3] = length & 0xFF
    if len(body) > _INLINE_BODY:
        return w.getvalue() + body
    w.write(body)
    return w.getvalue()


def build_req_call_stop(
    req_id: int, status: int, headers: Sequence[tuple[str, str | None]], body: bytes
) -> bytes:
    # The hottest builder. Without headers (the usual Stop), the compiled
    # build copies a template and writes its four fields in C: one
    # allocation, where the writer below grows a buffer and copies it out.
    if (
        not headers and _STOP_FRAME_C is not None and 0 <= req_id <= 0xFFFFFFFF
        and 0 <= status <= 0xFFFF and len(body) <= _STOP_BARE_BODY_MAX
    ):  # fmt: skip
        return _STOP_FRAME_C(_STOP_BARE, _ID_AT, _STOP_STATUS_AT, req_id, status, body)
    return build_req_call_stop_py(req_id, status, headers, body)


def build_req_call_stop_py(
    req_id: int, status: int, headers: Sequence[tuple[str, str | None]], body: bytes
) -> bytes:
    """build_req_call_stop written with the writer: the pure build's, and
    any Stop with headers."""
    w = BytesWriter()
    w.write(_STOP_HEAD)
    write_u32(w, req_id)
    w.write(_STOP_MID)
    write_u32(w, 0)  # the body's offset, once the headers are laid out
    write_u16(w, status)
    w.write(_STOP_TAIL)
    if headers:
        write_text_vector(w, headers, _STOP_VTABLES)
    else:
        write_u32(w, 0)
    put_u32(w, _STOP_BODY_AT, len(w) - _STOP_BODY_AT)
    write_u32(w, len(body))
    return _framed(w, _REQ_CALL_HI, body)


# A Stop without headers up to its body's bytes (id, status and body length
# zero), for _textvec.stop_frame, and the largest body such a frame takes.
_STOP_BARE: Final = build_req_call_stop_py(0, 0, (), b"")
_STOP_BARE_BODY_MAX: Final = MAX_PAYLOAD - (len(_STOP_BARE) - HEADER_SIZE)
_STOP_FRAME_C: Final[Callable[..., bytes] | None] = c_function(TEXTVEC_MODULE, "stop_frame")


class _RewriteLayout(NamedTuple):
    head: bytes  # the template up to the request id
    tail: bytes  # after the id, up to the Rewrite table's first offset slot
    slot: int  # position of that slot
    vtables: int  # position of TEXT_VTABLES, right after the table


def _rewrite_layout(mask: int) -> _RewriteLayout:
    """The template of a Rewrite whose present fields are the bits of
    ``mask``: path 1, headers 2, args 4, resp_headers 8, body 16."""
    present = [bool(mask >> field & 1) for field in range(5)]
    out, root = _action_prefix(_ACTION_REWRITE)
    rewrite = _offsets_table(out, present)
    patch(out, root + 4, rewrite)
    slot = rewrite + 4
    head, tail = bytes(out[:_ID_AT]), bytes(out[_ID_AT + 4 : slot])
    return _RewriteLayout(head, tail, slot, slot + 4 * sum(present))


# Every one of the 32 shapes, indexed by the mask: a list index, no dict and
# no tuple of bools to build per reply.
_REWRITE_LAYOUTS: Final = [_rewrite_layout(mask) for mask in range(32)]
_REWRITE_FRAME_C: Final[Callable[..., bytes] | None] = c_function(TEXTVEC_MODULE, "rewrite_frame")
_TEXT_VTABLES_SIZE: Final = len(TEXT_VTABLES)

# A Rewrite's header and arg fields: (name, value) entries, or a multi-dict's
# change map (runner.api.multidict.MultiDict.changes), written as they are.
TextField = Sequence[tuple[str, str | None]] | Changes


def _vector(field: TextField, join: bool, start: int, vtables: int) -> bytes:
    """A header or arg field's vector, for ``start`` of the frame."""
    if isinstance(field, dict):
        return changes_vector(field, join, start, vtables)
    return text_vector(field if isinstance(field, list) else list(field), start, vtables)


def _layout_of(
    path: str | None,
    headers: TextField,
    args: TextField,
    resp_headers: Sequence[tuple[str, str | None]],
    body: bytes | None,
) -> _RewriteLayout:
    """The template of the Rewrite with these fields present (empty ones are left out)."""
    return _REWRITE_LAYOUTS[
        (path is not None) | (2 if headers else 0) | (4 if args else 0)
        | (8 if resp_headers else 0) | (16 if body else 0)
    ]  # fmt: skip


def rewrite_id_at(headers: TextField, args: TextField) -> int:
    """Where the request id lies in ``build_req_call_rewrite(id, None, headers,
    args, [], None)`` (runner.proto.replymemo writes another there)."""
    return len(_layout_of(None, headers, args, (), None).head)


def _listed(field: TextField) -> list[tuple[str, str | None]] | Changes:
    # Two isinstance calls: `list | dict` would build a union object per call.
    if isinstance(field, list) or isinstance(field, dict):  # noqa: SIM101
        return field
    return list(field)


def build_req_call_rewrite(
    req_id: int,
    path: str | None,
    headers: TextField,
    args: TextField,
    resp_headers: Sequence[tuple[str, str | None]],
    body: bytes | None,
) -> bytes:
    """Rewrite: path (0), headers (1), args (2), resp_headers (3), body (4).
    Empty parts are left out: an absent field is what "unchanged" means.

    The compiled build writes the whole frame in C (``_textvec.c``, one
    allocation); the pure build runs :func:`build_req_call_rewrite_py`, which
    writes the same bytes."""
    if _REWRITE_FRAME_C is None:
        return build_req_call_rewrite_py(req_id, path, headers, args, resp_headers, body)
    head, tail, _, _ = _layout_of(path, headers, args, resp_headers, body)
    frame = _REWRITE_FRAME_C(
        head, tail, TEXT_VTABLES, _REQ_CALL, req_id, path, _listed(headers), _listed(args),
        _listed(resp_headers), body,
    )  # fmt: skip
    if len(frame) - HEADER_SIZE > MAX_PAYLOAD:
        raise FrameTooLarge(_TOO_LARGE.format(MAX_PAYLOAD, len(frame) - HEADER_SIZE))
    return frame


def build_req_call_rewrite_py(
    req_id: int,
    path: str | None,
    headers: TextField,
    args: TextField,
    resp_headers: Sequence[tuple[str, str | None]],
    body: bytes | None,
) -> bytes:
    """:func:`build_req_call_rewrite` in Python.

    Each child's place is known before it is written (each vector is made
    whole for its place), so the table's offsets are written in order, then
    the shared TextEntry vtables, then the children, with nothing patched."""
    head, tail, slot, vtables = _layout_of(path, headers, args, resp_headers, body)
    w = BytesWriter()
    w.write(head)
    write_u32(w, req_id)
    w.write(tail)
    pos = vtables + _TEXT_VTABLES_SIZE  # where the next child goes
    raw_path = b""
    if path is not None:
        raw_path = encoded(path)
        write_u32(w, pos - slot)
        slot += 4
        pos += 8 + len(raw_path) - (len(raw_path) & 3)  # length, bytes, NUL, padding
    vectors: list[bytes] = []
    # Headers are joined per name, args are not; resp_headers are pairs already.
    for field, join in ((headers, True), (args, False), (resp_headers, True)):
        if field:
            vector = _vector(field, join, pos, vtables)
            write_u32(w, pos - slot)
            slot += 4
            pos += len(vector)
            vectors.append(vector)
    if body:
        write_u32(w, pos - slot)
    w.write(TEXT_VTABLES)
    if path is not None:
        write_string(w, raw_path)
    for vector in vectors:
        w.write(vector)
    if not body:
        return _framed(w, _REQ_CALL_HI)
    write_u32(w, len(body))
    return _framed(w, _REQ_CALL_HI, body)


class _RespCallLayout(NamedTuple):
    template: bytes  # frame header, root offset, the Resp table, TEXT_VTABLES
    headers_at: int  # the headers offset slot (when present)
    body_at: int  # the body offset slot (when present)
    id_at: int
    vtables: int


def _resp_call_layout(has_headers: bool, has_body: bool) -> _RespCallLayout:
    out = _start()
    n = has_headers + has_body
    offsets = [4 + 4 * n, 8 + 4 * n]
    offsets.append(4 if has_headers else 0)
    offsets.append(4 + 4 * has_headers if has_body else 0)
    inline = b"\0" * (4 * n) + struct.pack("<IH2x", 0, 0)
    pos = begin_table(out, _vt(*offsets, table_size=4 + len(inline)), inline)
    patch(out, HEADER_SIZE, pos)
    vtables = len(out)
    out += TEXT_VTABLES
    return _RespCallLayout(bytes(out), pos + 4, pos + 4 + 4 * has_headers, pos + 4 + 4 * n, vtables)


# By (headers present) + 2 * (body present).
_RESP_CALL_LAYOUTS: Final = [_resp_call_layout(bool(m & 1), bool(m & 2)) for m in range(4)]
_RESP_CALL_HI: Final = int(RpcType.HTTP_RESP_CALL) << 24


def build_resp_call_resp(
    req_id: int,
    status: int,
    headers: Sequence[tuple[str, str | None]] | None,
    body: bytes | None,
) -> bytes:
    """HTTPRespCall.Resp: id (0), status (1), headers (2), body (3).
    ``headers`` None means "keep the upstream's"; see docs/protocol.md §7.3.
    Built like a Rewrite: a template per shape, the children, then the
    fields and offsets overwritten in place."""
    has_headers = headers is not None
    layout = _RESP_CALL_LAYOUTS[has_headers | (2 if body else 0)]
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"status {status} does not fit in a u16")
    w = BytesWriter()
    w.write(layout.template)
    if headers is not None:
        write_text_vector(w, headers, layout.vtables)
    body_pos = len(w)
    if body:
        write_u32(w, len(body))
    put_u32(w, layout.id_at, req_id)
    w[layout.id_at + 4] = status & 0xFF
    w[layout.id_at + 5] = status >> 8
    if has_headers:
        put_u32(w, layout.headers_at, len(layout.template) - layout.headers_at)
    if not body:
        return _framed(w, _RESP_CALL_HI)
    put_u32(w, layout.body_at, body_pos - layout.body_at)
    return _framed(w, _RESP_CALL_HI, body)


def _build_extra_info(info_type: int, name: str | None) -> bytearray:
    out = _start()
    # ExtraInfo.Req: info_type (0) u8, info (1) offset
    pos = begin_table(out, _vt(8, 4, table_size=9), struct.pack("<IB3x", 0, info_type))
    align4(out)
    if name is None:
        info = begin_table(out, _vt(table_size=4), b"")
    else:
        info = begin_table(out, _vt(4, table_size=8), b"\0" * 4)
        patch(out, info + 4, write_bytes(out, encoded(name), nul=True))
    patch(out, pos + 4, info)
    return _finish(out, RpcType.EXTRA_INFO, pos)


_EXTRA_REQ_BODY: Final = bytes(_build_extra_info(InfoType.REQ_BODY, None))
_EXTRA_RESP_BODY: Final = bytes(_build_extra_info(InfoType.RESP_BODY, None))


# ExtraInfo Var requests by name: a plugin asks for the same few variables on
# every call, and the frame depends on nothing else. Bounded, in case a plugin
# asks for names made up per request.
_VAR_FRAMES: Final[dict[str, bytes]] = {}
_VAR_FRAMES_MAX: Final = 1024


# Plain ints: compiled, `info_type == InfoType.VAR` is a generic comparison
# with an enum member, looked up on its class each time.
_INFO_VAR: Final = int(InfoType.VAR)
_INFO_REQ_BODY: Final = int(InfoType.REQ_BODY)


def build_extra_info(info_type: int, name: str | None = None) -> bytes | bytearray:
    if info_type == _INFO_VAR:
        name = name or ""
        frame = _VAR_FRAMES.get(name)
        if frame is None:
            frame = bytes(_build_extra_info(InfoType.VAR, name))
            if len(_VAR_FRAMES) < _VAR_FRAMES_MAX:
                _VAR_FRAMES[name] = frame
        return frame
    return _EXTRA_REQ_BODY if info_type == _INFO_REQ_BODY else _EXTRA_RESP_BODY

"""A minimal, bounds-checked FlatBuffers reader and a forward-layout writer.

Why not the generated code: the ``flatbuffers`` runtime spends several Python
calls per field (Table.Offset -> encode.Get -> struct). Reading the few fields a
request needs directly with precompiled ``struct`` unpackers is several times
cheaper, and lets every offset be checked against the buffer, so a hostile
frame raises :class:`DecodeError` instead of reading out of bounds (a negative
offset would otherwise index from the end of the buffer).

Layout reminders (all little-endian):

* the buffer starts with a u32 offset to the root table;
* a table starts with an i32 ``soffset``; its vtable is at ``table - soffset``;
* a vtable is ``u16 vtable_size, u16 table_size, u16 field_offset[n]``; an offset
  of 0 (or a field id past the vtable) means the field is absent;
* strings and vectors are reached through a u32 offset relative to the field
  itself and start with a u32 element count.

The writer lays a message out front to back: root offset, then each table
after its vtable, then the table's children. A uoffset must point forward,
which children written after their parent do; a vtable may sit anywhere, so
writing it just before its table is legal. Tables and strings are 4-aligned.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
u32_at = _U32.unpack_from
_i32_at = _I32.unpack_from
_u16_at = _U16.unpack_from
_pack_u32 = _U32.pack
_pack_u32_into = _U32.pack_into

TextPairs = list[tuple[str, str | None]]


class DecodeError(ValueError):
    """The payload is not a well-formed flatbuffer of the expected shape."""


class Table:
    """A view of one table inside a received buffer. Nothing is decoded until
    a field is asked for."""

    __slots__ = ("buf", "pos", "size", "vt", "vtlen")

    def __init__(self, buf: memoryview, pos: int) -> None:
        size = len(buf)
        if pos < 0 or pos + 4 > size:
            raise DecodeError(f"table offset {pos} outside a {size}-byte buffer")
        vt = pos - _i32_at(buf, pos)[0]
        if vt < 0 or vt + 4 > size:
            raise DecodeError(f"vtable offset {vt} outside a {size}-byte buffer")
        vtlen = _u16_at(buf, vt)[0]
        if vtlen < 4 or vtlen & 1 or vt + vtlen > size:
            raise DecodeError(f"bad vtable size {vtlen}")
        self.buf, self.pos, self.size, self.vt, self.vtlen = buf, pos, size, vt, vtlen

    @classmethod
    def root(cls, buf: memoryview) -> Table:
        if len(buf) < 8:
            raise DecodeError(f"a {len(buf)}-byte payload is too short for a flatbuffer")
        return cls(buf, u32_at(buf, 0)[0])

    def field(self, fid: int, width: int) -> int:
        """Absolute position of field ``fid`` (0 when absent), checked for ``width`` bytes."""
        slot = 4 + 2 * fid
        if slot >= self.vtlen:
            return 0
        off: int = _u16_at(self.buf, self.vt + slot)[0]
        if off == 0:
            return 0
        pos = self.pos + off
        if pos + width > self.size:
            raise DecodeError(f"field {fid} outside the buffer")
        return pos

    def u32(self, fid: int) -> int:
        pos = self.field(fid, 4)
        return u32_at(self.buf, pos)[0] if pos else 0

    def u16(self, fid: int) -> int:
        pos = self.field(fid, 2)
        return _u16_at(self.buf, pos)[0] if pos else 0

    def u8(self, fid: int) -> int:
        pos = self.field(fid, 1)
        return int(self.buf[pos]) if pos else 0

    def _target(self, fid: int) -> int:
        pos = self.field(fid, 4)
        return pos + u32_at(self.buf, pos)[0] if pos else 0

    def _vector(self, fid: int, elem: int) -> tuple[int, int]:
        """(start of elements, count) of a vector field; (0, -1) when absent."""
        vec = self._target(fid)
        if not vec:
            return 0, -1
        if vec + 4 > self.size:
            raise DecodeError(f"vector {fid} outside the buffer")
        count = u32_at(self.buf, vec)[0]
        if vec + 4 + count * elem > self.size:
            raise DecodeError(f"vector {fid} of {count} elements overruns the buffer")
        return vec + 4, count

    def bytes_view(self, fid: int) -> memoryview | None:
        start, count = self._vector(fid, 1)
        return None if count < 0 else self.buf[start : start + count]

    def string(self, fid: int) -> str | None:
        view = self.bytes_view(fid)
        if view is None:
            return None
        try:
            return str(view, "utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"field {fid} is not UTF-8: {exc}") from None

    def table(self, fid: int) -> Table | None:
        pos = self._target(fid)
        return Table(self.buf, pos) if pos else None

    def table_count(self, fid: int) -> int:
        return max(self._vector(fid, 4)[1], 0)

    def text_pairs(self, fid: int) -> TextPairs:
        """A ``[TextEntry]`` vector as (name, value) pairs; value None = absent.

        Inlined table walking (no Table object per entry): headers and args
        are the largest part of every request."""
        start, count = self._vector(fid, 4)
        buf, size = self.buf, self.size
        out: TextPairs = []
        append = out.append
        for slot in range(start, start + 4 * count, 4):
            t = slot + u32_at(buf, slot)[0]
            if t + 4 > size:
                raise DecodeError("TextEntry outside the buffer")
            vt = t - _i32_at(buf, t)[0]
            if vt < 0 or vt + 4 > size:
                raise DecodeError("TextEntry vtable outside the buffer")
            vtlen = _u16_at(buf, vt)[0]
            if vt + vtlen > size:
                raise DecodeError("TextEntry vtable overruns the buffer")
            name_off = _u16_at(buf, vt + 4)[0] if vtlen >= 6 else 0
            value_off = _u16_at(buf, vt + 6)[0] if vtlen >= 8 else 0
            append((_text(buf, size, t + name_off) if name_off else "",
                    _text(buf, size, t + value_off) if value_off else None))  # fmt: skip
        return out


def _text(buf: memoryview, size: int, field: int) -> str:
    """The string a uoffset field at ``field`` points to."""
    if field + 4 > size:
        raise DecodeError("string offset outside the buffer")
    s = field + u32_at(buf, field)[0]
    if s + 4 > size:
        raise DecodeError("string outside the buffer")
    end = s + 4 + u32_at(buf, s)[0]
    if end > size:
        raise DecodeError("string overruns the buffer")
    try:
        return str(buf[s + 4 : end], "utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"string is not UTF-8: {exc}") from None


# --------------------------------------------------------------------------- writer


def align4(out: bytearray) -> None:
    pad = -len(out) & 3
    if pad:
        out += b"\0" * pad


def patch(out: bytearray, slot: int, target: int) -> None:
    """Point the uoffset at ``slot`` to ``target`` (which lies after it)."""
    _pack_u32_into(out, slot, target - slot)


def write_bytes(out: bytearray, data: bytes | bytearray | memoryview, nul: bool = False) -> int:
    """Append a ``[ubyte]`` vector (or a string when ``nul``); returns its position."""
    align4(out)
    pos = len(out)
    out += _pack_u32(len(data))
    out += data
    if nul:
        out += b"\0"
    return pos


def vtable(*offsets: int, table_size: int) -> bytes:
    """Precompute a vtable; pad it so the table after it stays 4-aligned."""
    raw = struct.pack(f"<HH{len(offsets)}H", 4 + 2 * len(offsets), table_size, *offsets)
    return raw + b"\0" * (-len(raw) & 3)


def begin_table(out: bytearray, vt: bytes, body: bytes) -> int:
    """Append a precomputed vtable and a table whose inline part (after the
    soffset) is ``body``; returns the table position. ``out`` must be 4-aligned."""
    vt_pos = len(out)
    out += vt
    pos = len(out)
    out += _I32.pack(pos - vt_pos)
    out += body
    return pos


# TextEntry tables: name at +4, value at +8 (or only the name).
_VT_NAME_VALUE = vtable(4, 8, table_size=12)
_VT_NAME = vtable(4, table_size=8)
_VTABLES = _VT_NAME_VALUE + _VT_NAME  # 16 bytes: both vtables, 4-aligned
_ENTRY_NV = struct.Struct("<iIII").pack  # soffset, name off, value off, name length
_ENTRY_N = struct.Struct("<iII").pack  # soffset, name off, name length
_PADS = (b"\0\0\0\0", b"\0\0\0", b"\0\0", b"\0")  # NUL + padding to 4, by length % 4


def write_text_vector(out: bytearray, pairs: Sequence[tuple[str, str | None]]) -> int:
    """Append a ``[TextEntry]`` vector with its entries; returns its position.

    Layout, computed in one pass (the hot path of every Rewrite)::

        vtable(name, value) vtable(name) | count off[0..n) | entry 0 | entry 1 ...
        entry = soffset, name off, [value off], name string, [value string]

    Both vtables are written once and shared by every entry, as flatc does.
    Each entry is one contiguous chunk, so its inner offsets are constants.
    """
    align4(out)
    vt_both = len(out)
    vt_name = vt_both + 8
    count = len(pairs)
    pos = vt_both + 16 + 4 + 4 * count  # first entry
    slot = vt_both + 20
    offsets: list[int] = []
    chunks: list[bytes] = []
    for name, value in pairs:
        nb = name.encode()
        ln = len(nb)
        npad = _PADS[ln & 3]
        offsets.append(pos - slot)
        slot += 4
        if value is None:
            chunks += (_ENTRY_N(pos - vt_name, 4, ln), nb, npad)
            pos += 12 + ln + len(npad)
        else:
            vb = value.encode()
            lv = len(vb)
            vpad = _PADS[lv & 3]
            pn = ln + len(npad)
            chunks += (_ENTRY_NV(pos - vt_both, 8, 8 + pn, ln), nb, npad, _pack_u32(lv), vb, vpad)
            pos += 20 + pn + lv + len(vpad)
    out += _VTABLES
    out += struct.pack(f"<{count + 1}I", count, *offsets)
    out += b"".join(chunks)
    return vt_both + 16

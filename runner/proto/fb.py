"""A minimal, bounds-checked FlatBuffers reader and a forward-layout writer.

Why not the generated code: the ``flatbuffers`` runtime spends several Python
calls per field (Table.Offset -> encode.Get -> struct). Reading the few fields a
request needs directly (with librt's byte readers, see ``u32_at``) is several
times cheaper, and lets every offset be checked against the buffer, so a hostile
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
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import librt.strings
from librt.strings import BytesWriter, read_i16_le, read_i32_le, write_i16_le, write_i32_le
from mypy_extensions import mypyc_attr

from .chelpers import c_function

_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_U16: Final = struct.Struct("<H")
_pack_u32: Final = _U32.pack
_pack_u32_into: Final = _U32.pack_into

TextPairs = list[tuple[str, str | None]]


class DecodeError(ValueError):
    """The payload is not a well-formed flatbuffer of the expected shape."""


_TOO_SHORT: Final = "a {}-byte payload is too short for a flatbuffer"


# Little-endian readers of a ``bytes`` buffer and writers to a BytesWriter:
# librt.strings, mypyc's runtime library. Compiled, mypyc turns these calls
# into a few inline machine instructions (a struct call costs ~1,000 of
# argument parsing); interpreted, the end of this module binds the names to
# librt's own unsigned functions, one C call each. librt checks its own
# bounds (an IndexError), but every caller checks ``pos`` against the buffer
# first, so a hostile offset is a DecodeError naming the field. The int()
# keeps position arithmetic in Python ints: a fixed-width sum would wrap
# around when compiled, and a wrapped offset could pass a bounds check.


def u32_at(data: bytes, pos: int) -> int:
    return int(read_i32_le(data, pos)) & 0xFFFFFFFF


def _i32_at(data: bytes, pos: int) -> int:
    return int(read_i32_le(data, pos))


def u16_at(data: bytes, pos: int) -> int:
    return int(read_i16_le(data, pos)) & 0xFFFF


def write_u32(w: BytesWriter, value: int) -> None:
    """Append ``value`` (0 <= value < 2**32) as a little-endian u32."""
    write_i32_le(w, value - 0x100000000 if value > 0x7FFFFFFF else value)


def write_u16(w: BytesWriter, value: int) -> None:
    """Append ``value`` (0 <= value < 2**16) as a little-endian u16."""
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value} does not fit in a u16")
    write_i16_le(w, value - 0x10000 if value > 0x7FFF else value)


def put_u32(w: BytesWriter, at: int, value: int) -> None:
    """Overwrite 4 bytes at ``at`` with ``value`` as a little-endian u32."""
    w[at] = value & 0xFF
    w[at + 1] = value >> 8 & 0xFF
    w[at + 2] = value >> 16 & 0xFF
    w[at + 3] = value >> 24 & 0xFF


def _vtable_of(data: bytes, pos: int, size: int) -> tuple[int, int]:
    """(position, size) of the vtable of the table at ``pos``, checked
    against the buffer: the one gate every table read passes. The checks
    are written out (a call each costs the interpreted build as much)."""
    if pos < 0 or pos + 4 > size:
        _check_table(pos, size)
    vt = pos - _i32_at(data, pos)
    if vt < 0 or vt + 4 > size:
        _check_vtable(vt, -1, size)
    vtlen = u16_at(data, vt)
    if vtlen < 4 or vtlen & 1 or vt + vtlen > size:
        _check_vtable(vt, vtlen, size)
    return vt, vtlen


def _view_vtable_of(view: memoryview, pos: int, size: int) -> tuple[int, int]:
    """``_vtable_of`` for a buffer read in place (struct reads a memoryview)."""
    _check_table(pos, size)
    vt = pos - _I32.unpack_from(view, pos)[0]
    _check_vtable(vt, -1, size)
    vtlen: int = _U16.unpack_from(view, vt)[0]
    _check_vtable(vt, vtlen, size)
    return vt, vtlen


def _check_table(pos: int, size: int) -> None:
    if pos < 0 or pos + 4 > size:
        raise DecodeError(f"table offset {pos} outside a {size}-byte buffer")


def _check_vtable(vt: int, vtlen: int, size: int) -> None:
    """The vtable's position (``vtlen`` -1: not read yet), then its size."""
    if vtlen < 0:
        if vt < 0 or vt + 4 > size:
            raise DecodeError(f"vtable offset {vt} outside a {size}-byte buffer")
    elif vtlen < 4 or vtlen & 1 or vt + vtlen > size:
        raise DecodeError(f"bad vtable size {vtlen}")


@mypyc_attr(free_list_len=1, acyclic=True)
class Table:
    """A view of one table inside a received buffer. Nothing is decoded until
    a field is asked for. Hot accessors (``u32``, ``string``) are written out
    in full rather than layered on ``field``: each Python call layer costs
    about as much as the read itself."""

    __slots__ = ("buf", "pos", "size", "vt", "vtlen")

    def __init__(self, buf: bytes, pos: int) -> None:
        size = len(buf)
        vt, vtlen = _vtable_of(buf, pos, size)
        self.buf, self.pos, self.size, self.vt, self.vtlen = buf, pos, size, vt, vtlen

    @staticmethod
    def root(payload: bytes | memoryview) -> Table:
        """The root table (every message starts here).

        The frame decoder hands in ``bytes`` (its one copy out of the read
        buffer); a view, of a frame larger than that buffer, is copied here.
        Either way the table outlives the read buffer, every string is sliced
        from it without another copy, and the readers index it directly."""
        buf = payload if isinstance(payload, bytes) else payload.tobytes()
        size = len(buf)
        if size < 8:
            raise DecodeError(_TOO_SHORT.format(size))
        return Table(buf, u32_at(buf, 0))

    def offset(self, fid: int) -> int:
        """Field ``fid``'s offset from the table (0 when absent)."""
        slot = 4 + 2 * fid
        return u16_at(self.buf, self.vt + slot) if slot < self.vtlen else 0

    def field(self, fid: int, width: int) -> int:
        """Absolute position of field ``fid`` (0 when absent), checked for ``width`` bytes."""
        off = self.offset(fid)
        if off == 0:
            return 0
        pos = self.pos + off
        if pos + width > self.size:
            raise DecodeError(f"field {fid} outside the buffer")
        return pos

    def u32(self, fid: int) -> int:
        pos = self.field(fid, 4)
        return u32_at(self.buf, pos) if pos else 0

    def u16(self, fid: int) -> int:
        pos = self.field(fid, 2)
        return u16_at(self.buf, pos) if pos else 0

    def u8(self, fid: int) -> int:
        pos = self.field(fid, 1)
        return int(self.buf[pos]) if pos else 0

    def _target(self, fid: int) -> int:
        pos = self.field(fid, 4)
        return pos + u32_at(self.buf, pos) if pos else 0

    def _vector(self, fid: int, elem: int) -> tuple[int, int]:
        """(start of elements, count) of a vector field; (0, -1) when absent.

        ``field`` and ``_target`` written out: strings, byte vectors and
        entry vectors all come through here, one Python call each."""
        slot = 4 + 2 * fid
        off = u16_at(self.buf, self.vt + slot) if slot < self.vtlen else 0
        if not off:
            return 0, -1
        buf, size = self.buf, self.size
        pos = self.pos + off
        if pos + 4 > size:
            raise DecodeError(f"field {fid} outside the buffer")
        vec = pos + u32_at(buf, pos)
        if vec + 4 > size:
            raise DecodeError(f"vector {fid} outside the buffer")
        count = u32_at(buf, vec)
        if vec + 4 + count * elem > size:
            raise DecodeError(f"vector {fid} of {count} elements overruns the buffer")
        return vec + 4, count

    def byte_vector(self, fid: int) -> bytes | None:
        start, count = self._vector(fid, 1)
        return None if count < 0 else self.buf[start : start + count]

    def string(self, fid: int) -> str | None:
        # _vector(fid, 1) written out: the path is read on most calls.
        slot = 4 + 2 * fid
        off = u16_at(self.buf, self.vt + slot) if slot < self.vtlen else 0
        if not off:
            return None
        buf, size = self.buf, self.size
        pos = self.pos + off
        if pos + 4 > size:
            raise DecodeError(f"field {fid} outside the buffer")
        vec = pos + u32_at(buf, pos)
        if vec + 4 > size:
            raise DecodeError(f"vector {fid} outside the buffer")
        end = vec + 4 + u32_at(buf, vec)
        if end > size:
            raise DecodeError(f"vector {fid} of {end - vec - 4} elements overruns the buffer")
        raw = buf[vec + 4 : end]
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw.decode("utf-8", "surrogateescape")  # see _text

    def table(self, fid: int) -> Table | None:
        pos = self._target(fid)
        return Table(self.buf, pos) if pos else None

    def table_count(self, fid: int) -> int:
        return max(self._vector(fid, 4)[1], 0)

    def text_pairs(self, fid: int) -> TextPairs:
        """A ``[TextEntry]`` vector as (name, value) pairs; value None = absent.

        Headers and args are the largest part of every request, so this is
        one loop with no Table object and no call per entry:

        * builders share one vtable between all entries (flatc and APISIX's
          Lua builder do), so a vtable is decoded only when it changes;
        * strings are sliced from the table's ``bytes`` (see ``root``):
          ``bytes[a:b].decode()`` per string is cheaper than a memoryview
          slice, ``tobytes()`` and ``decode()`` each.

        Every offset is still checked against the buffer."""
        start, count = self._vector(fid, 4)
        if count <= 0:
            return []
        data, size = self.buf, self.size
        out: TextPairs = []
        append = out.append
        last_vt = -1
        name_off = value_off = 0
        budget = size
        for slot in range(start, start + 4 * count, 4):
            t = slot + u32_at(data, slot)
            if t + 4 > size:
                raise DecodeError("TextEntry outside the buffer")
            vt = t - _i32_at(data, t)
            if vt != last_vt:
                if vt < 0 or vt + 4 > size:
                    raise DecodeError("TextEntry vtable outside the buffer")
                vtlen = u16_at(data, vt)
                if vtlen < 4 or vtlen & 1 or vt + vtlen > size:
                    raise DecodeError(f"TextEntry vtable of bad size {vtlen}")
                name_off = u16_at(data, vt + 4) if vtlen >= 6 else 0
                value_off = u16_at(data, vt + 6) if vtlen >= 8 else 0
                last_vt = vt
            name = _text(data, size, t + name_off) if name_off else ""
            value = _text(data, size, t + value_off) if value_off else None
            # Entries may alias one another (several slots, one entry): a
            # well-formed buffer never decodes to more text than its size,
            # so a frame cannot amplify itself into an unbounded allocation.
            budget -= len(name) + (len(value) if value else 0)
            if budget < 0:
                raise DecodeError("TextEntry vector decodes to more text than the buffer holds")
            append((name, value))
        return out


# An answer in a view up to this size is copied once and read with the bytes
# readers; a larger one (a body, up to 16 MiB, which the connection hands in
# as a view of its own buffer) is read in place, so its bytes are copied only
# into the result. Answers that fit the receive buffer arrive as bytes.
_COPY_ANSWER_MAX: Final = 4096


def root_bytes0(buf: bytes | memoryview) -> bytes | None:
    """Field 0 of the root table as a ``[ubyte]`` vector (None when absent).

    Every ExtraInfo answer is read here, and it is this message's only field.
    A large one in a view of its own buffer (a body, up to 16 MiB) is
    ``Table.root(buf).byte_vector(0)`` written out with no Table object and no
    copy of the payload, with the same checks."""
    if isinstance(buf, bytes) or len(buf) <= _COPY_ANSWER_MAX:
        data = buf if isinstance(buf, bytes) else buf.tobytes()
        if _BYTES0_C is not None:
            # The C reader; False: malformed, and the Table's reading raises
            # the DecodeError, with its message.
            found = _BYTES0_C(data)
            if found is not False:
                return cast("bytes | None", found)
        return Table.root(data).byte_vector(0)
    size = len(buf)
    if size < 8:
        raise DecodeError(_TOO_SHORT.format(size))
    u32 = _U32.unpack_from
    pos = u32(buf, 0)[0]
    vt, vtlen = _view_vtable_of(buf, pos, size)
    off = _U16.unpack_from(buf, vt + 4)[0] if vtlen >= 6 else 0
    if not off:
        return None
    pos += off
    if pos + 4 > size:
        raise DecodeError("field 0 outside the buffer")
    vec = pos + u32(buf, pos)[0]
    if vec + 4 > size:
        raise DecodeError("vector 0 outside the buffer")
    end = vec + 4 + u32(buf, vec)[0]
    if end > size:
        raise DecodeError(f"vector 0 of {end - vec - 4} elements overruns the buffer")
    return buf[vec + 4 : end].tobytes()


_BYTES0_C: Final[Callable[[bytes], Any] | None] = c_function(
    "runner.proto._cutframe", "root_bytes0"
)


def _text(data: bytes, size: int, field: int) -> str:
    """The string a uoffset field at ``field`` points to."""
    if field + 4 > size:
        raise DecodeError("string offset outside the buffer")
    s = field + u32_at(data, field)
    if s + 4 > size:
        raise DecodeError("string outside the buffer")
    end = s + 4 + u32_at(data, s)
    if end > size:
        raise DecodeError("string overruns the buffer")
    try:
        return data[s + 4 : end].decode()
    except UnicodeDecodeError:
        # HTTP allows any byte in header values (obs-text), and paths and args
        # carry what the client percent-encoded: such bytes are kept as
        # surrogate escapes and written back as the same bytes (``encoded``).
        return data[s + 4 : end].decode("utf-8", "surrogateescape")


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
_VT_NAME_VALUE: Final = vtable(4, 8, table_size=12)
_VT_NAME: Final = vtable(4, table_size=8)
TEXT_VTABLES: Final = _VT_NAME_VALUE + _VT_NAME  # 16 bytes: both vtables, 4-aligned
PADS: Final = (b"\0\0\0\0", b"\0\0\0", b"\0\0", b"\0")  # NUL + padding to 4, by length % 4


def encoded(text: str) -> bytes:
    """UTF-8, with surrogate escapes turned back into the bytes they stand for."""
    try:
        return text.encode()
    except UnicodeEncodeError:  # surrogate escapes: the bytes received
        return text.encode("utf-8", "surrogateescape")


def write_text_vector(
    w: BytesWriter, pairs: Sequence[tuple[str, str | None]], vtables: int
) -> None:
    """Append a ``[TextEntry]`` vector at ``len(w)`` (4-aligned, counted from
    the frame's start, as every position in ``w`` is); see :func:`text_vector`."""
    # A list is indexed natively when compiled; any other sequence is copied.
    items = pairs if isinstance(pairs, list) else list(pairs)
    if _TEXT_VECTOR_C is not None:
        w.write(_TEXT_VECTOR_C(items, len(w), vtables))
    else:
        _write_entries(w, items, vtables)


def text_vector_py(pairs: list[tuple[str, str | None]], start: int, vtables: int) -> bytes:
    """The bytes of a ``[TextEntry]`` vector that starts at ``start`` of a
    frame (4-aligned).

    ``vtables`` is where :data:`TEXT_VTABLES` already lies in the frame: every
    entry of every vector of a message points at those two vtables (as flatc
    shares identical vtables), so a message writes them once. Layout::

        count off[0..n) | entry 0 | entry 1 ...
        entry = soffset, name off, [value off], name string, [value string]

    Each entry is one contiguous run, so its inner offsets are constants.

    The pure build runs this; the compiled build runs the same function
    written in C (``_textvec.c``), which reads each str's UTF-8 in place
    (:data:`text_vector` is whichever the install has)."""
    w = BytesWriter()
    # Positions in w count from `start`: only the soffsets depend on them.
    _write_entries(w, pairs, vtables - start)
    return w.getvalue()


#: Header or arg changes: each name's values now, or None once removed.
Changes = dict[str, list[str | None] | None]


def change_entries(changes: Changes, join: bool) -> TextPairs:
    """Changes as Rewrite entries (docs/protocol.md §5.4); a name without a
    value removes it.

    ``join`` (headers): a Rewrite header entry *replaces* the header, so
    several values are joined with ", " (RFC 9110 §5.3), None values left
    out. Otherwise (args): APISIX replaces an arg with its first entry and
    appends later ones, so each value is an entry; an arg without ``=`` (None)
    cannot be expressed (no value means remove), and the nearest is an empty
    value (``?z=``)."""
    out: TextPairs = []
    for key, values in changes.items():
        if values is None:
            out.append((key, None))
        elif join:
            if len(values) == 1:  # the usual case, without a join
                value = values[0]
                out.append((key, "" if value is None else value))
            else:
                out.append((key, ", ".join([v for v in values if v is not None])))
        else:
            out += [(key, "" if v is None else v) for v in values]
    return out


def changes_vector_py(changes: Changes, join: bool, start: int, vtables: int) -> bytes:
    """``text_vector(change_entries(changes, join), start, vtables)``: the
    pure build's; the compiled build's C twin (``_textvec.c``) writes the
    entries without making the pairs (:data:`changes_vector`)."""
    return text_vector_py(change_entries(changes, join), start, vtables)


def _write_entries(w: BytesWriter, items: list[tuple[str, str | None]], vtables: int) -> None:
    """:func:`text_vector`'s layout written at ``len(w)``; the vector's
    offsets are written as zeros and filled in as each entry lands."""
    vt_name = vtables + 8
    count = len(items)
    write_u32(w, count)
    slot = len(w)
    for _ in range(count):
        write_u32(w, 0)
    for i in range(count):
        name, value = items[i]
        nb = encoded(name)
        ln = len(nb)
        pos = len(w)
        put_u32(w, slot, pos - slot)
        slot += 4
        if value is None:
            write_u32(w, pos - vt_name)  # soffset: the vtable lies before
            write_u32(w, 4)  # the name, right after this slot
            write_string(w, nb)
        else:
            vb = encoded(value)
            write_u32(w, pos - vtables)
            write_u32(w, 8)  # the name, after this slot and the value's
            write_u32(w, 12 + ln - (ln & 3))  # the value, after the name and its NUL + padding
            write_string(w, nb)
            write_string(w, vb)


#: The C vector writer (the compiled build's; messages takes its Rewrite builder from it).
TEXTVEC_MODULE: Final = "runner.proto._textvec"
_TEXT_VECTOR_C: Final[Callable[[TextPairs, int, int], bytes] | None] = c_function(
    TEXTVEC_MODULE, "text_vector"
)
#: ``text_vector(pairs: list, start, vtables) -> bytes``: the C writer or its Python twin.
text_vector: Final[Callable[[TextPairs, int, int], bytes]] = _TEXT_VECTOR_C or text_vector_py
#: ``changes_vector(changes, join, start, vtables) -> bytes``: likewise.
changes_vector: Final[Callable[[Changes, bool, int, int], bytes]] = (
    c_function(TEXTVEC_MODULE, "changes_vector") or changes_vector_py
)


def write_string(w: BytesWriter, raw: bytes) -> None:
    """Append a string's length, bytes, NUL and padding to 4."""
    write_u32(w, len(raw))
    w.write(raw)
    w.write(PADS[len(raw) & 3])


if __file__.endswith(".py"):
    # Interpreted, a Python call layer costs more than the read: use librt's
    # unsigned readers and writers directly (they return Python ints).
    # mypy's stubs for librt list only the signed ones, hence getattr.
    globals().update(
        {
            name: getattr(librt.strings, fn)
            for name, fn in (
                ("u32_at", "read_u32_le"),
                ("_i32_at", "read_i32_le"),
                ("u16_at", "read_u16_le"),
                ("write_u32", "write_u32_le"),
                ("write_u16", "write_u16_le"),
            )
        }
    )

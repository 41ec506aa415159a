"""Frame layer of the ext-plugin protocol: a 4-byte header, then one flatbuffer.

Wire format (docs/protocol.md §2), identical in both directions::

    0        1        2        3        4
    +--------+--------+--------+--------+=====================+
    |  type  |   payload length (u24, big-endian)    | payload (length bytes)
    +--------+--------+--------+--------+=====================+

``type`` is an :class:`RpcType`; the payload is a finished flatbuffer (no size
prefix, no file identifier). The length field cannot express more than
16,777,215 bytes, so neither side may send more.

:class:`FrameDecoder` is sans-IO and owns the receive buffer: the transport asks
it where to read (``get_buffer``), says how many bytes arrived (``advance``) and
then pulls complete frames (``next_payload``). The kernel reads into the
buffer in place; a frame that lies inside it is copied out once, into the
``bytes`` its message view keeps (a view must outlive the buffer: an async
call reads its request later). A frame larger than the buffer gets a buffer
of exactly its size and the transport reads straight into it, so even a
16 MiB body is copied by nobody but the kernel until a plugin asks for it.
"""

from __future__ import annotations

import enum
import mmap
import struct
from collections.abc import Callable
from typing import Final

from .chelpers import c_function

HEADER_SIZE: Final = 4
MAX_PAYLOAD: Final = (1 << 24) - 1
DEFAULT_CHUNK: Final = 64 * 1024

_HEADER: Final = struct.Struct(">I")


class RpcType(enum.IntEnum):
    ERR = 0
    PREPARE_CONF = 1
    HTTP_REQ_CALL = 2
    EXTRA_INFO = 3
    HTTP_RESP_CALL = 4


class FrameTooLarge(ValueError):
    """A payload that the 24-bit length field cannot carry."""


def cut_payload(buf: bytearray, start: int, end: int, spare: object = None) -> bytes | None:
    """The payload of the frame whose header is at ``buf[start]``, copied into
    ``bytes``, once the whole frame lies in ``buf[start:end]``; None until then.

    The pure build runs this; the compiled build runs the same function
    written in C (``_cutframe.c``: one copy, where this compiled costs a
    memoryview slice, a ``tobytes()`` and four boxed byte reads). The C one
    copies into ``spare``'s bytes object where nothing else holds it (the
    connection's last payload, see _cutframe.c); this one has no spares."""
    if start < 0 or end < start or end > len(buf):
        raise IndexError(f"cut_payload(): [{start}:{end}] outside a {len(buf)}-byte buffer")
    if end - start < HEADER_SIZE:
        return None
    length = buf[start + 1] << 16 | buf[start + 2] << 8 | buf[start + 3]
    if end - start - HEADER_SIZE < length:
        return None
    begin = start + HEADER_SIZE
    return memoryview(buf)[begin : begin + length].tobytes()


# The C frame cutter where the compiled build installed it, else the Python one.
_CUT: Final[Callable[[bytearray, int, int, object], bytes | None]] = (
    c_function("runner.proto._cutframe", "cut_payload") or cut_payload
)


def _no_spare() -> object:
    return None


# A decoder's spare payload (_cutframe.Spare), or None in the pure build.
_NEW_SPARE: Final[Callable[[], object]] = c_function("runner.proto._cutframe", "Spare") or _no_spare


def encode_header(rpc_type: int, length: int) -> bytes:
    if length > MAX_PAYLOAD:
        raise FrameTooLarge(f"the max length of a frame is {MAX_PAYLOAD} but got {length}")
    return _HEADER.pack((rpc_type << 24) | length)


def encode_frame(rpc_type: int, payload: bytes | bytearray) -> bytes:
    return encode_header(rpc_type, len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frames: the payload of one that fit the
    buffer as ``bytes`` (its one copy), of a larger one as a view of the
    buffer it was read into, which is its own and is never reused."""

    __slots__ = (
        "_big", "_big_fill", "_big_type", "_buf", "_chunk", "_end", "_mv", "_spare", "_start",
        "frame_type",
    )  # fmt: skip

    def __init__(self, chunk: int = DEFAULT_CHUNK) -> None:
        self._chunk = chunk
        self._buf = bytearray(chunk)
        self._mv = memoryview(self._buf)
        self._start = 0  # first unconsumed byte
        self._end = 0  # end of received data
        self._big: mmap.mmap | None = None  # a frame too large for the chunk
        self._big_fill = 0
        self._big_type = 0
        self.frame_type = 0  # the type of the frame next_payload returned last
        self._spare = _NEW_SPARE()  # where payloads are copied (see cut_payload)

    def get_buffer(self) -> memoryview:
        """Where the next read must go (never empty)."""
        if self._big is not None:
            return memoryview(self._big)[self._big_fill :]
        if self._start == self._end:
            # Everything was consumed (the usual case between calls): start
            # over at 0 and hand out the whole buffer's view, no new slice.
            self._start = self._end = 0
            return self._mv
        if self._end == len(self._buf):
            self._compact()
        return self._mv[self._end :]

    def advance(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into the last buffer."""
        if self._big is not None:
            self._big_fill += nbytes
        else:
            self._end += nbytes

    def next_frame(self) -> tuple[int, bytes | memoryview] | None:
        """The next complete frame as ``(type, payload)``, or None until more bytes arrive."""
        payload = self.next_payload()
        return None if payload is None else (self.frame_type, payload)

    def next_payload(self) -> bytes | memoryview | None:
        """The next complete frame's payload (its type in ``frame_type``),
        or None until more bytes arrive. The connection's way in: no tuple.

        A frame inside the receive buffer comes out as ``bytes``, copied once
        (every message view needs its own copy, so that it outlives the
        buffer); a frame larger than the buffer as a view of its own buffer."""
        big = self._big
        if big is not None:
            if self._big_fill < len(big):
                return None
            self._big = None
            self.frame_type = self._big_type
            return memoryview(big)
        start = self._start
        end = self._end
        if end - start < HEADER_SIZE:
            # The usual end of a read: every frame taken. No call, and no end
            # boxed into an int object for it (one allocation per read).
            return None
        buf = self._buf
        payload = _CUT(buf, start, end, self._spare)
        if payload is not None:
            self._start = start + HEADER_SIZE + len(payload)
            self.frame_type = buf[start]
            return payload
        # A whole header, not the whole frame: one larger than the buffer gets its own.
        length = buf[start + 1] << 16 | buf[start + 2] << 8 | buf[start + 3]
        if HEADER_SIZE + length > len(buf):
            self._start_big(buf[start], length)
        return None

    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 at a frame boundary)."""
        if self._big is not None:
            return HEADER_SIZE + self._big_fill
        return self._end - self._start

    def _start_big(self, rpc_type: int, length: int) -> None:
        # The header said more than the chunk holds: give the frame a buffer of
        # its exact size and move what already arrived of it there. An
        # anonymous mmap, not a bytearray: its pages are committed only as
        # data arrives, so a bare 4-byte header cannot make us hold 16 MiB.
        big = mmap.mmap(-1, length)
        got = self._end - self._start - HEADER_SIZE
        big[:got] = self._mv[self._start + HEADER_SIZE : self._end]
        self._big, self._big_fill, self._big_type = big, got, rpc_type
        self._start = self._end = 0

    def _compact(self) -> None:
        tail = self._end - self._start
        self._buf[:tail] = self._mv[self._start : self._end]
        self._start, self._end = 0, tail

"""The frame decoder: split reads, several frames per read, large frames."""

from __future__ import annotations

import random

import pytest

from runner.proto import FrameDecoder, FrameTooLarge, RpcType, encode_frame
from runner.proto.frame import MAX_PAYLOAD, encode_header


def feed(decoder: FrameDecoder, data: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    """Deliver ``data`` in reads of the given sizes (as a socket would)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    size_iter = iter(sizes)
    while pos < len(data):
        buf = decoder.get_buffer()
        n = min(len(buf), next(size_iter, len(data)), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        decoder.advance(n)
        while (frame := decoder.next_frame()) is not None:
            out.append((frame[0], bytes(frame[1])))
    return out


def test_header_layout() -> None:
    assert encode_header(2, 0x010203) == b"\x02\x01\x02\x03"
    assert encode_frame(RpcType.PREPARE_CONF, b"ab") == b"\x01\x00\x00\x02ab"


def test_too_large_payload_is_refused() -> None:
    encode_header(1, MAX_PAYLOAD)
    with pytest.raises(FrameTooLarge, match="16777215"):
        encode_header(1, MAX_PAYLOAD + 1)


def test_several_frames_in_one_read() -> None:
    frames = [(1, b"a" * 10), (2, b""), (4, b"xyz")]
    data = b"".join(encode_frame(t, p) for t, p in frames)
    assert feed(FrameDecoder(), data, [len(data)]) == frames


def test_frames_split_byte_by_byte() -> None:
    frames = [(2, bytes(range(200))), (3, b"q")]
    data = b"".join(encode_frame(t, p) for t, p in frames)
    assert feed(FrameDecoder(chunk=64), data, [1] * len(data)) == frames


@pytest.mark.parametrize("size", [0, 1, 4091, 4092, 65532, 65533, 1 << 20, 15 << 20])
def test_large_frames_arrive_whole(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    data = encode_frame(2, payload) + encode_frame(1, b"next")
    sizes = [3, 7000, 65536, 100, 1 << 16] * 400
    assert feed(FrameDecoder(), data, sizes) == [(2, payload), (1, b"next")]


def test_small_frames_are_views_of_the_buffer() -> None:
    decoder = FrameDecoder()
    data = encode_frame(2, b"hello")
    buf = decoder.get_buffer()
    buf[: len(data)] = data
    decoder.advance(len(data))
    frame = decoder.next_frame()
    assert frame is not None
    assert frame[1].obj is decoder.get_buffer().obj  # no copy was made


def test_kept_frame_survives_later_reads() -> None:
    for size in (10, 10_000):
        decoder = FrameDecoder(chunk=32 * 1024)
        first = encode_frame(2, b"A" * size)
        buf = decoder.get_buffer()
        buf[: len(first)] = first
        decoder.advance(len(first))
        frame = decoder.next_frame()
        assert frame is not None
        kept = decoder.keep(frame[1])
        later = encode_frame(3, b"B" * size)
        assert feed(decoder, later, [len(later)]) == [(3, b"B" * size)]
        assert bytes(kept) == b"A" * size


def test_pending_reports_partial_frames() -> None:
    decoder = FrameDecoder()
    assert decoder.pending() == 0
    feed(decoder, b"\x02\x00\x00\x05ab", [6])
    assert decoder.pending() == 6

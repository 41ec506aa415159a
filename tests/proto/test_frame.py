"""The frame decoder: split reads, several frames per read, large frames."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runner.proto import FrameDecoder, FrameTooLarge, ReqCallView, RpcType, encode_frame
from runner.proto.frame import MAX_PAYLOAD, encode_header
from runner.testing import HTTPRequest
from runner.testing.frames import build_req_call


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


def test_small_frames_are_copied_once_out_of_the_buffer() -> None:
    # Every message view needs a copy of its own (it outlives the buffer),
    # so the decoder makes that one copy: the payload is bytes, and later
    # reads into the buffer do not change it.
    decoder = FrameDecoder()
    data = encode_frame(2, b"hello")
    buf = decoder.get_buffer()
    buf[: len(data)] = data
    decoder.advance(len(data))
    frame = decoder.next_frame()
    assert frame is not None and type(frame[1]) is bytes
    decoder.get_buffer()[: len(data)] = b"\0" * len(data)
    assert frame == (2, b"hello")


def test_a_message_view_outlives_the_read_buffer() -> None:
    # An async call reads its request after later frames reused the buffer.
    request = HTTPRequest(path="/first", headers=[("x-a", "1")])
    for chunk in (32 * 1024, 64):  # the frame inside the chunk, and in a buffer of its own
        decoder = FrameDecoder(chunk=chunk)
        first = encode_frame(2, build_req_call(7, request))
        frames: list[ReqCallView] = []
        for start in range(0, len(first), 16):
            part = first[start : start + 16]
            decoder.get_buffer()[: len(part)] = part
            decoder.advance(len(part))
            while (frame := decoder.next_frame()) is not None:
                frames.append(ReqCallView(frame[1]))
        (view,) = frames
        later = encode_frame(3, b"B" * 200)
        assert feed(decoder, later, [len(later)]) == [(3, b"B" * 200)]
        assert (view.conf_token, view.path, view.headers) == (7, "/first", [("x-a", "1")])


def test_pending_reports_partial_frames() -> None:
    decoder = FrameDecoder()
    assert decoder.pending() == 0
    feed(decoder, b"\x02\x00\x00\x05ab", [6])
    assert decoder.pending() == 6


def _cutters() -> list[object]:
    """The frame cutters this install has: the Python one always, the C one
    (runner/proto/_cutframe.c) where the compiled build installed it."""
    import importlib.util

    from runner.proto import frame

    found = [frame.cut_payload]
    if importlib.util.find_spec("runner.proto._cutframe") is not None:
        from runner.proto import _cutframe  # type: ignore[attr-defined]

        found.append(_cutframe.cut_payload)
    return found


def test_the_installed_frame_cutter_is_the_one_the_build_promises() -> None:
    from runner import hotpath
    from runner.proto import frame

    c_helper = frame._CUT is not frame.cut_payload
    assert c_helper == (hotpath.build() == "compiled")


@pytest.mark.parametrize("cut", _cutters())
def test_frame_cutters_cut_whole_frames_only(cut: object) -> None:
    rng = random.Random(7)
    buf = bytearray(256)
    for _ in range(2000):
        length = rng.randrange(0, 40)
        start = rng.randrange(0, 200)
        end = rng.randrange(start, min(256, start + 4 + length + 8) + 1)
        frame = bytes([rng.randrange(5)]) + length.to_bytes(3, "big") + rng.randbytes(length)
        buf[start : start + len(frame)] = frame[: 256 - start]
        whole = end - start >= 4 + length
        got = cut(buf, start, end)  # type: ignore[operator]
        assert got == (bytes(buf[start + 4 : start + 4 + length]) if whole else None)
        assert got is None or type(got) is bytes
    for bad in ((-1, 3), (5, 4), (0, 257)):
        with pytest.raises(IndexError):
            cut(buf, *bad)  # type: ignore[operator]


def _spare_cutter() -> tuple[Any, Any]:
    from runner.proto import frame

    if frame._NEW_SPARE is frame._no_spare:
        pytest.skip("the pure build copies every payload anew (no C cutter, no spares)")
    return frame._CUT, frame._NEW_SPARE


def _framed(payload: bytes) -> bytearray:
    return bytearray(b"\x02" + len(payload).to_bytes(3, "big") + payload)


def test_a_spare_payload_is_written_over_only_once_nothing_else_holds_it() -> None:
    # Checked with plain comparisons: pytest's rewritten asserts may keep
    # what they compared alive, which is what decides here.
    cut, new_spare = _spare_cutter()
    spare = new_spare()
    first = cut(_framed(b"a" * 600), 0, 604, spare)
    ok = first == b"a" * 600 and hash(first) == hash(b"a" * 600)
    held = first
    second = cut(_framed(b"b" * 500), 0, 504, spare)
    ok = ok and second is not held and held == b"a" * 600  # a new one; the held one unchanged
    del first, held
    third = cut(_framed(b"c" * 500), 0, 504, spare)
    ok = ok and third == b"c" * 500 and len(third) == 500
    spare_id = id(third)  # the spare now
    del second, third  # ... which nothing else holds any more
    small = cut(_framed(b"s" * 20), 0, 24, spare)  # a small object: the spare stays
    ok = ok and small == b"s" * 20
    shorter = cut(_framed(b"d" * 490), 0, 494, spare)
    reused = id(shorter) == spare_id  # written over, not allocated
    ok = ok and shorter == b"d" * 490 and hash(shorter) == hash(b"d" * 490)  # no stale hash
    del shorter
    longer = cut(_framed(b"e" * 700), 0, 704, spare)  # over the spare's room: a new one
    ok = ok and longer == b"e" * 700
    assert ok
    assert reused
    with pytest.raises(TypeError):
        cut(_framed(b"x"), 0, 5, object())


def test_payloads_kept_by_plugins_never_change_under_them() -> None:
    """Frames of random sizes cut one after another, some of their payloads
    kept (as a plugin keeping a request would): every kept one still holds
    its own bytes at the end."""
    cut, new_spare = _spare_cutter()
    spare = new_spare()
    rng = random.Random(11)
    kept: list[tuple[bytes, bytes]] = []
    for _ in range(3000):
        payload = rng.randbytes(rng.choice([0, 1, 2, rng.randrange(3, 5000)]))
        got = cut(_framed(payload), 0, 4 + len(payload), spare)
        assert got == payload and type(got) is bytes
        if rng.random() < 0.2:
            kept.append((got, payload))
        del got
    assert all(got == payload for got, payload in kept)
    assert all(hash(got) == hash(payload) for got, payload in kept)

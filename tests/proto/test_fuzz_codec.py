"""Property tests of the sans-IO codec (runner.proto), with hypothesis.

* Any byte stream into :class:`FrameDecoder`, cut into any reads, gives back
  exactly the frames a plain reference splitter finds, and never raises.
* Random bytes and mutated valid payloads (built with the flatc reference
  code in ``runner.testing``) fed to every message view raise nothing but
  :class:`DecodeError`, whatever field is read.
* Valid frames round-trip: requests built like APISIX builds them read back
  through the runner's views, and the runner's replies read back through the
  reference parsers.

The coverage-guided counterpart is the atheris target ``tests/fuzz/fuzz_codec.py``;
the last test here runs it for a few thousand inputs to prove it works.
Each property has a fixed ``max_examples``; the file takes about 5 s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.proto import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    DecodeError,
    ErrCode,
    ExtraInfoResp,
    FrameDecoder,
    FrameTooLarge,
    PrepareConfReq,
    ReqCallView,
    RespCallView,
    build_err,
    build_prepare_conf_resp,
    build_req_call_none,
    build_req_call_rewrite,
    build_req_call_stop,
    build_resp_call_resp,
    encode_frame,
)
from runner.proto.frame import encode_header
from runner.testing import HTTPRequest, Rewrite, Stop
from runner.testing import frames as testing
from runner.testing._a6.A6.Err.Resp import Resp as ErrResp
from runner.testing._a6.A6.PrepareConf.Resp import Resp as PrepareConfResp

FUZZ_TARGET = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_codec.py"

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- strategies

# Text the reference builder can encode (it uses surrogateescape; lone
# surrogates outside its range are not strings APISIX could send).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
u32 = st.integers(0, 0xFFFFFFFF)
entries = st.lists(st.tuples(text, text), max_size=5)
opt_entries = st.lists(st.tuples(text, st.none() | text), max_size=5)
ips = st.ip_addresses().map(str)

requests = st.builds(
    HTTPRequest,
    method=st.sampled_from(sorted(testing.METHODS)),
    path=text,
    args=opt_entries,
    headers=entries,
    src_ip=ips,
    id=u32,
)


@st.composite
def valid_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """(rpc type, payload) of a well-formed message APISIX could send."""
    kind = draw(st.sampled_from(["conf", "req", "resp", "extra"]))
    if kind == "conf":
        conf = draw(st.none() | entries)
        return testing.RPC_PREPARE_CONF, testing.build_prepare_conf(conf, draw(text))
    if kind == "req":
        return testing.RPC_HTTP_REQ_CALL, testing.build_req_call(draw(u32), draw(requests))
    if kind == "resp":
        payload = testing.build_resp_call(
            draw(u32), draw(u32), draw(st.integers(0, 0xFFFF)), draw(entries)
        )
        return testing.RPC_HTTP_RESP_CALL, payload
    result = draw(st.none() | st.binary(max_size=64))
    return testing.RPC_EXTRA_INFO, testing.build_extra_info_resp(result)


INTERESTING_U32 = [0, 1, 3, 4, 7, 8, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """A valid payload with a few bytes, words or its length changed."""
    rpc, payload = draw(valid_payloads())
    raw = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["byte", "u32", "u16", "truncate", "extend"]))
        if op == "truncate":
            del raw[draw(st.integers(0, len(raw))) :]
        elif op == "extend":
            raw += draw(st.binary(min_size=1, max_size=16))
        elif len(raw) >= 4:
            width = {"byte": 1, "u16": 2, "u32": 4}[op]
            pos = draw(st.integers(0, len(raw) - width))
            if op == "byte":
                raw[pos] = draw(st.integers(0, 255))
            elif op == "u16":
                struct.pack_into("<H", raw, pos, draw(st.sampled_from([0, 1, 3, 4, 0xFFFF])))
            else:
                value = draw(st.sampled_from(INTERESTING_U32) | st.just(len(raw)) | u32)
                struct.pack_into("<I", raw, pos, value)
    return rpc, bytes(raw)


# --------------------------------------------------------------------------- helpers


def decode_all(rpc: int, payload: bytes | memoryview) -> Any:
    """Every field a view of message type ``rpc`` offers."""
    view = memoryview(payload)
    if rpc == testing.RPC_PREPARE_CONF:
        conf_req = PrepareConfReq(view)
        return conf_req.key, conf_req.conf
    if rpc == testing.RPC_HTTP_REQ_CALL:
        req = ReqCallView(view)
        return (req.id, req.conf_token, req.src_ip, req.method, req.path, req.args, req.headers)
    if rpc == testing.RPC_HTTP_RESP_CALL:
        resp = RespCallView(view)
        return resp.id, resp.conf_token, resp.status, resp.headers
    return ExtraInfoResp(view).result


def decode_or_reject(rpc: int, payload: bytes | memoryview) -> None:
    """Only DecodeError may escape; anything else fails the property."""
    with contextlib.suppress(DecodeError):
        decode_all(rpc, payload)


def reference_split(stream: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Complete frames of ``stream`` and the number of bytes left over."""
    frames, pos = [], 0
    while len(stream) - pos >= HEADER_SIZE:
        length = int.from_bytes(stream[pos + 1 : pos + 4], "big")
        if len(stream) - pos - HEADER_SIZE < length:
            break
        frames.append((stream[pos], stream[pos + 4 : pos + 4 + length]))
        pos += HEADER_SIZE + length
    return frames, len(stream) - pos


def feed(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """Deliver ``stream`` in reads ending at ``cuts`` (each read also limited
    by the buffer the decoder offers), collecting frames as a transport does."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    for end in [*sorted(set(cuts)), len(stream)]:
        while pos < end:
            buf = decoder.get_buffer()
            assert len(buf) > 0
            n = min(len(buf), end - pos)
            buf[:n] = stream[pos : pos + n]
            decoder.advance(n)
            pos += n
            while (frame := decoder.next_frame()) is not None:
                rpc, view = frame
                out.append((rpc, bytes(view)))
    return out


# --------------------------------------------------------------------------- frame layer


@FAST
@given(
    stream=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    chunk=st.sampled_from([8, 16, 64, 4096]),
)
def test_decoder_splits_any_stream_like_the_reference(
    stream: bytes, cuts: list[int], chunk: int
) -> None:
    decoder = FrameDecoder(chunk=chunk)
    frames = feed(decoder, stream, [c for c in cuts if c <= len(stream)])
    expected, left = reference_split(stream)
    assert frames == expected
    assert decoder.pending() == left


@FAST
@given(
    frames=st.lists(
        st.tuples(st.integers(0, 255), st.binary(max_size=300)), min_size=1, max_size=6
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    chunk=st.sampled_from([8, 32, 256, 65536]),
)
def test_encoded_frames_round_trip_in_any_reads(
    frames: list[tuple[int, bytes]], cuts: list[int], chunk: int
) -> None:
    stream = b"".join(encode_frame(rpc, payload) for rpc, payload in frames)
    assert stream == b"".join(testing.encode_frame(rpc, payload) for rpc, payload in frames)
    decoder = FrameDecoder(chunk=chunk)
    assert feed(decoder, stream, [c for c in cuts if c <= len(stream)]) == frames
    assert decoder.pending() == 0


def test_header_cannot_carry_more_than_the_limit() -> None:
    assert encode_header(2, MAX_PAYLOAD)[1:] == b"\xff\xff\xff"
    with pytest.raises(FrameTooLarge):
        encode_header(2, MAX_PAYLOAD + 1)


# --------------------------------------------------------------------------- views: hostile input


@FAST
@given(rpc=st.sampled_from([1, 2, 3, 4]), payload=st.binary(max_size=256))
def test_random_bytes_raise_only_decode_error(rpc: int, payload: bytes) -> None:
    decode_or_reject(rpc, payload)


@settings(FAST, max_examples=400)
@given(mutated_payloads())
def test_mutated_valid_payloads_raise_only_decode_error(case: tuple[int, bytes]) -> None:
    rpc, payload = case
    decode_or_reject(rpc, payload)
    # The same bytes as any other message type, too.
    for other in (1, 2, 3, 4):
        decode_or_reject(other, payload)


@FAST
@given(mutated_payloads(), st.integers(0, 2000), st.sampled_from([16, 4096]))
def test_mutated_frames_through_the_decoder(case: tuple[int, bytes], cut: int, chunk: int) -> None:
    """The full path: frame layer, then the view, on a view of the decoder's buffer."""
    rpc, payload = case
    stream = encode_frame(rpc, payload) + encode_frame(rpc, payload[::-1])
    decoder = FrameDecoder(chunk=chunk)
    frames = feed(decoder, stream, [min(cut, len(stream))])
    assert [p for _, p in frames] == [payload, payload[::-1]]
    decoder = FrameDecoder(chunk=chunk)
    buf = decoder.get_buffer()
    if len(buf) >= len(stream):
        buf[: len(stream)] = stream
        decoder.advance(len(stream))
        while (frame := decoder.next_frame()) is not None:
            decode_or_reject(*frame)  # a memoryview into a larger bytearray


# --------------------------------------------------------------------------- views: round trips


@FAST
@given(conf=st.none() | entries, key=text)
def test_prepare_conf_round_trip(conf: list[tuple[str, str]] | None, key: str) -> None:
    req = PrepareConfReq(memoryview(testing.build_prepare_conf(conf, key)))
    assert req.key == key
    assert req.conf == (conf or [])


@FAST
@given(token=u32, request=requests)
def test_req_call_round_trip(token: int, request: HTTPRequest) -> None:
    view = ReqCallView(memoryview(testing.build_req_call(token, request)))
    view.validate()
    assert (view.id, view.conf_token) == (request.id, token)
    assert view.method == request.method
    assert view.path == request.path
    assert view.src_ip == ipaddress.ip_address(request.src_ip).packed
    assert view.args == request.args
    assert view.headers == request.headers


@FAST
@given(token=u32, req_id=u32, status=st.integers(0, 0xFFFF), headers=entries)
def test_resp_call_round_trip(
    token: int, req_id: int, status: int, headers: list[tuple[str, str]]
) -> None:
    view = RespCallView(memoryview(testing.build_resp_call(token, req_id, status, headers)))
    view.validate()
    assert (view.id, view.conf_token, view.status, view.headers) == (
        req_id,
        token,
        status,
        headers,
    )


@FAST
@given(result=st.none() | st.binary(max_size=300))
def test_extra_info_resp_round_trip(result: bytes | None) -> None:
    assert ExtraInfoResp(memoryview(testing.build_extra_info_resp(result))).result == result


def split_one(frame: bytes | bytearray) -> tuple[int, bytes]:
    decoder = FrameDecoder()
    frames = feed(decoder, bytes(frame), [])
    assert len(frames) == 1 and decoder.pending() == 0
    return frames[0]


@FAST
@given(
    req_id=u32,
    status=st.integers(0, 0xFFFF),
    headers=opt_entries,
    body=st.binary(max_size=200),
)
def test_stop_reply_round_trip(
    req_id: int, status: int, headers: list[tuple[str, str | None]], body: bytes
) -> None:
    rpc, payload = split_one(build_req_call_stop(req_id, status, headers, body))
    assert rpc == testing.RPC_HTTP_REQ_CALL
    result = testing.parse_req_call_resp(payload, [])
    assert result.id == req_id
    assert result.action == Stop(status=status, headers=headers, body=body)


@FAST
@given(
    req_id=u32,
    path=st.none() | text,
    headers=opt_entries,
    args=opt_entries,
    resp_headers=opt_entries,
    body=st.none() | st.binary(max_size=200),
)
def test_rewrite_reply_round_trip(
    req_id: int,
    path: str | None,
    headers: list[tuple[str, str | None]],
    args: list[tuple[str, str | None]],
    resp_headers: list[tuple[str, str | None]],
    body: bytes | None,
) -> None:
    rpc, payload = split_one(
        build_req_call_rewrite(req_id, path, headers, args, resp_headers, body)
    )
    assert rpc == testing.RPC_HTTP_REQ_CALL
    result = testing.parse_req_call_resp(payload, [])
    assert result.id == req_id
    # An empty body is "no body" on the wire (APISIX cannot tell them apart).
    assert result.action == Rewrite(path, headers, args, resp_headers, body or None)


@FAST
@given(
    req_id=u32,
    status=st.integers(0, 0xFFFF),
    headers=st.none() | opt_entries,
    body=st.none() | st.binary(max_size=200),
)
def test_resp_call_reply_round_trip(
    req_id: int, status: int, headers: list[tuple[str, str | None]] | None, body: bytes | None
) -> None:
    rpc, payload = split_one(build_resp_call_resp(req_id, status, headers, body))
    assert rpc == testing.RPC_HTTP_RESP_CALL
    result = testing.parse_resp_call_resp(payload, [])
    assert (result.id, result.status) == (req_id, status)
    assert result.headers == (headers or [])
    assert result.body == (body or None)


@FAST
@given(req_id=u32, token=u32, code=st.sampled_from(list(ErrCode)))
def test_small_replies_round_trip(req_id: int, token: int, code: ErrCode) -> None:
    rpc, payload = split_one(build_req_call_none(req_id))
    assert rpc == testing.RPC_HTTP_REQ_CALL
    result = testing.parse_req_call_resp(payload, [])
    assert (result.id, result.action) == (req_id, None)

    rpc, payload = split_one(build_prepare_conf_resp(token))
    assert rpc == testing.RPC_PREPARE_CONF
    assert PrepareConfResp.GetRootAs(payload, 0).ConfToken() == token

    rpc, payload = split_one(build_err(code))
    assert rpc == testing.RPC_ERROR
    assert ErrResp.GetRootAs(payload, 0).Code() == code


# --------------------------------------------------------------------------- atheris


def test_atheris_target_runs() -> None:
    """The coverage-guided target starts and survives a few thousand inputs."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(FUZZ_TARGET), "-runs=2000", "-seed=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Done 2000 runs" in output, output[-4000:]

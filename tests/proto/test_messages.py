"""Our hand-written codec against the flatc reference code (runner.testing._a6 via
runner.testing): requests built like APISIX builds them must read back
exactly, and our replies must parse with the reference readers."""

from __future__ import annotations

import pytest

from runner.proto import (
    DecodeError,
    ErrCode,
    ExtraInfoResp,
    InfoType,
    PrepareConfReq,
    ReqCallView,
    RespCallView,
    build_err,
    build_extra_info,
    build_prepare_conf_resp,
    build_req_call_none,
    build_req_call_rewrite,
    build_req_call_stop,
    build_resp_call_resp,
)
from runner.testing import HTTPRequest, Rewrite, Stop
from runner.testing import frames as testing


def test_prepare_conf_req_reads_conf_in_order_with_duplicates() -> None:
    payload = testing.build_prepare_conf([("foo", "bar"), ("cat", "dog"), ("foo", "x")], "k#1")
    req = PrepareConfReq(memoryview(payload))
    assert req.key == "k#1"
    assert req.conf == [("foo", "bar"), ("cat", "dog"), ("foo", "x")]


def test_prepare_conf_without_conf() -> None:
    req = PrepareConfReq(memoryview(testing.build_prepare_conf(None, "k")))
    assert req.conf == []


def test_req_call_view_reads_every_field() -> None:
    request = HTTPRequest(
        method="PUT",
        path="/hello",
        args=[("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)],
        headers=[("x-req", "a"), ("x-req", "b"), ("host", "localhost")],
        src_ip="::1",
        id=(3 << 22) + 5,
    )
    view = ReqCallView(memoryview(testing.build_req_call(233, request)))
    assert (view.id, view.conf_token, view.method, view.path) == (
        (3 << 22) + 5,
        233,
        "PUT",
        "/hello",
    )
    assert view.args == [("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)]
    assert view.headers == [("x-req", "a"), ("x-req", "b"), ("host", "localhost")]
    assert view.src_ip == b"\0" * 15 + b"\1"


def test_req_call_defaults_are_absent_fields() -> None:
    view = ReqCallView(memoryview(testing.build_req_call(0, HTTPRequest())))
    assert (view.id, view.conf_token, view.method, view.path) == (0, 0, "GET", "/")


def test_resp_call_view() -> None:
    payload = testing.build_resp_call(7, 9, 502, [("Content-Type", "text/html"), ("A", "1")])
    view = RespCallView(memoryview(payload))
    assert (view.id, view.conf_token, view.status) == (9, 7, 502)
    assert view.headers == [("Content-Type", "text/html"), ("A", "1")]


def parse_req_reply(frame: bytes | bytearray) -> testing.ReqCallResult:
    assert frame[0] == 2 and int.from_bytes(frame[1:4], "big") == len(frame) - 4
    return testing.parse_req_call_resp(bytes(frame[4:]), [])


def test_stop_reply() -> None:
    frame = build_req_call_stop(42, 405, [("X-Same", "one"), ("X-Same", "two")], b"cat\0\xff")
    result = parse_req_reply(frame)
    assert result.id == 42
    assert result.action == Stop(405, [("X-Same", "one"), ("X-Same", "two")], b"cat\0\xff")


# Bodies up to 4 KiB are written into the reply's buffer, larger ones joined
# to it at the end: both sides of that line, with headers before the body.
BODIES = [b"", b"x", b"four", b"\0" * 1000, b"b" * 4096, b"c" * 4097, bytes(range(256)) * 400]


@pytest.mark.parametrize("body", BODIES)
def test_stop_reply_without_headers(body: bytes) -> None:
    result = parse_req_reply(build_req_call_stop((1 << 32) - 1, 200, [], body))
    assert result.id == (1 << 32) - 1
    assert result.action == Stop(200, [], body)


@pytest.mark.parametrize("body", BODIES)
def test_stop_and_rewrite_replies_carry_any_body(body: bytes) -> None:
    headers = [("x-a", "1"), ("x-gone", None)]
    assert parse_req_reply(build_req_call_stop(7, 403, headers, body)).action == Stop(
        403, headers, body
    )
    frame = build_req_call_rewrite(7, "/p", headers, [("q", "v")], [], body)
    assert parse_req_reply(frame).action == Rewrite("/p", headers, [("q", "v")], [], body or None)
    resp = testing.parse_resp_call_resp(bytes(build_resp_call_resp(7, 201, headers, body)[4:]), [])
    assert (resp.status, resp.headers, resp.body) == (201, headers, body or None)


@pytest.mark.parametrize("status", [-1, 65536, 1 << 40])
def test_a_status_outside_u16_is_refused_not_wrapped(status: int) -> None:
    with pytest.raises(ValueError):
        build_req_call_stop(1, status, [], b"")
    with pytest.raises(ValueError):
        build_resp_call_resp(1, status, None, None)


def test_none_reply() -> None:
    result = parse_req_reply(build_req_call_none(0))
    assert (result.id, result.action) == (0, None)


def test_rewrite_reply_leaves_out_unchanged_parts() -> None:
    frame = build_req_call_rewrite(1, None, [], [("a", "1"), ("d", None)], [], None)
    assert parse_req_reply(frame).action == Rewrite(None, [], [("a", "1"), ("d", None)], [], None)


def test_rewrite_reply_with_everything() -> None:
    frame = build_req_call_rewrite(
        1,
        "/uri",
        [("x-change", "v"), ("x-delete", None)],
        [("a", "b")],
        [("X-Resp", "r")],
        b"abc\n",
    )
    assert parse_req_reply(frame).action == Rewrite(
        "/uri", [("x-change", "v"), ("x-delete", None)], [("a", "b")], [("X-Resp", "r")], b"abc\n"
    )


@pytest.mark.parametrize("body", [None, b"new body"])
def test_resp_call_reply(body: bytes | None) -> None:
    frame = build_resp_call_resp(3, 304, [("A", "1"), ("A", "2")], body)
    assert frame[0] == 4
    result = testing.parse_resp_call_resp(bytes(frame[4:]), [])
    assert (result.id, result.status, result.headers, result.body) == (
        3, 304, [("A", "1"), ("A", "2")], body
    )  # fmt: skip


def test_extra_info_requests() -> None:
    assert testing.parse_extra_info_req(bytes(build_extra_info(InfoType.VAR, "route_id")[4:])) == (
        "var",
        "route_id",
    )
    assert testing.parse_extra_info_req(bytes(build_extra_info(InfoType.REQ_BODY)[4:]))[0] == (
        "req_body"
    )
    assert testing.parse_extra_info_req(bytes(build_extra_info(InfoType.RESP_BODY)[4:]))[0] == (
        "resp_body"
    )


def test_extra_info_resp() -> None:
    assert ExtraInfoResp(memoryview(testing.build_extra_info_resp(b"\0\1"))).result == b"\0\1"
    assert ExtraInfoResp(memoryview(testing.build_extra_info_resp(None))).result is None


@pytest.mark.parametrize("size", [4000, 4096, 4097, 100_000])
def test_extra_info_resp_on_both_sides_of_the_copy_threshold(size: int) -> None:
    # Answers up to 4 KiB are copied and read as bytes, larger ones in place.
    result = bytes(range(256)) * (size // 256) + b"\xff" * (size % 256)
    assert ExtraInfoResp(memoryview(testing.build_extra_info_resp(result))).result == result
    truncated = memoryview(testing.build_extra_info_resp(result))[:-16]  # past any padding
    with pytest.raises(DecodeError):
        ExtraInfoResp(truncated)


def test_err_and_prepare_replies() -> None:
    for code in ErrCode:
        frame = build_err(code)
        assert frame[0] == 0
        assert testing.parse_err(frame[4:]).code == code
    frame = build_prepare_conf_resp(0xFFFFFFFF)
    assert frame[0] == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00" * 7,
        b"\xff\xff\xff\x7f" + b"\0" * 8,  # root offset far outside
        b"\x08\x00\x00\x00" + b"\0" * 4 + b"\x00\x00\x00\x80",  # vtable at a negative offset
        b"\x08\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00",  # odd vtable size
    ],
)
def test_malformed_payloads_raise_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        ReqCallView(memoryview(payload)).validate()


def test_vector_longer_than_buffer_raises() -> None:
    good = bytearray(testing.build_req_call(1, HTTPRequest(headers=[("a", "b")])))
    view = ReqCallView(memoryview(bytes(good)))
    view.validate()
    # Find the headers vector count (1) and claim a million entries.
    start, _count = view._t._vector(5, 4)
    good[start - 4 : start] = (1_000_000).to_bytes(4, "little")
    with pytest.raises(DecodeError, match="overruns"):
        ReqCallView(memoryview(bytes(good))).headers  # noqa: B018


def test_bytes_that_are_not_utf8_pass_through_unchanged() -> None:
    # HTTP allows obs-text in header values (a Latin-1 cookie) and any byte in
    # a percent-decoded path: they are decoded losslessly and written back as
    # the very bytes received, never refused as malformed.
    raw = bytearray(
        testing.build_req_call(1, HTTPRequest(path="/abc", headers=[("cookie", "caf-x")]))
    )
    raw[raw.index(b"/abc") + 1] = 0xFF
    raw[raw.index(b"caf-x") + 3] = 0xE9
    view = ReqCallView(memoryview(bytes(raw)))
    assert view.path == "/\udcffbc"
    assert view.headers == [("cookie", "caf\udce9x")]
    frame = build_req_call_rewrite(1, view.path + "/x", view.headers, [], [], None)
    rewrite = testing.parse_req_call_resp(bytes(frame[4:]), []).action
    assert isinstance(rewrite, testing.Rewrite)
    assert b"/\xffbc/x" in frame and b"caf\xe9x" in frame

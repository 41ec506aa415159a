"""Codec micro-benchmarks: runner.proto against the flatc-generated code.

Each group times one job done two ways, ``runner`` (runner.proto: a lazy,
bounds-checked reader and template-based builders) and ``flatc`` (the
generated code in runner/_a6 with ``flatbuffers.Builder``, see baseline.py);
pytest-benchmark prints the ratio between them. Before timing, every test
checks that both produce the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.micro import baseline
from runner.proto import (
    ErrCode,
    ExtraInfoResp,
    FrameDecoder,
    InfoType,
    ReqCallView,
    build_err,
    build_extra_info,
    build_req_call_none,
    build_req_call_rewrite,
    build_req_call_stop,
    build_resp_call_resp,
)
from runner.testing import frames as testing

IMPLS = ["runner", "flatc"]
REQ_ID = 0x00400001
STOP_HEADERS = [("content-type", "application/json"), ("x-reason", "blocked")]
STOP_BODY = b'{"error":"forbidden"}'
RW_HEADERS: list[tuple[str, str | None]] = [
    ("x-request-path", "/api/v1/users/12345/orders"),
    ("x-runner-request", "r-4194305"),
]
RW_ARGS: list[tuple[str, str | None]] = [("rid", "4194305")]
RESP_HEADERS: list[tuple[str, str | None]] = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("x-served-by", "python"),
]

Bench = Any  # pytest-benchmark's fixture (no type stubs)


def pick(impl: str, runner: Callable[[], Any], flatc: Callable[[], Any]) -> Callable[[], Any]:
    return runner if impl == "runner" else flatc


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("impl", IMPLS)
def test_frame_decode(benchmark: Bench, impl: str, call_frame: bytes) -> None:
    """One HTTPReqCall frame arrives in one read and is cut out of the stream."""
    benchmark.group = "frame decode (1 read, 1 frame)"
    decoder = FrameDecoder()
    naive = baseline.NaiveFrameReader()
    size = len(call_frame)

    def ours() -> tuple[int, bytes | memoryview] | None:
        buf = decoder.get_buffer()
        buf[:size] = call_frame  # what the kernel does in recv_into
        decoder.advance(size)
        return decoder.next_frame()

    def theirs() -> list[tuple[int, bytes]]:
        return naive.feed(call_frame)

    got = ours()
    assert got is not None and (got[0], bytes(got[1])) == theirs()[0]
    benchmark(pick(impl, ours, theirs))


@pytest.mark.parametrize("impl", IMPLS)
def test_view_id_token(benchmark: Bench, impl: str, payload: bytes) -> None:
    """What every call reads: the request id and the conf token."""
    benchmark.group = "HTTPReqCall: id + conf token"
    mv = memoryview(payload)

    def ours() -> tuple[int, int]:
        view = ReqCallView(mv)
        return view.id, view.conf_token

    def theirs() -> tuple[int, int]:
        return baseline.read_id_token(payload)

    assert ours() == theirs()
    benchmark(pick(impl, ours, theirs))


@pytest.mark.parametrize("impl", IMPLS)
def test_view_all_fields(benchmark: Bench, impl: str, payload: bytes) -> None:
    """id, token, method, path, the 10 headers and the 3 args."""
    benchmark.group = "HTTPReqCall: id, token, method, path, 10 headers, 3 args"
    mv = memoryview(payload)

    def ours() -> tuple[Any, ...]:
        v = ReqCallView(mv)
        return v.id, v.conf_token, v.method, v.path, v.headers, v.args

    def theirs() -> tuple[Any, ...]:
        return baseline.read_fields(payload)

    assert ours() == theirs()
    benchmark(pick(impl, ours, theirs))


@pytest.mark.parametrize("impl", IMPLS)
def test_view_path(benchmark: Bench, impl: str, payload: bytes) -> None:
    """A plugin that routes on the path: id, token and path only."""
    benchmark.group = "HTTPReqCall: id, token, path"
    mv = memoryview(payload)

    def ours() -> tuple[int, int, str]:
        v = ReqCallView(mv)
        return v.id, v.conf_token, v.path

    def theirs() -> tuple[int, int, str]:
        return baseline.read_id_token_path(payload)

    assert ours() == theirs()
    benchmark(pick(impl, ours, theirs))


@pytest.mark.parametrize("impl", IMPLS)
def test_extra_info_resp(benchmark: Bench, impl: str) -> None:
    """APISIX's answer to an ExtraInfo question (a var's value)."""
    benchmark.group = "ExtraInfo.Resp: read the result"
    payload = testing.build_extra_info_resp(b"192.0.2.17")
    mv = memoryview(payload)

    def ours() -> bytes | None:
        return ExtraInfoResp(mv).result

    def theirs() -> bytes | None:
        return baseline.read_extra_info_result(payload)

    assert ours() == theirs() == b"192.0.2.17"
    benchmark(pick(impl, ours, theirs))


# --------------------------------------------------------------------------- replies


def same_reply(ours: bytes | bytearray, theirs: bytes) -> None:
    """Both frames carry the same message (the bytes may be laid out differently)."""
    assert ours[0] == theirs[0]
    assert int.from_bytes(ours[1:4], "big") == len(ours) - 4
    a: object
    b: object
    if ours[0] == 2:
        a = testing.parse_req_call_resp(bytes(ours[4:]), [])
        b = testing.parse_req_call_resp(theirs[4:], [])
    elif ours[0] == 4:
        a = testing.parse_resp_call_resp(bytes(ours[4:]), [])
        b = testing.parse_resp_call_resp(theirs[4:], [])
    elif ours[0] == 3:
        a = testing.parse_extra_info_req(bytes(ours[4:]))
        b = testing.parse_extra_info_req(theirs[4:])
    else:
        a = testing.parse_err(bytes(ours[4:])).code
        b = testing.parse_err(theirs[4:]).code
    assert a == b


REPLIES: dict[str, tuple[Callable[[], bytes | bytearray], Callable[[], bytes]]] = {
    "stop (2 headers, body)": (
        lambda: build_req_call_stop(REQ_ID, 403, STOP_HEADERS, STOP_BODY),
        lambda: baseline.build_stop(REQ_ID, 403, STOP_HEADERS, STOP_BODY),
    ),
    "stop (body only)": (
        lambda: build_req_call_stop(REQ_ID, 200, [], b"hello"),
        lambda: baseline.build_stop(REQ_ID, 200, [], b"hello"),
    ),
    "none": (lambda: build_req_call_none(REQ_ID), lambda: baseline.build_none(REQ_ID)),
    "rewrite (2 headers, 1 arg)": (
        lambda: build_req_call_rewrite(REQ_ID, None, RW_HEADERS, RW_ARGS, [], None),
        lambda: baseline.build_rewrite(REQ_ID, None, RW_HEADERS, RW_ARGS, [], None),
    ),
    "rewrite (path, headers, args, resp headers, body)": (
        lambda: build_req_call_rewrite(
            REQ_ID, "/v2/orders", RW_HEADERS, RW_ARGS, RESP_HEADERS[2:], b"{}"
        ),
        lambda: baseline.build_rewrite(
            REQ_ID, "/v2/orders", RW_HEADERS, RW_ARGS, RESP_HEADERS[2:], b"{}"
        ),
    ),
    "resp-call (3 headers, body)": (
        lambda: build_resp_call_resp(REQ_ID, 200, RESP_HEADERS, b"replaced"),
        lambda: baseline.build_resp_call(REQ_ID, 200, RESP_HEADERS, b"replaced"),
    ),
    "extra-info (var)": (
        lambda: build_extra_info(InfoType.VAR, "remote_addr"),
        lambda: baseline.build_extra_info_var("remote_addr"),
    ),
    "err": (
        lambda: build_err(ErrCode.CONF_TOKEN_NOT_FOUND),
        lambda: baseline.build_err(ErrCode.CONF_TOKEN_NOT_FOUND),
    ),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reply", list(REPLIES))
def test_reply(benchmark: Bench, reply: str, impl: str) -> None:
    benchmark.group = f"reply: {reply}"
    ours, theirs = REPLIES[reply]
    same_reply(ours(), theirs())
    benchmark(pick(impl, ours, theirs))

"""Unit tests of the APISIX-like test client (runner.testing); no real runner needed.

The fake runner here answers with the flatc-generated code directly, so these tests
check the client against the reference encoding, not against our own codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import flatbuffers
import pytest

from runner.testing import (
    MAX_PAYLOAD,
    Client,
    HTTPRequest,
    ProtocolError,
    Rewrite,
    RunnerError,
    Stop,
    apply_rewrite,
    build_prepare_conf,
    build_req_call,
    build_resp_call,
    encode_frame,
    text_vector,
)
from runner.testing._a6.A6.Err import Resp as ErrResp
from runner.testing._a6.A6.ExtraInfo import Req as ExtraInfoReq
from runner.testing._a6.A6.ExtraInfo import ReqBody as ReqBodyMod
from runner.testing._a6.A6.ExtraInfo import Resp as ExtraInfoResp
from runner.testing._a6.A6.ExtraInfo import RespBody as RespBodyMod
from runner.testing._a6.A6.ExtraInfo import Var as VarMod
from runner.testing._a6.A6.ExtraInfo.Info import Info
from runner.testing._a6.A6.HTTPReqCall import Req as ReqCallReq
from runner.testing._a6.A6.HTTPReqCall import Resp as ReqCallResp
from runner.testing._a6.A6.HTTPReqCall import Rewrite as RewriteMod
from runner.testing._a6.A6.HTTPReqCall import Stop as StopMod
from runner.testing._a6.A6.HTTPReqCall.Action import Action
from runner.testing._a6.A6.HTTPRespCall import Req as RespCallReq
from runner.testing._a6.A6.HTTPRespCall import Resp as RespCallResp
from runner.testing._a6.A6.PrepareConf import Req as PrepareConfReq
from runner.testing._a6.A6.PrepareConf import Resp as PrepareConfResp

# ----------------------------------------------------------------- runner-side helpers

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]


async def read_frame(reader: Reader) -> tuple[int, bytes]:
    header = await reader.readexactly(4)
    return header[0], await reader.readexactly(int.from_bytes(header[1:], "big"))


async def write_frame(writer: Writer, rpc_type: int, payload: bytes) -> None:
    writer.write(encode_frame(rpc_type, payload))
    await writer.drain()


def entries(length: Any, get: Any) -> list[tuple[bytes, bytes | None]]:
    return [(get(i).Name(), get(i).Value()) for i in range(length())]


def finish(b: Any, root: Any) -> bytes:
    b.Finish(root)
    return bytes(b.Output())


def conf_resp(token: int) -> bytes:
    b = flatbuffers.Builder(64)
    PrepareConfResp.Start(b)
    PrepareConfResp.AddConfToken(b, token)
    return finish(b, PrepareConfResp.End(b))


def err_resp(code: int) -> bytes:
    b = flatbuffers.Builder(64)
    ErrResp.Start(b)
    ErrResp.AddCode(b, code)
    return finish(b, ErrResp.End(b))


def extra_info_req(info_type: int, var: str | None = None) -> bytes:
    b = flatbuffers.Builder(64)
    if info_type == Info.Var:
        name = b.CreateString(var)
        VarMod.Start(b)
        VarMod.AddName(b, name)
        info = VarMod.End(b)
    elif info_type == Info.ReqBody:
        ReqBodyMod.Start(b)
        info = ReqBodyMod.End(b)
    else:
        RespBodyMod.Start(b)
        info = RespBodyMod.End(b)
    ExtraInfoReq.Start(b)
    ExtraInfoReq.AddInfoType(b, info_type)
    ExtraInfoReq.AddInfo(b, info)
    return finish(b, ExtraInfoReq.End(b))


def extra_info_result(payload: bytes) -> bytes | None:
    resp = ExtraInfoResp.Resp.GetRootAs(payload, 0)
    if resp.ResultIsNone():
        return None
    return bytes(resp.Result(i) for i in range(resp.ResultLength()))


def stop_resp(
    id: int, status: int, headers: list[tuple[str, str | None]], body: bytes | None
) -> bytes:
    b = flatbuffers.Builder(1024)
    hv = text_vector(b, headers, StopMod.StartHeadersVector)
    bv = None if body is None else b.CreateByteVector(body)
    StopMod.Start(b)
    StopMod.AddStatus(b, status)
    StopMod.AddHeaders(b, hv)
    if bv is not None:
        StopMod.AddBody(b, bv)
    stop = StopMod.End(b)
    ReqCallResp.Start(b)
    ReqCallResp.AddId(b, id)
    ReqCallResp.AddActionType(b, Action.Stop)
    ReqCallResp.AddAction(b, stop)
    return finish(b, ReqCallResp.End(b))


def rewrite_resp(
    id: int,
    path: str,
    headers: list[tuple[str, str | None]],
    args: list[tuple[str, str | None]],
    body: bytes,
) -> bytes:
    b = flatbuffers.Builder(1024)
    p = b.CreateString(path)
    hv = text_vector(b, headers, RewriteMod.StartHeadersVector)
    av = text_vector(b, args, RewriteMod.StartArgsVector)
    bv = b.CreateByteVector(body)
    RewriteMod.Start(b)
    RewriteMod.AddPath(b, p)
    RewriteMod.AddHeaders(b, hv)
    RewriteMod.AddArgs(b, av)
    RewriteMod.AddBody(b, bv)
    rw = RewriteMod.End(b)
    ReqCallResp.Start(b)
    ReqCallResp.AddId(b, id)
    ReqCallResp.AddActionType(b, Action.Rewrite)
    ReqCallResp.AddAction(b, rw)
    return finish(b, ReqCallResp.End(b))


def no_action_resp(id: int) -> bytes:
    b = flatbuffers.Builder(64)
    ReqCallResp.Start(b)
    ReqCallResp.AddId(b, id)
    return finish(b, ReqCallResp.End(b))


def resp_call_resp(
    id: int, status: int, headers: list[tuple[str, str | None]], body: bytes | None
) -> bytes:
    b = flatbuffers.Builder(1024)
    hv = text_vector(b, headers, RespCallResp.StartHeadersVector)
    bv = None if body is None else b.CreateByteVector(body)
    RespCallResp.Start(b)
    RespCallResp.AddId(b, id)
    RespCallResp.AddStatus(b, status)
    RespCallResp.AddHeaders(b, hv)
    if bv is not None:
        RespCallResp.AddBody(b, bv)
    return finish(b, RespCallResp.End(b))


@contextlib.asynccontextmanager
async def fake_runner(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on a short Unix socket path; yields the path."""
    tmp = tempfile.mkdtemp(prefix="tc-", dir="/tmp")
    path = f"{tmp}/f.sock"
    errors: list[BaseException] = []

    async def wrapped(reader: Reader, writer: Writer) -> None:
        try:
            await handler(reader, writer)
        except asyncio.IncompleteReadError:
            pass  # the client went away
        except Exception as e:  # re-raised when the fake runner is closed
            errors.append(e)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(wrapped, path)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)
        shutil.rmtree(tmp, ignore_errors=True)
        if errors:  # a failed check in the handler beats the client's symptom
            raise errors[0]


# ----------------------------------------------------------------- framing and builders


def test_encode_frame() -> None:
    assert encode_frame(2, b"abc") == b"\x02\x00\x00\x03abc"
    assert encode_frame(1, b"x" * 0x010203)[:4] == b"\x01\x01\x02\x03"
    assert encode_frame(4, b"")[:4] == b"\x04\x00\x00\x00"
    assert encode_frame(3, bytes(MAX_PAYLOAD))[:4] == b"\x03\xff\xff\xff"
    with pytest.raises(ValueError, match="16777215"):
        encode_frame(2, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode_frame(256, b"")


def test_build_req_call_ipv4_parses_back() -> None:
    req = HTTPRequest(
        method="PUT",
        path="/hello",
        args=[("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)],
        headers=[("host", "localhost"), ("x-req", "foo"), ("x-req", "bar")],
        src_ip="127.0.0.1",
        id=42,
    )
    r = ReqCallReq.Req.GetRootAs(build_req_call(233, req), 0)
    assert r.Id() == 42
    assert r.ConfToken() == 233
    assert r.Method() == 3
    assert r.Path() == b"/hello"
    assert r.SrcIpLength() == 4
    assert bytes(r.SrcIp(i) for i in range(4)) == b"\x7f\x00\x00\x01"
    assert entries(r.ArgsLength, r.Args) == [
        (b"xx", b"y"),
        (b"xx", b"z"),
        (b"y", b""),
        (b"z", None),
    ]
    assert entries(r.HeadersLength, r.Headers) == [
        (b"host", b"localhost"),
        (b"x-req", b"foo"),
        (b"x-req", b"bar"),
    ]


def test_build_req_call_ipv6_and_defaults_omitted() -> None:
    r = ReqCallReq.Req.GetRootAs(build_req_call(1, HTTPRequest(src_ip="::1")), 0)
    assert r.SrcIpLength() == 16
    assert bytes(r.SrcIp(i) for i in range(16)) == b"\x00" * 15 + b"\x01"
    # id 0 and method GET equal the defaults: APISIX's builder leaves them out.
    assert r._tab.Offset(4) == 0
    assert r._tab.Offset(8) == 0
    assert r.Id() == 0 and r.Method() == 0
    # args and headers are always sent, even empty.
    assert not r.ArgsIsNone() and r.ArgsLength() == 0
    assert not r.HeadersIsNone() and r.HeadersLength() == 0


def test_build_req_call_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="CONNECT"):
        build_req_call(1, HTTPRequest(method="CONNECT"))


def test_build_prepare_conf() -> None:
    r = PrepareConfReq.Req.GetRootAs(
        build_prepare_conf([("foo", "bar"), ("cat", "dog")], "route#1#ext-plugin-pre-req#7"), 0
    )
    assert entries(r.ConfLength, r.Conf) == [(b"foo", b"bar"), (b"cat", b"dog")]
    assert r.Key() == b"route#1#ext-plugin-pre-req#7"
    r = PrepareConfReq.Req.GetRootAs(build_prepare_conf(None), 0)
    assert r.ConfIsNone()
    assert r.Key() == b"route#1#ext-plugin-pre-req#1"


def test_build_resp_call() -> None:
    payload = build_resp_call(9, 5, 200, [("Content-Type", "text/plain"), ("X-A", "1")])
    r = RespCallReq.Req.GetRootAs(payload, 0)
    assert (r.ConfToken(), r.Id(), r.Status()) == (9, 5, 200)
    assert entries(r.HeadersLength, r.Headers) == [(b"Content-Type", b"text/plain"), (b"X-A", b"1")]


# ----------------------------------------------------------------- client vs fake runner


def test_call_with_extra_info_round_trip() -> None:
    seen: dict[str, Any] = {}

    async def handler(reader: Reader, writer: Writer) -> None:
        t, p = await read_frame(reader)
        assert t == 1
        conf = PrepareConfReq.Req.GetRootAs(p, 0)
        seen["conf"] = entries(conf.ConfLength, conf.Conf)
        await write_frame(writer, 1, conf_resp(7))

        t, p = await read_frame(reader)
        assert t == 2
        req = ReqCallReq.Req.GetRootAs(p, 0)
        seen["token"], seen["id"] = req.ConfToken(), req.Id()
        results = []
        for info in (
            extra_info_req(Info.Var, "remote_addr"),
            extra_info_req(Info.Var, "no_such_var"),
            extra_info_req(Info.ReqBody),
            extra_info_req(Info.RespBody),
        ):
            await write_frame(writer, 3, info)
            t, p = await read_frame(reader)
            assert t == 3
            results.append(extra_info_result(p))
        seen["results"] = results
        await write_frame(
            writer,
            2,
            rewrite_resp(req.Id(), "/new", [("X-Add", "1"), ("x-del", None)], [("a", None)], b"nb"),
        )

    async def scenario() -> None:
        async with fake_runner(handler) as path, await Client.connect(path) as client:
            token = await client.prepare_conf([("demo", '{"a": 1}')])
            assert token == 7
            result = await client.call(
                token, HTTPRequest(id=11, vars={"remote_addr": "10.0.0.9"}, body=None)
            )
        assert result.id == 11
        assert result.extra_info == [
            ("var", "remote_addr"),
            ("var", "no_such_var"),
            ("req_body", None),
            ("resp_body", None),
        ]
        assert result.action == Rewrite(
            path="/new",
            headers=[("X-Add", "1"), ("x-del", None)],
            args=[("a", None)],
            resp_headers=[],
            body=b"nb",
        )

    asyncio.run(scenario())
    assert seen["conf"] == [(b"demo", b'{"a": 1}')]
    assert (seen["token"], seen["id"]) == (7, 11)
    # unknown var, absent body and RespBody inside a request call: no result.
    assert seen["results"] == [b"10.0.0.9", None, None, None]


def test_err_frame_raises_runner_error_and_connection_survives() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_frame(reader)
        await write_frame(writer, 0, err_resp(2))
        await read_frame(reader)
        b = flatbuffers.Builder(16)
        ErrResp.Start(b)  # BAD_REQUEST == default: empty vtable slot
        await write_frame(writer, 0, finish(b, ErrResp.End(b)))
        await read_frame(reader)
        await write_frame(writer, 2, no_action_resp(3))

    async def scenario() -> None:
        async with fake_runner(handler) as path, await Client.connect(path) as client:
            with pytest.raises(RunnerError) as exc:
                await client.call(99, HTTPRequest())
            assert exc.value.code == 2
            assert "CONF_TOKEN_NOT_FOUND" in str(exc.value)
            with pytest.raises(RunnerError) as exc:
                await client.prepare_conf(None)
            assert exc.value.code == 0
            assert "BAD_REQUEST" in str(exc.value)
            result = await client.call(1, HTTPRequest(id=3))
            assert result.action is None and result.id == 3

    asyncio.run(scenario())


def test_large_stop_body_and_resp_call() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: arrives in many reads
    seen: dict[str, Any] = {}

    async def handler(reader: Reader, writer: Writer) -> None:
        await read_frame(reader)
        await write_frame(writer, 2, stop_resp(0, 403, [("x-a", "1"), ("x-a", "2")], big))
        t, p = await read_frame(reader)
        assert t == 4
        req = RespCallReq.Req.GetRootAs(p, 0)
        seen["status"] = req.Status()
        seen["headers"] = entries(req.HeadersLength, req.Headers)
        await write_frame(writer, 3, extra_info_req(Info.RespBody))
        t, p = await read_frame(reader)
        seen["resp_body"] = extra_info_result(p)
        await write_frame(writer, 4, resp_call_resp(req.Id(), 201, [("x-b", "v")], b"new"))

    async def scenario() -> None:
        async with fake_runner(handler) as path, await Client.connect(path) as client:
            result = await client.call(1, HTTPRequest())
            assert result.action == Stop(status=403, headers=[("x-a", "1"), ("x-a", "2")], body=big)
            rc = await client.resp_call(
                1, 200, [("Content-Type", "text/plain")], HTTPRequest(resp_body=b"up"), id=8
            )
            assert rc.id == 8 and rc.status == 201
            assert rc.headers == [("x-b", "v")] and rc.body == b"new"
            assert rc.extra_info == [("resp_body", None)]

    asyncio.run(scenario())
    assert seen == {
        "status": 200,
        "headers": [(b"Content-Type", b"text/plain")],
        "resp_body": b"up",
    }


def test_unexpected_type_and_truncated_frames() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        await read_frame(reader)
        await write_frame(writer, 4, resp_call_resp(0, 200, [], None))  # wrong type
        await read_frame(reader)
        writer.write(b"\x02\x01\x00\x00x")  # announces 65536 bytes, sends 1
        await writer.drain()

    async def scenario() -> None:
        async with fake_runner(handler) as path, await Client.connect(path) as client:
            with pytest.raises(ProtocolError, match="unexpected type 4"):
                await client.call(1, HTTPRequest())
            with pytest.raises(ProtocolError, match="truncated"):
                await client.call(1, HTTPRequest())

    asyncio.run(scenario())


def test_raw_frames() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        t, p = await read_frame(reader)
        await write_frame(writer, 0, err_resp(1) if (t, p) == (9, b"zz") else b"")

    async def scenario() -> None:
        async with fake_runner(handler) as path, await Client.connect(path) as client:
            await client.send_raw(b"\x09\x00\x00\x02zz")
            t, p = await client.read_frame()
            assert t == 0 and ErrResp.Resp.GetRootAs(p, 0).Code() == 1
            with pytest.raises(ProtocolError, match="closed"):
                await client.read_frame()

    asyncio.run(scenario())


# ----------------------------------------------------------------- apply_rewrite


def test_apply_rewrite() -> None:
    req = HTTPRequest(
        path="/old",
        args=[("a", "1"), ("b", "2"), ("d", "x"), ("c", "0")],
        headers=[("host", "h"), ("x-delete", "1"), ("X-Change", "old"), ("x-keep", "k")],
        body=b"orig",
    )
    rw = Rewrite(
        path="/uri",
        headers=[("X-Delete", None), ("x-change", "new"), ("X-Add", "a"), ("X-Add", "b")],
        args=[("a", "foo"), ("a", "bar"), ("d", None), ("c", "bar")],
        resp_headers=[("x-resp", "r")],
        body=None,
    )
    up = apply_rewrite(req, rw)
    assert up.path == "/uri"
    assert sorted(up.headers) == [
        ("host", "h"),
        ("x-add", "b"),
        ("x-change", "new"),
        ("x-keep", "k"),
    ]
    assert sorted(up.args) == [("a", "bar"), ("a", "foo"), ("b", "2"), ("c", "bar")]
    assert up.body == b"orig"
    assert req.path == "/old"  # the input is not modified
    rw2 = Rewrite(path=None, headers=[], args=[], resp_headers=[], body=b"new")
    assert apply_rewrite(req, rw2).body == b"new"
    assert apply_rewrite(req, rw2).path == "/old"

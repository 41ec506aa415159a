"""The Lua A6 codec (bench/gateway/lua/gateway/{fb,a6}.lua), run inside nginx
through its test location, against the Python side:

* what Lua encodes (what APISIX sends) is decoded by the runner's own views and
  by the flatc-generated reference code in runner.testing._a6;
* what Lua decodes (what the runner answers) is produced by the runner's own
  builders and, in a different layout, by the flatc-generated builders.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any

import flatbuffers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.gateway import rig
from runner.proto import messages as m
from runner.testing import METHODS, encode_frame, text_vector
from runner.testing._a6.A6.Err import Resp as ErrResp
from runner.testing._a6.A6.ExtraInfo import Req as ExtraInfoReq
from runner.testing._a6.A6.ExtraInfo import Var as VarMod
from runner.testing._a6.A6.HTTPReqCall import Req as ReqCallReq
from runner.testing._a6.A6.HTTPReqCall import Resp as ReqCallResp
from runner.testing._a6.A6.HTTPReqCall import Rewrite as RewriteMod
from runner.testing._a6.A6.HTTPReqCall import Stop as StopMod
from runner.testing._a6.A6.HTTPRespCall import Req as RespCallReq
from runner.testing._a6.A6.HTTPRespCall import Resp as RespCallResp
from runner.testing._a6.A6.PrepareConf import Req as PrepareConfReq
from runner.testing._a6.A6.PrepareConf import Resp as PrepareConfResp

from .conftest import request

Entries = list[tuple[str, str | None]]
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------- plumbing


def lua(gw: rig.Rig, **cmd: Any) -> dict[str, Any]:
    reply = request(gw, "/__gw/codec", method="POST", body=json.dumps(cmd).encode())
    assert reply.status == 200, reply.body
    out: dict[str, Any] = json.loads(reply.body)
    return out


def lua_encode(gw: rig.Rig, msg: str, **args: Any) -> bytes:
    out = lua(gw, op="encode", msg=msg, args=args)
    assert "error" not in out, out
    return base64.b64decode(out["payload_b64"])


def lua_decode(gw: rig.Rig, msg: str, payload: bytes | bytearray) -> dict[str, Any]:
    return lua(gw, op="decode", msg=msg, payload_b64=base64.b64encode(payload).decode())


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def pairs(entries: list[list[Any]] | dict[str, Any]) -> Entries:
    if isinstance(entries, dict):  # cjson encodes an empty Lua table as {}
        return []
    return [(n, v) for n, v in entries]


def a6_entries(length: Any, get: Any) -> Entries:
    out: Entries = []
    for i in range(length()):
        e = get(i)
        value = e.Value()
        out.append((e.Name().decode(), None if value is None else value.decode()))
    return out


text = st.text(max_size=12)
entries_st = st.lists(st.tuples(text, st.none() | text), max_size=6)
u32 = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------- frame header


@pytest.mark.parametrize("length", [0, 1, 255, 256, 65536, 2**24 - 1])
@pytest.mark.parametrize("rpc_type", [0, 2, 4])
def test_frame_header(gateway: rig.Rig, rpc_type: int, length: int) -> None:
    out = lua(gateway, op="header", type=rpc_type, len=length)
    assert base64.b64decode(out["header_b64"]) == encode_frame(rpc_type, b"\0" * length)[:4]
    assert (out["type"], out["len"]) == (rpc_type, length)


# ---------------------------------------------------------------------- Lua encodes


@pytest.mark.parametrize(
    "conf", [None, [], [("stop", '{"body":"x"}')], [("a", "1"), ("a", ""), ("é", "ü")]]
)
def test_prepare_conf_req(gateway: rig.Rig, conf: list[tuple[str, str]] | None) -> None:
    key = "route#1#ext-plugin-pre-req#abc"
    payload = lua_encode(gateway, "prepare_conf_req", key=key, conf=conf)
    view = m.PrepareConfReq(memoryview(payload))
    assert view.key == key
    assert view.conf == (conf or [])
    ref = PrepareConfReq.Req.GetRootAs(payload, 0)
    assert ref.Key().decode() == key
    assert bool(ref.ConfIsNone()) == (conf is None)
    assert a6_entries(ref.ConfLength, ref.Conf) == (conf or [])


def check_req_call(gw: rig.Rig, id: int, token: int, method: str, path: str, ip: str,
                   args: Entries, headers: Entries) -> None:  # fmt: skip
    src_ip = ipaddress.ip_address(ip).packed
    payload = lua_encode(
        gw, "req_call_req", id=id, conf_token=token, method=method, path=path,
        src_ip_b64=b64(src_ip), args=args, headers=headers,
    )  # fmt: skip
    view = m.ReqCallView(memoryview(payload))
    view.validate()
    assert (view.id, view.conf_token, view.method, view.path) == (id, token, method, path)
    assert view.src_ip == src_ip
    assert list(view.args) == args
    assert list(view.headers) == headers
    ref = ReqCallReq.Req.GetRootAs(payload, 0)
    assert (ref.Id(), ref.ConfToken(), ref.Method()) == (id, token, METHODS[method])
    assert ref.Path().decode() == path
    assert bytes(ref.SrcIp(i) for i in range(ref.SrcIpLength())) == src_ip
    assert a6_entries(ref.ArgsLength, ref.Args) == args
    assert a6_entries(ref.HeadersLength, ref.Headers) == headers


def test_req_call_req_like_apisix(gateway: rig.Rig) -> None:
    """http-req-call.t TEST 3: PUT /hello?xx=y&xx=z&&y=&&z, repeated X-Req."""
    check_req_call(
        gateway, 0, 233, "PUT", "/hello", "127.0.0.1",
        [("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)],
        [("connection", "close"), ("host", "localhost"), ("x-req", "foo"), ("x-req", "bar"),
         ("x-resp", "cat")],
    )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_req_call_req_methods_ipv6_big_ids(gateway: rig.Rig, method: str) -> None:
    check_req_call(gateway, 2**32 - 1, 2**31, method, "/", "::1", [], [])


@HYPOTHESIS
@given(id=u32, token=u32, path=text, args=entries_st, headers=entries_st)
def test_req_call_req_property(
    gateway: rig.Rig, id: int, token: int, path: str, args: Entries, headers: Entries
) -> None:
    check_req_call(gateway, id, token, "GET", "/" + path, "10.1.2.3", args, headers)


@HYPOTHESIS
@given(id=u32, token=u32, status=st.integers(0, 65535), headers=entries_st)
def test_resp_call_req(
    gateway: rig.Rig, id: int, token: int, status: int, headers: Entries
) -> None:
    payload = lua_encode(
        gateway, "resp_call_req", id=id, status=status, headers=headers, conf_token=token
    )
    view = m.RespCallView(memoryview(payload))
    view.validate()
    assert (view.id, view.conf_token, view.status) == (id, token, status)
    assert list(view.headers) == headers
    ref = RespCallReq.Req.GetRootAs(payload, 0)
    assert (ref.Id(), ref.ConfToken(), ref.Status()) == (id, token, status)
    assert a6_entries(ref.HeadersLength, ref.Headers) == headers


@pytest.mark.parametrize("result", [None, b"", b"127.0.0.1", bytes(range(256)) * 300])
def test_extra_info_resp(gateway: rig.Rig, result: bytes | None) -> None:
    payload = lua_encode(gateway, "extra_info_resp", result_b64=b64(result))
    assert m.ExtraInfoResp(memoryview(payload)).result == result


# ---------------------------------------------------------------------- Lua decodes


def test_decode_prepare_conf_resp_and_err(gateway: rig.Rig) -> None:
    for token in (1, 2**32 - 1):
        frame = m.build_prepare_conf_resp(token)
        assert lua_decode(gateway, "prepare_conf_resp", frame[4:]) == {"conf_token": token}
    for code in m.ErrCode:
        assert lua_decode(gateway, "err_code", m.build_err(code)[4:]) == {"code": code}
    b = flatbuffers.Builder(64)
    PrepareConfResp.Start(b)
    PrepareConfResp.AddConfToken(b, 77)
    b.Finish(PrepareConfResp.End(b))
    assert lua_decode(gateway, "prepare_conf_resp", b.Output()) == {"conf_token": 77}
    b = flatbuffers.Builder(64)
    ErrResp.Start(b)
    ErrResp.AddCode(b, 2)
    b.Finish(ErrResp.End(b))
    assert lua_decode(gateway, "err_code", b.Output()) == {"code": 2}


def test_decode_none_action(gateway: rig.Rig) -> None:
    out = lua_decode(gateway, "req_call_resp", m.build_req_call_none(9)[4:])
    assert out == {"id": 9, "action": None}


def a6_stop(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    b = flatbuffers.Builder(256)
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
    ReqCallResp.AddActionType(b, 1)
    ReqCallResp.AddAction(b, stop)
    b.Finish(ReqCallResp.End(b))
    return bytes(b.Output())


@HYPOTHESIS
@given(id=u32, status=st.integers(0, 65535), headers=entries_st, body=st.binary(max_size=64))
def test_decode_stop(gateway: rig.Rig, id: int, status: int, headers: Entries, body: bytes) -> None:
    for payload in (
        m.build_req_call_stop(id, status, headers, body)[4:],
        a6_stop(id, status, headers, body),
    ):
        out = lua_decode(gateway, "req_call_resp", payload)
        assert (out["id"], out["action"]) == (id, "stop")
        stop = out["stop"]
        assert stop["status"] == status
        assert pairs(stop["headers"]) == headers
        assert base64.b64decode(stop["body_b64"] or "") == body


def a6_rewrite(
    id: int, path: str | None, headers: Entries, args: Entries, resp: Entries, body: bytes | None
) -> bytes:
    b = flatbuffers.Builder(256)
    p = None if path is None else b.CreateString(path)
    hv = text_vector(b, headers, RewriteMod.StartHeadersVector) if headers else None
    av = text_vector(b, args, RewriteMod.StartArgsVector) if args else None
    rv = text_vector(b, resp, RewriteMod.StartRespHeadersVector) if resp else None
    bv = None if body is None else b.CreateByteVector(body)
    RewriteMod.Start(b)
    for add, off in ((RewriteMod.AddPath, p), (RewriteMod.AddHeaders, hv),
                     (RewriteMod.AddArgs, av), (RewriteMod.AddRespHeaders, rv),
                     (RewriteMod.AddBody, bv)):  # fmt: skip
        if off is not None:
            add(b, off)
    rw = RewriteMod.End(b)
    ReqCallResp.Start(b)
    ReqCallResp.AddId(b, id)
    ReqCallResp.AddActionType(b, 2)
    ReqCallResp.AddAction(b, rw)
    b.Finish(ReqCallResp.End(b))
    return bytes(b.Output())


@HYPOTHESIS
@given(
    id=u32,
    path=st.none() | text,
    headers=entries_st,
    args=entries_st,
    resp=entries_st,
    body=st.none() | st.binary(min_size=1, max_size=64),
)
def test_decode_rewrite(
    gateway: rig.Rig,
    id: int,
    path: str | None,
    headers: Entries,
    args: Entries,
    resp: Entries,
    body: bytes | None,
) -> None:
    for payload in (
        m.build_req_call_rewrite(id, path, headers, args, resp, body)[4:],
        a6_rewrite(id, path, headers, args, resp, body),
    ):
        out = lua_decode(gateway, "req_call_resp", payload)
        assert (out["id"], out["action"]) == (id, "rewrite")
        rw = out["rewrite"]
        assert rw["path"] == path
        assert pairs(rw["headers"]) == headers
        assert pairs(rw["args"]) == args
        assert pairs(rw["resp_headers"]) == resp
        assert rw["body_b64"] == b64(body)


def a6_resp_call_resp(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    b = flatbuffers.Builder(256)
    hv = text_vector(b, headers, RespCallResp.StartHeadersVector)
    bv = None if body is None else b.CreateByteVector(body)
    RespCallResp.Start(b)
    RespCallResp.AddId(b, id)
    RespCallResp.AddStatus(b, status)
    RespCallResp.AddHeaders(b, hv)
    if bv is not None:
        RespCallResp.AddBody(b, bv)
    b.Finish(RespCallResp.End(b))
    return bytes(b.Output())


@HYPOTHESIS
@given(
    id=u32,
    status=st.integers(0, 65535),
    headers=entries_st,
    body=st.none() | st.binary(min_size=1, max_size=64),
)
def test_decode_resp_call_resp(
    gateway: rig.Rig, id: int, status: int, headers: Entries, body: bytes | None
) -> None:
    for payload in (
        m.build_resp_call_resp(id, status, headers, body)[4:],
        a6_resp_call_resp(id, status, headers, body),
    ):
        out = lua_decode(gateway, "resp_call_resp", payload)
        assert (out["id"], out["status"]) == (id, status)
        assert pairs(out["headers"]) == headers
        assert out["body_b64"] == b64(body)


def test_decode_extra_info_req(gateway: rig.Rig) -> None:
    cases = [
        (m.build_extra_info(m.InfoType.VAR, "remote_addr"), {"kind": "var", "name": "remote_addr"}),
        (m.build_extra_info(m.InfoType.VAR, ""), {"kind": "var", "name": ""}),
        (m.build_extra_info(m.InfoType.REQ_BODY), {"kind": "req_body", "name": None}),
        (m.build_extra_info(m.InfoType.RESP_BODY), {"kind": "resp_body", "name": None}),
    ]
    for frame, expected in cases:
        assert lua_decode(gateway, "extra_info_req", bytes(frame)[4:]) == expected
    b = flatbuffers.Builder(64)
    name = b.CreateString("server_addr")
    VarMod.Start(b)
    VarMod.AddName(b, name)
    var = VarMod.End(b)
    ExtraInfoReq.Start(b)
    ExtraInfoReq.AddInfoType(b, 1)
    ExtraInfoReq.AddInfo(b, var)
    b.Finish(ExtraInfoReq.End(b))
    assert lua_decode(gateway, "extra_info_req", b.Output()) == {
        "kind": "var",
        "name": "server_addr",
    }
    b = flatbuffers.Builder(64)
    ExtraInfoReq.Start(b)
    ExtraInfoReq.AddInfoType(b, 9)
    b.Finish(ExtraInfoReq.End(b))
    assert lua_decode(gateway, "extra_info_req", b.Output()) == {"kind": 9, "name": None}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01",
        b"\xff\xff\xff\xff",
        b"\x04\x00\x00\x00\xff\xff\xff\x7f",
        bytes(m.build_req_call_none(1)[4:9]),
    ],
)
@pytest.mark.parametrize(
    "msg", ["req_call_resp", "resp_call_resp", "extra_info_req", "prepare_conf_resp"]
)
def test_malformed_payloads_are_errors_not_crashes(
    gateway: rig.Rig, msg: str, payload: bytes
) -> None:
    out = lua_decode(gateway, msg, payload)
    assert "outside" in out.get("error", ""), out


def test_truncated_vector_is_an_error(gateway: rig.Rig) -> None:
    frame = m.build_req_call_stop(1, 200, [("a", "b")], b"body")
    out = lua_decode(gateway, "req_call_resp", frame[4:-6])
    assert "error" in out

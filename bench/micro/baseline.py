"""The baseline of the micro-benchmarks: the same jobs done the plain way, with
the flatc-generated code (runner/_a6) and ``flatbuffers.Builder``, as a
straightforward runner (the old Python runner, the generated-code examples)
does them: decode every field of a request up front into dicts, build each
reply field by field with a Builder.

Nothing here is used by the runner. Each function returns the same frame or
the same values as its counterpart in runner.proto / runner.api.dispatch, which
the benchmarks check before timing anything.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flatbuffers

from runner.testing import text_vector
from runner.testing._a6.A6.Err import Resp as ErrResp
from runner.testing._a6.A6.ExtraInfo import Info as XInfo
from runner.testing._a6.A6.ExtraInfo import Req as XReq
from runner.testing._a6.A6.ExtraInfo import Resp as XResp
from runner.testing._a6.A6.ExtraInfo import Var as XVar
from runner.testing._a6.A6.HTTPReqCall import Action as CallAction
from runner.testing._a6.A6.HTTPReqCall import Req as CallReq
from runner.testing._a6.A6.HTTPReqCall import Resp as CallResp
from runner.testing._a6.A6.HTTPReqCall import Rewrite as CallRewrite
from runner.testing._a6.A6.HTTPReqCall import Stop as CallStop
from runner.testing._a6.A6.HTTPRespCall import Resp as RespCallResp

Pairs = Sequence[tuple[str, str | None]]
METHODS = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "OPTIONS",
    "PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE",
)  # fmt: skip


# --------------------------------------------------------------------------- frames


class NaiveFrameReader:
    """Accumulate bytes; cut frames off the front, copying each payload."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        frames = []
        while len(self.buf) >= 4:
            size = int.from_bytes(self.buf[1:4], "big")
            if len(self.buf) < 4 + size:
                break
            frames.append((self.buf[0], bytes(self.buf[4 : 4 + size])))
            del self.buf[: 4 + size]
        return frames


def frame(kind: int, b: flatbuffers.Builder) -> bytes:
    payload = bytes(b.Output())
    return bytes([kind]) + len(payload).to_bytes(3, "big") + payload


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class NaiveRequest:
    """Every field of an HTTPReqCall, decoded when the call arrives."""

    id: int
    conf_token: int
    src_ip: bytes
    method: str
    path: str
    headers: dict[str, list[str | None]]
    args: dict[str, list[str | None]]
    changed_headers: dict[str, str | None] = dataclasses.field(default_factory=dict)
    changed_args: dict[str, str | None] = dataclasses.field(default_factory=dict)


def _entries(length: int, get: Callable[[int], Any]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for i in range(length):
        e = get(i)
        value = e.Value()
        out.append((e.Name().decode(), None if value is None else value.decode()))
    return out


def _multi(pairs: list[tuple[str, str | None]], fold: bool) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {}
    for name, value in pairs:
        out.setdefault(name.lower() if fold else name, []).append(value)
    return out


def read_id_token(payload: bytes) -> tuple[int, int]:
    req = CallReq.Req.GetRootAs(payload, 0)
    return req.Id(), req.ConfToken()


def read_id_token_path(payload: bytes) -> tuple[int, int, str]:
    req = CallReq.Req.GetRootAs(payload, 0)
    return req.Id(), req.ConfToken(), (req.Path() or b"").decode()


def read_req_call(payload: bytes) -> NaiveRequest:
    req = CallReq.Req.GetRootAs(payload, 0)
    return NaiveRequest(
        id=req.Id(),
        conf_token=req.ConfToken(),
        src_ip=bytes(req.SrcIp(i) for i in range(req.SrcIpLength())),
        method=METHODS[req.Method()],
        path=(req.Path() or b"").decode(),
        headers=_multi(_entries(req.HeadersLength(), req.Headers), fold=True),
        args=_multi(_entries(req.ArgsLength(), req.Args), fold=False),
    )


def read_fields(payload: bytes) -> tuple[Any, ...]:
    """id, token, method, path, headers and args, as the view benchmark reads them."""
    req = CallReq.Req.GetRootAs(payload, 0)
    return (
        req.Id(),
        req.ConfToken(),
        METHODS[req.Method()],
        (req.Path() or b"").decode(),
        _entries(req.HeadersLength(), req.Headers),
        _entries(req.ArgsLength(), req.Args),
    )


def read_extra_info_result(payload: bytes) -> bytes | None:
    """ExtraInfo.Resp's result, in one slice (the generated accessor reads a
    byte per call; its numpy variant needs numpy)."""
    tab = XResp.Resp.GetRootAs(payload, 0)._tab
    o = int(tab.Offset(4))
    if o == 0:
        return None
    start = int(tab.Vector(o))
    return bytes(tab.Bytes[start : start + int(tab.VectorLen(o))])


# --------------------------------------------------------------------------- building


def build_stop(req_id: int, status: int, headers: Pairs, body: bytes) -> bytes:
    b = flatbuffers.Builder(256)
    headers_off = text_vector(b, headers)
    body_off = b.CreateByteVector(body)
    CallStop.Start(b)
    CallStop.AddStatus(b, status)
    CallStop.AddHeaders(b, headers_off)
    CallStop.AddBody(b, body_off)
    stop = CallStop.End(b)
    CallResp.Start(b)
    CallResp.AddId(b, req_id)
    CallResp.AddActionType(b, CallAction.Action.Stop)
    CallResp.AddAction(b, stop)
    b.Finish(CallResp.End(b))
    return frame(2, b)


def build_none(req_id: int) -> bytes:
    b = flatbuffers.Builder(32)
    CallResp.Start(b)
    CallResp.AddId(b, req_id)
    b.Finish(CallResp.End(b))
    return frame(2, b)


def build_rewrite(
    req_id: int,
    path: str | None,
    headers: Pairs,
    args: Pairs,
    resp_headers: Pairs,
    body: bytes | None,
) -> bytes:
    b = flatbuffers.Builder(256)
    path_off = None if path is None else b.CreateString(path)
    headers_off = text_vector(b, headers) if headers else None
    args_off = text_vector(b, args) if args else None
    resp_off = text_vector(b, resp_headers) if resp_headers else None
    body_off = b.CreateByteVector(body) if body else None
    CallRewrite.Start(b)
    if path_off is not None:
        CallRewrite.AddPath(b, path_off)
    if headers_off is not None:
        CallRewrite.AddHeaders(b, headers_off)
    if args_off is not None:
        CallRewrite.AddArgs(b, args_off)
    if resp_off is not None:
        CallRewrite.AddRespHeaders(b, resp_off)
    if body_off is not None:
        CallRewrite.AddBody(b, body_off)
    rewrite = CallRewrite.End(b)
    CallResp.Start(b)
    CallResp.AddId(b, req_id)
    CallResp.AddActionType(b, CallAction.Action.Rewrite)
    CallResp.AddAction(b, rewrite)
    b.Finish(CallResp.End(b))
    return frame(2, b)


def build_resp_call(req_id: int, status: int, headers: Pairs, body: bytes | None) -> bytes:
    b = flatbuffers.Builder(256)
    headers_off = text_vector(b, headers)
    body_off = b.CreateByteVector(body) if body else None
    RespCallResp.Start(b)
    RespCallResp.AddId(b, req_id)
    RespCallResp.AddStatus(b, status)
    RespCallResp.AddHeaders(b, headers_off)
    if body_off is not None:
        RespCallResp.AddBody(b, body_off)
    b.Finish(RespCallResp.End(b))
    return frame(4, b)


def build_extra_info_var(name: str) -> bytes:
    b = flatbuffers.Builder(64)
    name_off = b.CreateString(name)
    XVar.Start(b)
    XVar.AddName(b, name_off)
    var = XVar.End(b)
    XReq.Start(b)
    XReq.AddInfoType(b, XInfo.Info.Var)
    XReq.AddInfo(b, var)
    b.Finish(XReq.End(b))
    return frame(3, b)


def build_err(code: int) -> bytes:
    b = flatbuffers.Builder(16)
    ErrResp.Start(b)
    ErrResp.AddCode(b, code)
    b.Finish(ErrResp.End(b))
    return frame(0, b)


# --------------------------------------------------------------------------- a chain


@dataclasses.dataclass
class NaiveResponse:
    status: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | None = None


NaivePlugin = Callable[[NaiveRequest, NaiveResponse], None]


def plugin_stop(request: NaiveRequest, response: NaiveResponse) -> None:
    response.status, response.body = 200, b"hello"


# bench-rewrite's values count its calls (bench/plugins/rewrite_dynamic.py); so
# do these, from their own count (restart_counts sets both back to 1).
REWRITE_CALLS = itertools.count(1)


def restart_counts(plugin_module: Any) -> None:
    """bench-rewrite's count and this one's start again at 1: the two replies
    to the same call carry the same values."""
    global REWRITE_CALLS
    REWRITE_CALLS = itertools.count(1)
    plugin_module._CALLS = itertools.count(1)


def plugin_rewrite(request: NaiveRequest, response: NaiveResponse) -> None:
    """What bench/plugins/rewrite_dynamic.py does, on the eager request."""
    rid = str(next(REWRITE_CALLS))
    request.changed_headers["x-request-path"] = request.path
    request.changed_headers["x-runner-request"] = "r-" + rid
    request.changed_args["rid"] = rid


def plugin_noop(request: NaiveRequest, response: NaiveResponse) -> None:
    return None


def dispatch(payload: bytes, chain: Sequence[NaivePlugin]) -> bytes:
    """Decode the call, run the chain, build the reply."""
    request = read_req_call(payload)
    response = NaiveResponse()
    for plugin in chain:
        plugin(request, response)
        if response.status is not None or response.body is not None:
            return build_stop(
                request.id, response.status or 200, list(response.headers.items()),
                response.body or b"",
            )  # fmt: skip
    if request.changed_headers or request.changed_args:
        return build_rewrite(
            request.id, None, list(request.changed_headers.items()),
            list(request.changed_args.items()), [], None,
        )  # fmt: skip
    return build_none(request.id)

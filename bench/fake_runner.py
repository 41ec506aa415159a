"""A minimal ext-plugin "runner" for developing the load generator.

It answers every PrepareConf with token 1 and every HTTPReqCall with one
precomputed Stop reply, so its cost per request is the bare event loop plus
framing: the reference floor for the real runner.

    python -m bench.fake_runner /tmp/x.sock [--extra-var NAME] [--not-found-every N]
        [--rewrite-header NAME=VALUE ...] [--remove-header NAME ...]

--extra-var NAME: ask APISIX for one ExtraInfo Var before each Stop.
--not-found-every N: answer every Nth call with CONF_TOKEN_NOT_FOUND (tests
the load generator's re-prepare path).
--rewrite-header / --remove-header: answer every call with one precomputed
Rewrite that sets / removes these request headers, instead of the Stop (the
template reference of a header-rewrite route: APISIX then proxies the request
as it does for the runner's own Rewrite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import cast

import flatbuffers
import uvloop

from bench.micro import baseline
from runner.testing._a6.A6.Err import Code as ErrCode
from runner.testing._a6.A6.PrepareConf import Resp as PrepResp

RPC_ERROR, RPC_PREPARE_CONF, RPC_HTTP_REQ_CALL, RPC_EXTRA_INFO = 0, 1, 2, 3
BUFFER_SIZE = 256 * 1024


def frame(kind: int, payload: bytes) -> bytes:
    """Header (type byte + 24-bit big-endian length) followed by the payload."""
    return bytes([kind]) + len(payload).to_bytes(3, "big") + payload


def build_prepare_resp(token: int) -> bytes:
    b = flatbuffers.Builder(32)
    PrepResp.Start(b)
    PrepResp.AddConfToken(b, token)
    b.Finish(PrepResp.End(b))
    return frame(RPC_PREPARE_CONF, bytes(b.Output()))


# The reference's frames are the micro-benchmarks' plain Builder ones
# (bench/micro/baseline.py), with no request id (APISIX does not read it).
STOP_BODY = b"stopped by fake runner"


def build_stop_resp() -> bytes:
    return baseline.build_stop(0, 403, [("x-fake-runner", "1")], STOP_BODY)


def build_rewrite_resp(headers: list[tuple[str, str | None]]) -> bytes:
    """A Rewrite of the request's headers (a None value removes the header)."""
    return baseline.build_rewrite(0, None, headers, [], [], None)


class Replies:
    """Every frame the fake runner ever sends, built once."""

    def __init__(
        self,
        extra_var: str | None,
        not_found_every: int,
        rewrite: list[tuple[str, str | None]] | None = None,
    ) -> None:
        self.prepare = build_prepare_resp(1)
        # The final answer to every call: the Stop, or the Rewrite asked for.
        self.stop = build_rewrite_resp(rewrite) if rewrite else build_stop_resp()
        self.var_req = baseline.build_extra_info_var(extra_var) if extra_var else None
        self.not_found = baseline.build_err(ErrCode.Code.CONF_TOKEN_NOT_FOUND)
        self.bad_request = baseline.build_err(ErrCode.Code.BAD_REQUEST)
        self.not_found_every = not_found_every
        self.calls = 0


class FakeConn(asyncio.BufferedProtocol):
    """One connection: frames are parsed in place in a fixed receive buffer."""

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.buf = bytearray(BUFFER_SIZE)
        self.start = 0
        self.end = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end == len(self.buf):
            self._make_room()
        return memoryview(self.buf)[self.end :]

    def _make_room(self) -> None:
        """Compact the buffer, and grow it if one frame does not fit."""
        pending = self.buf[self.start : self.end]
        size = max(len(self.buf), 2 * len(pending))
        self.buf = pending + bytearray(size - len(pending))
        self.start, self.end = 0, len(pending)

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        buf = self.buf
        while self.end - self.start >= 4:
            s = self.start
            stop = s + 4 + ((buf[s + 1] << 16) | (buf[s + 2] << 8) | buf[s + 3])
            if stop > self.end:
                break
            self.start = stop
            self._on_frame(buf[s])
        if self.start == self.end:
            self.start = self.end = 0

    def _on_frame(self, kind: int) -> None:
        assert self.transport is not None
        self.transport.write(self._reply(kind))

    def _reply(self, kind: int) -> bytes:
        r = self.replies
        if kind == RPC_HTTP_REQ_CALL:
            r.calls += 1
            if r.not_found_every and r.calls % r.not_found_every == 0:
                return r.not_found
            return r.var_req or r.stop
        if kind == RPC_EXTRA_INFO:
            return r.stop
        if kind == RPC_PREPARE_CONF:
            return r.prepare
        return r.bad_request


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def serve(path: str, replies: Replies) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: FakeConn(replies), path, backlog=1024)
    stopped: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _resolve, stopped)
    print(f"fake runner pid {os.getpid()} listening on {path}", file=sys.stderr, flush=True)
    await stopped
    server.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fake_runner", description=__doc__)
    p.add_argument("socket", help="Unix socket path (a unix: prefix is accepted)")
    p.add_argument("--extra-var", metavar="NAME", help="ask one ExtraInfo Var per call")
    p.add_argument("--not-found-every", type=int, default=0, metavar="N")
    p.add_argument(
        "--rewrite-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="answer every call with a Rewrite setting this request header",
    )
    p.add_argument(
        "--remove-header",
        action="append",
        default=[],
        metavar="NAME",
        help="answer every call with a Rewrite removing this request header",
    )
    args = p.parse_args(argv)
    path = args.socket.removeprefix("unix:")
    rewrite: list[tuple[str, str | None]] = []
    for item in args.rewrite_header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--rewrite-header {item!r}: expected NAME=VALUE")
        rewrite.append((name, value))
    rewrite += [(name, None) for name in args.remove_header]
    uvloop.run(serve(path, Replies(args.extra_var, args.not_found_every, rewrite)))


if __name__ == "__main__":
    main()

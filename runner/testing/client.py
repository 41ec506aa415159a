"""An APISIX-like client of the ext-plugin protocol, for testing plugins and runners.

This module plays the part of APISIX: it connects to a runner's Unix socket, sends
``PrepareConf`` / ``HTTPReqCall`` / ``HTTPRespCall`` frames exactly as APISIX's Lua
code builds them, and answers the runner's ``ExtraInfo`` questions from the data you
put into an :class:`HTTPRequest`.

It is deliberately independent of the runner's own codec: requests are built and
replies parsed only with the flatc-generated reference code in ``runner.testing._a6`` and
the ``flatbuffers`` package, so a bug in the runner's codec cannot hide behind the
same bug here.

Typical use in a test (see also the ``runner`` pytest fixture in
:mod:`runner.testing.pytest_plugin`)::

    async def scenario(socket_path: str) -> None:
        async with await Client.connect(socket_path) as client:
            token = await client.prepare_conf([("my_plugin", '{"limit": 3}')])
            result = await client.call(
                token,
                HTTPRequest(method="POST", path="/hello", args=[("x", "1")],
                            headers=[("host", "example.com")],
                            vars={"remote_addr": "10.0.0.1"}, body=b"payload"),
            )
            assert isinstance(result.action, Stop)
            assert result.action.status == 403
            assert result.extra_info == [("var", "remote_addr")]

    asyncio.run(scenario(path))
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from runner.testing._a6.A6.PrepareConf import Resp as PrepareConfResp
from runner.testing.frames import (
    ENC,
    ERRS,
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_NAMES,
    RPC_PREPARE_CONF,
    Entries,
    HTTPRequest,
    ProtocolError,
    ReqCallResult,
    RespCallResult,
    build_extra_info_resp,
    build_prepare_conf,
    build_req_call,
    build_resp_call,
    frame_header,
    parse_err,
    parse_extra_info_req,
    parse_req_call_resp,
    parse_resp_call_resp,
)

_T = TypeVar("_T")


class Client:
    """One connection to a runner, like one pooled APISIX connection.

    Calls on one client are sequential (a lock serializes them), as in APISIX.
    Use :meth:`connect` to create one; it is an async context manager::

        async with await Client.connect("/tmp/runner.sock") as client:
            ...

    Unlike APISIX, the connection is *not* closed after a :class:`RunnerError`, so a
    test can check that the runner keeps serving the connection.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        read_timeout: float | None = 60.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._read_timeout = read_timeout
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, path: str, timeout: float = 5.0, read_timeout: float | None = 60.0
    ) -> Client:
        """Connect to the runner's Unix socket at ``path`` (no ``unix:`` prefix).

        ``timeout`` bounds the connect; ``read_timeout`` bounds each frame read
        (APISIX uses 60 s) and raises :class:`TimeoutError` when exceeded.
        """
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        return cls(reader, writer, read_timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # ---- raw frames

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes (for malformed-input tests)."""
        self._writer.write(data)
        await self._writer.drain()

    async def send_frame(self, rpc_type: int, payload: bytes) -> None:
        """Write one frame with the given type and payload."""
        self._writer.writelines((frame_header(rpc_type, len(payload)), payload))
        await self._writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        """Read one frame: exactly 4 header bytes, then exactly ``len`` payload bytes.

        Raises :class:`ProtocolError` if the connection closes before the frame is
        complete and :class:`TimeoutError` after ``read_timeout``.
        """
        return await asyncio.wait_for(self._read_frame(), self._read_timeout)

    async def _read_frame(self) -> tuple[int, bytes]:
        try:
            header = await self._reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise ProtocolError("connection closed by the runner") from None
            raise ProtocolError(f"header too short: got {len(e.partial)} of 4 bytes") from None
        except ConnectionError as e:
            raise ProtocolError(f"connection error: {e}") from e
        rpc_type = header[0]
        length = int.from_bytes(header[1:4], "big")
        try:
            payload = await self._reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as e:
            raise ProtocolError(
                f"data truncated: got {len(e.partial)} of {length} bytes"
                f" ({RPC_NAMES.get(rpc_type, rpc_type)})"
            ) from None
        except ConnectionError as e:
            raise ProtocolError(f"connection error: {e}") from e
        return rpc_type, payload

    # ---- RPCs

    async def prepare_conf(
        self, conf: list[tuple[str, str]] | None, key: str = "route#1#ext-plugin-pre-req#1"
    ) -> int:
        """Send ``PrepareConf`` (type 1) and return the conf token.

        ``conf`` is the ordered ``[(plugin_name, config_string), ...]`` list; ``None``
        leaves the field absent (a route without ``conf``). Raises
        :class:`RunnerError` on a type-0 answer.
        """
        async with self._lock:
            await self.send_frame(RPC_PREPARE_CONF, build_prepare_conf(conf, key))
            rpc_type, payload = await self.read_frame()
            self._check_final(rpc_type, payload, RPC_PREPARE_CONF)
            return int(
                self._parse(lambda p: PrepareConfResp.Resp.GetRootAs(p, 0).ConfToken(), payload)
            )

    async def call(self, token: int, request: HTTPRequest) -> ReqCallResult:
        """Send an ``HTTPReqCall`` (type 2), answer ``ExtraInfo`` questions from
        ``request``, and return the runner's final answer.

        Raises :class:`RunnerError` on a type-0 answer and :class:`ProtocolError` on
        any other unexpected frame.
        """
        async with self._lock:
            await self.send_frame(RPC_HTTP_REQ_CALL, build_req_call(token, request))
            payload, extra = await self._await_final(RPC_HTTP_REQ_CALL, request)
            return self._parse(lambda p: parse_req_call_resp(p, extra), payload)

    async def resp_call(
        self,
        token: int,
        status: int,
        headers: list[tuple[str, str]],
        request: HTTPRequest | None = None,
        id: int = 0,
    ) -> RespCallResult:
        """Send an ``HTTPRespCall`` (type 4) with the upstream ``status`` and response
        ``headers``; ``ExtraInfo`` questions are answered from ``request`` (its
        ``resp_body`` answers ``RespBody``). Errors as in :meth:`call`.
        """
        req = HTTPRequest() if request is None else request
        async with self._lock:
            await self.send_frame(RPC_HTTP_RESP_CALL, build_resp_call(token, id, status, headers))
            payload, extra = await self._await_final(RPC_HTTP_RESP_CALL, req)
            return self._parse(lambda p: parse_resp_call_resp(p, extra), payload)

    # ---- internals

    @staticmethod
    def _parse(fn: Callable[[bytes], _T], payload: bytes) -> _T:
        if not payload:
            raise ProtocolError("empty payload where a flatbuffer was expected")
        try:
            return fn(payload)
        except ProtocolError:
            raise
        except (struct.error, IndexError, ValueError, TypeError, UnicodeError) as e:
            raise ProtocolError(f"unparsable payload: {e!r}") from e

    @staticmethod
    def _check_final(rpc_type: int, payload: bytes, expected: int) -> None:
        if rpc_type == RPC_ERROR:
            raise Client._parse(lambda p: parse_err(p), payload)
        if rpc_type != expected:
            raise ProtocolError(
                f"unexpected type {rpc_type}, expected {expected} ({RPC_NAMES[expected]})"
            )

    async def _await_final(self, expected: int, request: HTTPRequest) -> tuple[bytes, Entries]:
        extra: Entries = []
        while True:
            rpc_type, payload = await self.read_frame()
            if rpc_type != RPC_EXTRA_INFO:
                self._check_final(rpc_type, payload, expected)
                return payload, extra
            kind, name = self._parse(lambda p: parse_extra_info_req(p), payload)
            extra.append((kind, name))
            result: bytes | None
            if kind == "var":
                value = request.vars.get(name or "")
                result = None if value is None else value.encode(ENC, ERRS)
            elif kind == "req_body":
                result = request.body
            else:  # resp_body: only available inside a response call
                result = request.resp_body if expected == RPC_HTTP_RESP_CALL else None
            await self.send_frame(RPC_EXTRA_INFO, build_extra_info_resp(result))

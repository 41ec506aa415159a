"""A connection handed from one worker's loop to another's, in one process:
two ServerStates on one shared conf store stand for two workers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runner import Plugin, Request, Response
from runner.conf.confstore import ConfStore
from runner.conf.sharedstore import SqliteBackend
from runner.server.conn import Connection, ServerState
from runner.server.pool import Mailbox
from runner.testing import (
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    Client,
    HTTPRequest,
    Stop,
    build_extra_info_resp,
    build_req_call,
    encode_frame,
)


class Who(Plugin):
    """Answers with the name of the worker that ran it."""

    name = "who"

    def __init__(self, worker: str) -> None:
        self.worker = worker

    def filter(self, conf: Any, request: Request, response: Response) -> None:
        response.status = 200
        response.body = self.worker.encode()


class AsksVar(Plugin):
    name = "asks-var"

    async def filter(self, conf: Any, request: Request, response: Response) -> None:
        response.status = 200
        response.body = (await request.var("x") or "").encode()


class Worker:
    """A listening socket served into one ServerState."""

    def __init__(self, name: str, store_path: str, path: str) -> None:
        backend = SqliteBackend(store_path, 60.0, 100)
        plugins: dict[str, Plugin] = {"who": Who(name), "asks-var": AsksVar()}
        self.state = ServerState(ConfStore(plugins, backend), call_timeout=5.0)
        self.path = path

    def conn(self) -> Connection:
        (conn,) = self.state.connections
        return conn

    async def take(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: Connection(self.state), sock)


async def wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out")


def run(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, body: Callable[..., Awaitable[None]]
) -> None:
    store = str(tmp_path / "confs.sqlite3")
    SqliteBackend.create(store, 60.0, 100)
    a, b = Worker("a", store, ""), Worker("b", store, "")

    async def main() -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(tmp_path / "r.sock")
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)
        try:
            accepting = asyncio.ensure_future(asyncio.get_running_loop().sock_accept(listener))
            client = await Client.connect(path)
            sock, _ = await accepting
            await a.take(sock)
            async with client:
                await body(client, a, b)
        finally:
            listener.close()

    loop.run_until_complete(main())


def test_bytes_sent_while_handing_over_wait_in_the_kernel_for_the_new_owner(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    async def body(client: Client, a: Worker, b: Worker) -> None:
        token = await client.prepare_conf([("who", "")])
        first = await client.call(token, HTTPRequest(path="/"))
        assert isinstance(first.action, Stop) and first.action.body == b"a"

        fd = a.conn().pause_for_handover()
        assert fd is not None
        # APISIX sends the next call now: worker a reads nothing more.
        call = asyncio.ensure_future(client.call(token, HTTPRequest(path="/")))
        await asyncio.sleep(0.05)
        assert not call.done()

        inbox = Mailbox(str(tmp_path), pid=os.getpid())
        outbox = Mailbox(str(tmp_path))
        assert outbox.send_connection(os.getpid(), fd)
        a.conn().close()  # worker a's descriptor only
        message = inbox.receive()
        assert message is not None
        (taken,), _ = message
        await b.take(socket.socket(fileno=taken))

        second = await asyncio.wait_for(call, 2.0)  # answered by the new owner
        assert isinstance(second.action, Stop) and second.action.body == b"b"
        await wait_for(lambda: not a.state.connections)
        assert len(b.state.connections) == 1
        third = await client.call(token, HTTPRequest(path="/"))  # never closed
        assert isinstance(third.action, Stop) and third.action.body == b"b"
        inbox.close()
        outbox.close()

    run(loop, tmp_path, body)


def test_no_hand_over_in_the_middle_of_a_frame(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    async def body(client: Client, a: Worker, b: Worker) -> None:
        token = await client.prepare_conf([("who", "")])
        frame = encode_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(path="/")))
        conn = a.conn()
        reads = conn.reads
        await client.send_raw(frame[:7])
        await wait_for(lambda: conn.reads > reads)
        assert conn.pause_for_handover() is None
        await client.send_raw(frame[7:])
        kind, _ = await client.read_frame()
        assert kind == RPC_HTTP_REQ_CALL
        assert conn.pause_for_handover() is not None  # idle again
        conn.resume_after_handover()

    run(loop, tmp_path, body)


def test_no_hand_over_while_a_call_is_in_flight(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    async def body(client: Client, a: Worker, b: Worker) -> None:
        token = await client.prepare_conf([("asks-var", "")])
        frame = encode_frame(RPC_HTTP_REQ_CALL, build_req_call(token, HTTPRequest(path="/")))
        await client.send_raw(frame)
        kind, _ = await client.read_frame()  # the plugin asks for var x and waits
        assert kind == RPC_EXTRA_INFO and a.state.busy == 1
        conn = a.conn()
        assert conn.pause_for_handover() is None
        await client.send_frame(RPC_EXTRA_INFO, build_extra_info_resp(b"1"))
        kind, _ = await client.read_frame()
        assert kind == RPC_HTTP_REQ_CALL and a.state.busy == 0
        assert conn.pause_for_handover() is not None
        conn.resume_after_handover()

    run(loop, tmp_path, body)

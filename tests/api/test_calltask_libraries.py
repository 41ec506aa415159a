"""Async libraries plugins use, run inside a CallTask (as an ``async def filter``
runs): anyio (under httpx) reads asyncio.Task internals (``_fut_waiter``,
``_must_cancel``, weak references to the task), aiohttp's timeouts need the
current task. Each test talks to a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio
import httpx
import pytest
from aiohttp import web

from tests.api.test_calltask import Harness


class Server:
    """aiohttp app on 127.0.0.1: /ok answers at once, /slow when the test ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        app = web.Application()
        app.router.add_get("/ok", self._ok)
        app.router.add_get("/slow", self._slow)
        self.runner = web.AppRunner(app)
        self.port = 0
        self.released = asyncio.Event()

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _slow(self, request: web.Request) -> web.Response:
        await self.released.wait()  # until the test ends: clients time out first
        return web.Response(text="late")

    def start(self) -> None:
        async def go() -> None:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]

        self.loop.run_until_complete(go())

    def stop(self) -> None:
        self.released.set()
        self.loop.run_until_complete(self.runner.cleanup())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server(loop: asyncio.AbstractEventLoop) -> Iterator[Server]:
    srv = Server(loop)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def run_call(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 5.0) -> Any:
    harness = Harness(loop)
    harness.start(coro)
    result, exc = harness.wait(timeout)
    if exc is not None:
        raise exc
    return result


def test_httpx_get(loop: asyncio.AbstractEventLoop, server: Server) -> None:
    async def plugin() -> tuple[int, str]:
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url("/ok"))
        return response.status_code, response.text

    assert run_call(loop, plugin()) == (200, "ok")


def test_httpx_timeout(loop: asyncio.AbstractEventLoop, server: Server) -> None:
    async def plugin() -> str:
        async with httpx.AsyncClient(timeout=0.1) as client:
            try:
                await client.get(server.url("/slow"))
            except httpx.TimeoutException as exc:
                return type(exc).__name__
        return "no timeout"

    assert run_call(loop, plugin()) == "ReadTimeout"


def test_anyio_cancel_scope_task_group_and_thread(loop: asyncio.AbstractEventLoop) -> None:
    seen: list[str] = []

    async def child(name: str) -> None:
        await anyio.sleep(0.01)
        seen.append(name)

    async def plugin() -> str:
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep(5)
        assert scope.cancelled_caught
        try:
            with anyio.fail_after(0.05):
                await anyio.sleep(5)
        except TimeoutError:
            seen.append("fail_after")
        async with anyio.create_task_group() as group:
            group.start_soon(child, "a")
            group.start_soon(child, "b")
        value: str = await anyio.to_thread.run_sync(lambda: threading.current_thread().name)
        return value

    thread_name = run_call(loop, plugin())
    assert thread_name != threading.current_thread().name
    assert seen == ["fail_after", "a", "b"] or seen == ["fail_after", "b", "a"]


def test_anyio_scope_cancels_a_slow_httpx_request(
    loop: asyncio.AbstractEventLoop,
    server: Server,
) -> None:
    async def plugin() -> float:
        t0 = time.monotonic()
        async with httpx.AsyncClient() as client:
            with anyio.move_on_after(0.1):
                await client.get(server.url("/slow"))
        return time.monotonic() - t0

    assert run_call(loop, plugin()) < 2.0


def test_call_cancelled_during_an_httpx_request(
    loop: asyncio.AbstractEventLoop,
    server: Server,
) -> None:
    """The runner's call deadline cancels the CallTask: the request is abandoned."""
    harness = Harness(loop)

    async def plugin() -> str:
        async with httpx.AsyncClient() as client:
            await client.get(server.url("/slow"))
        return "finished"

    task = harness.start(plugin())
    loop.call_later(0.1, task.cancel)
    result, exc = harness.wait(3.0)
    assert result is None and isinstance(exc, asyncio.CancelledError)


def test_aiohttp_client_timeout(loop: asyncio.AbstractEventLoop, server: Server) -> None:
    async def plugin() -> tuple[str, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url("/ok")) as response:
                body = await response.text()
            try:
                timeout = aiohttp.ClientTimeout(total=0.1)
                async with session.get(server.url("/slow"), timeout=timeout):
                    pass
            except TimeoutError:
                return body, "timeout"
        return body, "no timeout"

    assert run_call(loop, plugin()) == ("ok", "timeout")

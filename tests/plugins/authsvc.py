"""A real HTTP auth service for the async-auth tests, run as a subprocess.

``python authsvc.py`` listens on a free loopback port and prints
``listening <port>`` once it accepts. ``GET /auth`` decides by the token in
``Authorization`` (``Bearer <kind>-<anything>``):

====================  ===================================================
``ok-<user>``         200, ``X-User-Id: <user>``, ``Set-Cookie``
``tenant-<x>``        200 if ``X-Tenant: acme`` was forwarded, else 403
``deny-<x>``          401
``forbid-<x>``        403
``err-<x>``           500
``redirect-<x>``      302 to ``/login``
``slow-<x>``          200 after 2 s
====================  ===================================================

Every 200 also echoes ``X-Seen-Tenant`` and ``X-Seen-Cookie`` (what the
service received). ``GET /stats?token=<token>`` answers how many times
``/auth`` saw that exact Authorization value.
"""

from __future__ import annotations

import asyncio
import collections
import signal

from aiohttp import web

calls: collections.Counter[str] = collections.Counter()


def _echo(request: web.Request, headers: dict[str, str]) -> dict[str, str]:
    headers["X-Seen-Tenant"] = request.headers.get("X-Tenant", "")
    headers["X-Seen-Cookie"] = request.headers.get("Cookie", "")
    return headers


async def auth(request: web.Request) -> web.Response:
    token = request.headers.get("Authorization", "")
    calls[token] += 1
    kind, _, rest = token.removeprefix("Bearer ").partition("-")
    if kind == "ok":
        resp = web.Response(text="ok", headers=_echo(request, {"X-User-Id": rest}))
        resp.set_cookie("session", rest)
        return resp
    if kind == "tenant":
        if request.headers.get("X-Tenant") != "acme":
            return web.Response(status=403)
        return web.Response(text="ok", headers=_echo(request, {"X-User-Id": rest}))
    if kind == "slow":
        await asyncio.sleep(2)
        return web.Response(text="late", headers={"X-User-Id": rest})
    if kind == "redirect":
        return web.Response(status=302, headers={"Location": "/login"})
    status = {"deny": 401, "forbid": 403, "err": 500}.get(kind, 401)
    return web.Response(status=status, text="no")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"calls": calls[request.query.get("token", "")]})


async def main() -> None:
    app = web.Application()
    app.router.add_get("/auth", auth)
    app.router.add_get("/stats", stats)
    # A client that gave up (the plugin timed out) cancels its handler, and
    # stopping does not wait for a slow one to finish.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())

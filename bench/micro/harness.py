"""The runner's hot path in one process, without sockets: for profiling and
for comparing two versions of the code side by side.

:class:`InProcess` builds a worker's :class:`~runner.server.conn.Connection` around a
fake transport, prepares one route, and feeds it the load generator's
realistic HTTPReqCall frame (built with the flatc-generated code, as APISIX
would). Whatever the runner writes back is checked for its type only. ExtraInfo
questions are answered on the next loop iteration, as a reply from APISIX
would arrive, so an ``async def`` chain goes through the real call machinery (CallTask).

What this measures is the runner's Python cost per call: decoding, the conf
lookup, the chain, the reply. The kernel's share (one read and one write per
call, the epoll wake-up) comes on top in a real run; bench/loadgen.py sees both.

    python -m bench.micro.harness [WORKLOAD ...] [--calls N]
        [--profile [--sort tottime] | --breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import fake_runner, loadgen
from runner.api.discovery import bundled_plugins_dir, load_plugins
from runner.api.plugin import Plugin
from runner.compat import ADAPTERS
from runner.conf.confstore import ConfStore, RawConf
from runner.server.conn import Connection, ServerState

# The target table's workloads (bench/loadgen.py), plus the bundled rewrite
# plugin with constant values for comparison; stop-64 differs from stop only
# in its number of connections.
WORKLOADS: dict[str, tuple[tuple[str, str], ...]] = {
    name: w.conf for name, w in loadgen.WORKLOADS.items() if name != "stop-64"
}
WORKLOADS["rewrite-static"] = (
    ("rewrite", '{"headers":{"X-A":"1","X-B":"2"},"args":{"lang":"en"}}'),
)
# The gateway rig's header-rewrite route (bench/gateway/routes.yaml).
WORKLOADS["header-rewrite"] = (
    (
        "header-rewrite",
        '{"add_headers":{"X-Api-Version":"2","X-Tenant":"acme"},"remove_headers":["X-Debug"]}',
    ),
)
VARS = loadgen.SUITE_VARS
# The bare-loop references of the target table (bench/fake_runner.py's
# connection, fed the same way): what a call costs with no runner work at all.
FLOORS: dict[str, str | None] = {"floor-stop": None, "floor-var": "remote_addr"}


class MemoryBackend:
    """A conf backend in a dict (one process; the runner's own is SQLite)."""

    def __init__(self) -> None:
        self.confs: dict[int, tuple[str, RawConf]] = {}

    def issue(self, key: str, conf: RawConf) -> int:
        for token, found in self.confs.items():
            if found == (key, conf):
                return token
        token = len(self.confs) + 1
        self.confs[token] = (key, conf)
        return token

    def lookup(self, token: int) -> tuple[str, RawConf] | None:
        return self.confs.get(token)

    def touch(self, token: int) -> None:
        pass


_PLUGINS: dict[str, Plugin] = {}


def plugins() -> dict[str, Plugin]:
    """The bundled plugins and the bench plugins, loaded once per process."""
    if not _PLUGINS:
        dirs = [bundled_plugins_dir(), Path(loadgen.BENCH_PLUGINS)]
        _PLUGINS.update(load_plugins(dirs, entry_points=False, adapters=ADAPTERS))
    return _PLUGINS


def new_store() -> ConfStore:
    return ConfStore(plugins(), MemoryBackend())


class FakeTransport:
    """Collects what the connection writes and hands it to ``on_write``."""

    def __init__(self, on_write: Callable[[bytes | bytearray], None]) -> None:
        self.write = on_write
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class InProcess:
    """One connection of a worker, fed from memory."""

    conn: Connection | fake_runner.FakeConn

    def __init__(self, conf: tuple[tuple[str, str], ...], body_size: int = 0) -> None:
        self.store = new_store()
        token = self.store.prepare(loadgen.PREPARE_KEY, conf)
        self.call = loadgen.build_call(loadgen.realistic_request(body_size), token)
        self.answers = loadgen.ExtraInfoAnswers(VARS, body_size)
        self.conn = Connection(ServerState(self.store, call_timeout=10.0))
        self._start()

    def _start(self) -> None:
        self.conn.connection_made(FakeTransport(self._on_write))  # type: ignore[arg-type]
        self.replies = 0
        self.last_reply = b""
        self.left = 0
        self.done: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        conn = self.conn
        buf = conn.get_buffer(-1)
        buf[: len(data)] = data
        conn.buffer_updated(len(data))

    def _on_write(self, frame: bytes | bytearray) -> None:
        kind = frame[0]
        if kind == loadgen.RPC_EXTRA_INFO:
            reply = self.answers.answer(bytes(frame[4:]))
            assert reply is not None
            asyncio.get_running_loop().call_soon(self.feed, reply)
            return
        if kind != loadgen.RPC_HTTP_REQ_CALL:
            raise AssertionError(f"runner answered with frame type {kind}: {bytes(frame)!r}")
        self.replies += 1
        self.last_reply = bytes(frame)
        if self.done is not None:
            self.left -= 1
            if self.left > 0:
                asyncio.get_running_loop().call_soon(self.feed, self.call)
            elif not self.done.done():
                self.done.set_result(None)

    def run_sync(self, n: int) -> None:
        """n calls of a chain of plain ``def`` filters (answered inline)."""
        feed, call = self.feed, self.call
        for _ in range(n):
            feed(call)

    async def run_async(self, n: int) -> None:
        """n calls one after the other, through the event loop."""
        self.left = n
        self.done = asyncio.get_running_loop().create_future()
        self.feed(self.call)
        await self.done
        self.done = None


class FloorInProcess(InProcess):
    """The bare-loop reference (bench/fake_runner.py), fed like the runner."""

    def __init__(self, extra_var: str | None) -> None:
        # No conf store: the bare loop answers every call alike.
        self.call = loadgen.build_call(loadgen.realistic_request(0), 1)
        self.answers = loadgen.ExtraInfoAnswers(VARS, 0)
        self.conn = fake_runner.FakeConn(fake_runner.Replies(extra_var, 0))
        self.is_async = extra_var is not None
        self._start()


def in_process(name: str) -> InProcess:
    """The runner fed a workload's chain, or a floor reference by its name."""
    if name in FLOORS:
        return FloorInProcess(FLOORS[name])
    return InProcess(WORKLOADS[name])


def run_calls(bench: InProcess, n: int, is_async: bool) -> None:
    if is_async:
        uvloop.run(bench.run_async(n))
    else:
        bench.run_sync(n)


def is_async_chain(bench: InProcess) -> bool:
    if isinstance(bench, FloorInProcess):
        return bench.is_async
    chain = bench.store.get(1)
    assert chain is not None
    return chain.req_async


def measure(name: str, calls: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` process CPU microseconds per call."""
    bench = in_process(name)
    is_async = is_async_chain(bench)
    run_calls(bench, min(calls, 2000), is_async)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        run_calls(bench, calls, is_async)
        best = min(best, (time.process_time() - t0) / calls * 1e6)
    return best


def _best(fn: Callable[[], object], calls: int, repeat: int = 7) -> float:
    """Best-of-``repeat`` process CPU microseconds of one ``fn()``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls * 1e6)
    return best


async def _never_asked(info_type: int, name: str | None) -> bytes | None:
    raise AssertionError("a sync chain asked for ExtraInfo")


def breakdown(name: str, calls: int) -> list[tuple[str, float]]:
    """The stages of one call of a plain ``def`` chain, each timed alone
    (CPU us, best of 7); the connection and dispatch glue is what is left of
    the whole call once they are taken out."""
    from runner.api import dispatch
    from runner.api.http import Request, Response
    from runner.proto import FrameDecoder, ReqCallView

    bench = InProcess(WORKLOADS[name])
    if is_async_chain(bench):
        raise ValueError(f"{name} is an async chain; the breakdown covers sync chains")
    chain = bench.store.get(1)
    assert chain is not None
    frame, size = bench.call, len(bench.call)
    payload = memoryview(frame)[4:]
    view = ReqCallView(payload)
    decoder = FrameDecoder()

    def read() -> object:
        buf = decoder.get_buffer()
        buf[:size] = frame
        decoder.advance(size)
        got = decoder.next_frame()
        decoder.next_frame()
        return got

    def objects() -> object:
        return Request(view, _never_asked, 1), Response()

    def plugins() -> tuple[Request, Response]:
        request, response = Request(view, _never_asked, 1), Response()
        for step in chain.req:
            step.fn(step.conf, request, response)
            if response.stopped:
                break
        return request, response

    request, response = plugins()

    def reply() -> object:
        return dispatch.req_reply(request, response)

    run_calls(bench, 2000, False)  # warm-up
    stages = [
        ("read into the buffer, cut the frame (FrameDecoder)", _best(read, calls)),
        ("ReqCallView: id + conf token", _best(lambda: ReqCallView(payload), calls)),
        ("conf lookup (ConfStore.get)", _best(lambda: bench.store.get(1), calls)),
        ("Request + Response objects", _best(objects, calls)),
    ]
    stages.append(("the plugins' filter()s", _best(plugins, calls) - stages[-1][1]))
    stages.append(("reply: changes + frame (dispatch.req_reply)", _best(reply, calls)))
    total = _best(lambda: bench.feed(frame), calls)
    stages.append(("connection + dispatch glue (the rest)", total - sum(t for _, t in stages)))
    stages.append(("total, in-process (Connection.buffer_updated)", total))
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro.harness", description=__doc__)
    known = [*WORKLOADS, *FLOORS]
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=", ".join(known))
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--profile", action="store_true", help="cProfile the calls instead")
    p.add_argument(
        "--breakdown", action="store_true", help="time each stage of a call (sync chains)"
    )
    p.add_argument("--sort", default="tottime")
    p.add_argument("--limit", type=int, default=25)
    a = p.parse_args(argv)
    if unknown := set(a.workloads) - set(known):
        p.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(known)}")
    for name in a.workloads or list(WORKLOADS):
        if a.breakdown:
            print(f"=== {name}: CPU us per call, each stage timed alone (best of 7)")
            for stage, us in breakdown(name, a.calls):
                print(f"  {us:6.2f}  {stage}")
        elif a.profile:
            bench = in_process(name)
            is_async = is_async_chain(bench)
            run_calls(bench, 1000, is_async)
            prof = cProfile.Profile()
            prof.runcall(run_calls, bench, a.calls, is_async)
            print(f"=== {name}: {a.calls} calls")
            pstats.Stats(prof, stream=sys.stdout).sort_stats(a.sort).print_stats(a.limit)
        else:
            print(f"{name:<16} {measure(name, a.calls):7.2f} us/call (in-process, best of 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

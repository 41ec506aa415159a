"""One APISIX connection: the only asyncio glue between the socket and the codec.

Frames are handled strictly in order. Calls whose plugins are all plain
``def`` run inline inside ``buffer_updated`` and answer before the next read
(no task, no copy of the frame). A chain with an ``async def`` plugin runs as
a task; while it runs, the only frames APISIX may send on this connection are
ExtraInfo replies (type 3), which resolve the task's pending questions in
order. Anything else then is a protocol violation and closes the connection.

States (one table, as h11 does)::

    IDLE --call, sync chain--> IDLE           (answered inline)
    IDLE --call, async chain--> BUSY --final frame written--> IDLE
    BUSY --type 3--> BUSY                     (answer to the oldest question)
    BUSY --any other frame--> CLOSED
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from time import monotonic, perf_counter
from typing import Any, Final, cast

from runner.api import dispatch
from runner.api.calltask import CallOwner, CallTask, StepGuard
from runner.api.http import Ask
from runner.api.plugin import ConfError
from runner.api.stepping import Asked, answer, copy_context
from runner.conf.confstore import ConfStore
from runner.ops import logs
from runner.ops.logs import LogLimiter
from runner.ops.metrics import BUCKETS, RPC_NAMES
from runner.proto import (
    DecodeError,
    FrameDecoder,
    PrepareConfReq,
    ReqCallView,
    RespCallView,
    RpcType,
    build_extra_info,
    build_prepare_conf_resp,
    extra_info_result,
)

log = logging.getLogger("runner.conn")
# Lines that may come once per call (malformed frames, rejected configs APISIX
# retries, deadlines): the first of a kind in full, then a count.
limited = LogLimiter(log)

# RPC names in metrics.
PREPARE_CONF: Final = RPC_NAMES[RpcType.PREPARE_CONF]
REQ_CALL: Final = RPC_NAMES[RpcType.HTTP_REQ_CALL]
RESP_CALL: Final = RPC_NAMES[RpcType.HTTP_RESP_CALL]
_EXTRA_INFO: Final = int(RpcType.EXTRA_INFO)  # an enum member costs an attribute lookup
_REQ_CALL_FRAME: Final = int(RpcType.HTTP_REQ_CALL)
# A frame's payload: bytes when it fit the receive buffer, a view of its own
# buffer when it did not (FrameDecoder.next_payload).
Payload = bytes | memoryview
_OUTCOMES: Final = dispatch.OUTCOMES
# Final: compiled, a module attribute read per call is a dict lookup, and a
# loop's time() a method lookup. Call deadlines are on the monotonic clock
# (uvloop's time() is that clock, cached per loop round).
# Python 3.11's get_running_loop() makes a getpid() system call each time:
# a connection asks once, in connection_made, and keeps the loop (None when
# a harness or test makes it with no loop running: then each async call asks,
# as such a driver may run it in one loop after another).
_get_running_loop: Final = asyncio.get_running_loop
_running_loop_or_none: Final = asyncio._get_running_loop
_TASK_CONTEXT: Final = logs.task_context
_answer_question: Final = answer
_copy_context: Final = copy_context
_monotonic: Final = monotonic


class ServerState(StepGuard):
    """What all connections of a worker share."""

    def __init__(self, store: ConfStore, call_timeout: float) -> None:
        super().__init__()
        self.store = store
        self.metrics = store.metrics
        self.call_timeout = call_timeout
        self.connections: set[Connection] = set()
        # Told when a connection comes or goes (the pool publishes the count).
        self.on_count: Callable[[], None] | None = None
        self.async_calls = 0
        self.busy = 0  # connections with a call in flight
        self.idle_waiter: asyncio.Future[None] | None = None
        # Call deadlines are checked by one sweep every `sweep_interval` while
        # calls are in flight, not by a timer per call: a uvloop TimerHandle
        # costs ~2 us to arm and cancel, a third of a whole call. Nor does a
        # call read the clock: the first sweep after it started notes the
        # time (the call started before it, by at most one interval while the
        # loop keeps time), and a sweep at least call_timeout after that one
        # ends it. A call thus ends between call_timeout and call_timeout +
        # 2 * sweep_interval, never before.
        self.sweep_interval = min(0.05, call_timeout / 40)
        self.sweeping = False

    def arm_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule the next deadline sweep (an async call starts while none
        is scheduled, or the last sweep left calls in flight)."""
        self.sweeping = True
        loop.call_later(self.sweep_interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = _monotonic()
        for conn in list(self.connections):
            conn.expire_if_late(now, self.call_timeout)
        self.sweeping = False
        if self.busy:
            self.arm_sweep(loop)

    @property
    def calls(self) -> int:
        return self.inline_calls + self.async_calls

    def call_done(self) -> None:
        self.busy -= 1
        waiter = self.idle_waiter
        if self.busy == 0 and waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.BufferedProtocol):
    __slots__ = (
        "_ask_fn", "_call", "_call_id", "_call_rpc", "_call_t0", "_context", "_decoder",
        "_ends", "_expired", "_handlers", "_late", "_loop", "_mark", "_metrics", "_question",
        "_questions", "_seen_at", "_send", "_state", "_store", "_transport", "reads",
    )  # fmt: skip

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._store = state.store
        self._metrics = state.metrics
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        # Writes a frame: the transport's write, bound once in connection_made
        # (compiled, a call through `self._transport.write` looks the method
        # up by name each time, ~150 instructions a frame); with no transport
        # (before it, after connection_lost), nothing.
        self._send: Callable[[bytes | bytearray], object] = _unsent
        self._loop: asyncio.AbstractEventLoop | None = None  # set by connection_made
        self._call: CallTask | None = None  # the async call in flight
        # Its id, RPC name and start (three fields, not a tuple per call).
        self._call_id = 0
        self._call_rpc = ""
        self._call_t0 = 0.0
        self._seen_at = 0.0  # monotonic() of the first sweep that saw the call; 0: none yet
        # The call's deadline cancelled it: the plugin it was in ("" unknown).
        self._expired: str | None = None
        # Answers still due to questions of calls that ended without them
        # (a plugin's own timeout, the call deadline): APISIX answers every
        # question it read, so they arrive after the call; they are dropped.
        self._late = 0
        # The questions APISIX has still to answer, oldest first: the oldest
        # in a field of its own, the others (rare) in a list. A list alone
        # would grow and shrink its storage (an allocation and a realloc)
        # for the one question of a usual call.
        self._question: Asked | None = None
        self._questions: list[Asked] = []
        self.reads = 0  # reads so far: a retiring worker tells idle connections by it
        # The other frames a connection answers (buffer_updated calls
        # _req_call, the usual frame, directly).
        self._handlers: dict[int, Callable[[Payload], None]] = {
            RpcType.PREPARE_CONF: self._prepare_conf,
            RpcType.HTTP_RESP_CALL: self._resp_call,
        }
        # The request and plugin its call runs now, for log lines: each call
        # runs in a copy of this context, which holds the mark (dispatch.StepMark).
        self._mark = dispatch.StepMark()
        self._context = contextvars.copy_context()
        self._context.run(_TASK_CONTEXT.set, self._mark)
        # The bound methods every call hands on, made once, not once per call.
        self._ask_fn: Ask = self._ask
        # Where its calls end (CallTask's owner): _finish.
        self._ends: CallOwner = _CallEnds(self)

    # -- asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same API.
        self._transport = cast(asyncio.Transport, transport)
        self._send = self._transport.write
        self._loop = _running_loop_or_none()
        self._state.connections.add(self)
        if self._metrics is not None:
            self._metrics.connections += 1
        if self._state.on_count is not None:
            self._state.on_count()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        decoder = self._decoder
        decoder.advance(nbytes)
        self.reads += 1
        while (payload := decoder.next_payload()) is not None:
            rpc_type = decoder.frame_type
            if self._call is not None:
                self._answer(rpc_type, payload)
            elif rpc_type == _REQ_CALL_FRAME:  # the usual frame: a direct call, no table lookup
                self._req_call(payload)
            elif (handler := self._handlers.get(rpc_type)) is not None:
                handler(payload)
            elif rpc_type == _EXTRA_INFO and self._late:
                self._late -= 1  # an answer to a question of a call that has ended
            else:
                self._malformed("frame", ValueError(f"unknown frame type {rpc_type}"))
                self._send(dispatch.ERR_BAD_REQUEST)

    def eof_received(self) -> bool:
        if self._decoder.pending():
            what = "connection closed in the middle of a frame"
            limited.warning(what, "%s", what)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # The handler table, the bound method and the call owner hold self:
        # reference cycles that would keep this connection's buffers (up to
        # 16 MiB) alive until the cyclic GC runs. Break them now.
        self._handlers = {}
        self._ask_fn = _closed_ask
        self._ends = _NO_CALLS
        self._send = _unsent  # the bound write holds the transport, which holds us
        self._state.connections.discard(self)
        if self._metrics is not None:
            self._metrics.connections -= 1
        if self._state.on_count is not None:
            self._state.on_count()
        self._transport = None
        if self._call is not None:
            self._call.cancel()
        for question in self._unanswered():
            if not question.done():
                question.set_exception(ConnectionError("APISIX closed the connection"))
        self._question = None
        self._questions.clear()

    # -- frames

    def _reply(self, rpc: str, frame: bytes | bytearray, t0: float) -> None:
        """Write a call's final frame; with metrics on, count it by outcome."""
        self._send(frame)
        metrics = self._metrics
        if metrics is not None:
            seconds = perf_counter() - t0
            stats = metrics.rpc[rpc]
            error = _OUTCOMES.get(id(frame))  # the shared error frames
            if error is None:
                stats.ok += 1
            else:
                stats.errors[error] = stats.errors.get(error, 0) + 1
            stats.counts[bisect_left(BUCKETS, seconds)] += 1
            stats.sum += seconds

    def _malformed(self, what: str, exc: Exception) -> None:
        limited.warning(f"{what}: malformed request", "%s: malformed request: %s", what, exc)
        if self._metrics is not None:
            self._metrics.malformed += 1

    def _not_found(self) -> bytes:
        if self._metrics is not None:
            self._metrics.conf_not_found += 1
        return dispatch.ERR_TOKEN_NOT_FOUND

    def _prepare_conf(self, payload: Payload) -> None:
        t0 = perf_counter()
        key = "?"
        try:
            req = PrepareConfReq(payload)
            key = req.key
            token = self._store.prepare(key, req.conf)
        except DecodeError as exc:
            self._malformed("PrepareConf", exc)
            frame: bytes | bytearray = dispatch.ERR_BAD_REQUEST
        except ConfError as err:  # a name per except: mypyc types each name once
            # APISIX answers 503 for this route and retries on its next
            # request; the log names key, plugin and field, once per interval.
            what = f"PrepareConf for route key {key} rejected: {err}"
            limited.error(what, "%s", what)
            frame = dispatch.ERR_BAD_REQUEST
        else:
            frame = build_prepare_conf_resp(token)
        self._reply(PREPARE_CONF, frame, t0)

    def _req_call(self, payload: Payload) -> None:
        t0 = perf_counter() if self._metrics is not None else 0.0
        try:
            view = ReqCallView(payload)
        except DecodeError as exc:
            self._malformed("HTTPReqCall", exc)
            self._reply(REQ_CALL, dispatch.ERR_BAD_REQUEST, t0)
            return
        chain = self._store.get(view.conf_token)
        if chain is None:
            self._reply(REQ_CALL, self._not_found(), t0)
        elif chain.req_async:
            work = dispatch.run_req_async(chain, view, self._ask_fn, self._mark)
            self._start(work, view.id, REQ_CALL, t0)
        else:
            state = self._state
            state.inline_calls += 1  # the watchdog tells a stuck call by these two
            state.inline = True
            try:
                frame = dispatch.run_req_sync(chain, view, self._ask_fn)
            except Exception as err:  # not `exc`: mypyc typed that name DecodeError above
                frame = dispatch.failure_frame(err, f"request {view.id}", chain.key)
            state.inline = False
            if self._metrics is None:
                self._send(frame)  # _reply without metrics: a call less
            else:
                self._reply(REQ_CALL, frame, t0)

    def _resp_call(self, payload: Payload) -> None:
        t0 = perf_counter() if self._metrics is not None else 0.0
        try:
            view = RespCallView(payload)
            view.validate()
        except DecodeError as exc:
            self._malformed("HTTPRespCall", exc)
            self._reply(RESP_CALL, dispatch.ERR_BAD_REQUEST, t0)
            return
        chain = self._store.get(view.conf_token)
        if chain is None:
            self._reply(RESP_CALL, self._not_found(), t0)
        else:
            work = dispatch.run_resp(chain, view, self._ask_fn, self._mark)
            self._start(work, view.id, RESP_CALL, t0)

    # -- async calls and ExtraInfo

    def _start(
        self, work: Coroutine[Any, Any, bytes | bytearray], req_id: int, rpc: str, t0: float
    ) -> None:
        state = self._state
        state.busy += 1
        state.async_calls += 1
        self._call_id = req_id
        self._call_rpc = rpc
        self._call_t0 = t0
        self._expired = None
        loop = self._loop
        if loop is None:  # made with no loop running (a harness, a test): ask each time
            loop = _get_running_loop()
        context = _copy_context(self._context)
        call = self._call = CallTask(work, loop, self._ends, state, context)
        self._seen_at = 0.0
        if not state.sweeping:
            state.arm_sweep(loop)
        call.start()  # runs up to the first ExtraInfo question, or to the end

    def expire_if_late(self, now: float, timeout: float) -> None:
        """Cancel the call in flight if it has run ``timeout`` seconds since a
        sweep first saw it (ServerState's sweep, at ``now``)."""
        call = self._call
        if call is None or self._expired is not None:
            return
        if self._seen_at == 0.0:
            self._seen_at = now
        elif now - self._seen_at >= timeout:
            self._expired = dispatch.running_plugin(call) or ""
            call.cancel()

    def _finish(self, frame: bytes | bytearray | None, exc: BaseException | None) -> None:
        """The call's coroutine ended (CallTask's on_done)."""
        req_id, rpc, t0 = self._call_id, self._call_rpc, self._call_t0
        expired = self._expired
        self._end_call()
        if exc is None:
            assert frame is not None
        elif isinstance(exc, asyncio.CancelledError):
            if self._transport is None:
                return  # the connection is gone: nobody to answer
            if expired is not None:
                plugin = repr(expired) if expired else "(unknown)"
                limited.error(
                    f"plugin {plugin} did not finish within call_timeout",
                    "request %d: plugins did not finish within %.1f s: plugin %s was still "
                    "running; answering SERVICE_UNAVAILABLE",
                    req_id, self._state.call_timeout, plugin,
                )  # fmt: skip
            else:  # a plugin cancelled its own call: APISIX still needs an answer
                limited.error(
                    "the call was cancelled",
                    "request %d: the call was cancelled; answering SERVICE_UNAVAILABLE", req_id,
                )  # fmt: skip
            frame = dispatch.ERR_UNAVAILABLE
        elif isinstance(exc, Exception):
            frame = dispatch.failure_frame(exc, f"request {req_id}")
        else:
            return  # KeyboardInterrupt or SystemExit: the worker is going down
        self._reply(rpc, frame, t0)

    def _end_call(self) -> None:
        self._call = None
        self._mark.now = None
        if self._question is not None:
            self._late += 1 + len(self._questions)
            self._question = None
            self._questions.clear()
        self._state.call_done()

    def _unanswered(self) -> list[Asked]:
        return [] if self._question is None else [self._question, *self._questions]

    def _ask(self, info_type: int, name: str | None) -> Asked:
        """Send an ExtraInfo request; awaiting what this returns gives APISIX's
        answer. Several may be in flight: APISIX answers them in order."""
        if self._call is None:
            raise RuntimeError("request.var() and request.body() need an `async def filter`")
        question = self._call.question()
        if self._question is None:
            self._question = question
        else:
            self._questions.append(question)
        if self._metrics is not None:
            self._metrics.count_extra_info(info_type)
        self._send(build_extra_info(info_type, name))
        return question

    def _answer(self, rpc_type: int, payload: Payload) -> None:
        question = self._question
        if rpc_type != _EXTRA_INFO or question is None:
            limited.warning(
                f"frame type {rpc_type} arrived while a call was in flight",
                "frame type %d arrived while a call was in flight; closing the connection",
                rpc_type,
            )  # fmt: skip
            self.close()
            return
        self._question = self._questions.pop(0) if self._questions else None
        # Not settled: cancelled (the call's deadline), and the answer is late.
        try:
            settled = _answer_question(question, extra_info_result(payload))
        except DecodeError as exc:
            settled = not question.done()
            if settled:
                question.set_exception(exc)
        if settled and self._call is not None:
            self._call.answered(question)  # resumes the plugin now, not a loop round later

    @property
    def idle(self) -> bool:
        """No call in flight and no partial frame: safe to close."""
        return self._call is None and not self._decoder.pending()

    def pause_for_handover(self) -> int | None:
        """At an idle point, stop reading and give the socket's descriptor for
        another worker to take over; None (and nothing changed) if this is no
        idle point. Idle: no call in flight, no partial frame read, no answer
        due to a call that ended, nothing left unwritten. Once reading is
        paused, whatever APISIX sends waits in the kernel for the new owner."""
        transport = self._transport
        if transport is None or not self.idle or self._late:
            return None
        if transport.get_write_buffer_size():
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        transport.pause_reading()
        return int(sock.fileno())

    def resume_after_handover(self) -> None:
        """The hand-over failed: this worker keeps serving the connection."""
        if self._transport is not None:
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _unsent(frame: bytes | bytearray) -> None:
    """A connection's write while it has no transport: the frame goes nowhere."""


def _closed_ask(info_type: int, name: str | None) -> Asked:
    raise ConnectionError("APISIX closed the connection")


class _CallEnds(CallOwner):
    """Where a connection's calls end: its ``_finish``. A call in flight when
    the connection closes still ends there (the worker counts it done)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call_ended(self, result: Any, error: BaseException | None) -> None:
        self.conn._finish(result, error)


# What a closed connection hands on instead (no call starts there any more).
_NO_CALLS: Final = CallOwner()


def make_factory(state: ServerState) -> Callable[[], Any]:
    return lambda: Connection(state)

"""A call's coroutine, stepped in place: what an asyncio.Task does, minus two loop rounds.

Why not a Task: a Task takes its first step one loop round after it is
created, and after each ExtraInfo answer it wakes one more loop round later
(the future schedules its wakeup with ``call_soon``). The answer arrives in
``buffer_updated``; resuming the coroutine right there, and starting it right
where the call was read, saves both rounds: a call that asks one variable went
from 17.5 to about 15 us of CPU (bench/README.md).

It still is the current task for the plugin's code: while a step runs,
``asyncio.current_task()`` returns the CallTask (registered with asyncio's own
``_enter_task``), so ``asyncio.timeout()``, ``wait_for``, aiohttp and redis
work, and it can be cancelled (``cancel``/``cancelling``/``uncancel`` as
Task's). Futures other than the connection's own questions (sleeps, sockets,
child tasks, gather) wake it through the loop, exactly as they wake a Task.
Each CallTask runs in its own copy of the context, as a Task does. It also has
a Future's side (done callbacks, result) and the Task internals anyio reads
(``_fut_waiter``, ``_must_cancel``, ``_callbacks``, weak references), so
httpx and anyio work in plugins (tests/test_calltask_libraries.py).
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import tasks
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

# asyncio's own bookkeeping of the current task (C functions); typed for any
# task-like object, which is what they accept.
_enter_task: Callable[[asyncio.AbstractEventLoop, Any], None] = tasks._enter_task
_leave_task: Callable[[asyncio.AbstractEventLoop, Any], None] = tasks._leave_task
# loop -> its running task (asyncio.current_task() in 3.11 is Python around this).
_current_tasks: dict[asyncio.AbstractEventLoop, Any] = getattr(tasks, "_current_tasks")  # noqa: B009

#: Called once when the coroutine ends: (its result, None) or (None, its exception).
OnDone = Callable[[Any, BaseException | None], None]


class StepGuard(Protocol):
    """What the watchdog reads: steps started so far, and whether one runs now."""

    inline_calls: int
    inline: bool


class CallTask:
    __slots__ = (
        "__weakref__", "_cancel_msg", "_cancels", "_context", "_coro", "_done", "_done_callbacks",
        "_error", "_guard", "_loop", "_must_cancel", "_on_done", "_quick", "_result", "_waiter",
    )  # fmt: skip

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        loop: asyncio.AbstractEventLoop,
        on_done: OnDone,
        guard: StepGuard | None = None,
    ) -> None:
        self._coro = coro
        # Marked busy while a step runs plugin code, so the worker's watchdog
        # can interrupt a step that holds the event loop (runner.server.watchdog).
        self._guard = guard
        self._loop = loop
        self._on_done = on_done
        self._context = contextvars.copy_context()
        self._waiter: Any = None  # the future the coroutine awaits now
        self._quick: Any = None  # a future the owner resolves and then calls answered() for
        self._must_cancel = False
        self._cancel_msg: Any = None
        self._cancels = 0
        self._done = False
        self._done_callbacks: list[tuple[Callable[[Any], object], contextvars.Context]] | None = (
            None
        )
        self._result: Any = None
        self._error: BaseException | None = None

    # -- driven by the connection

    def start(self) -> None:
        self._resume()

    def question(self) -> asyncio.Future[Any]:
        """A new future the owner will resolve and then call :meth:`answered`
        for: if the coroutine awaits it, no done-callback (and no loop round)
        is needed to resume it."""
        old = self._quick
        if old is not None and old is self._waiter:
            # The coroutine awaits an earlier question while a child task
            # asks this one: the earlier one now needs its done-callback.
            old.add_done_callback(self._wakeup)
        fut = self._quick = self._loop.create_future()
        return fut

    def answered(self, fut: asyncio.Future[Any]) -> None:
        """``fut`` (from :meth:`question`) has its result: resume now if it is awaited."""
        if self._waiter is fut and self._quick is fut:
            self._resume()

    # -- the parts of asyncio.Task's API that asyncio and libraries use on the current task

    def cancel(self, msg: Any = None) -> bool:
        if self._done:
            return False
        self._cancels += 1
        waiter = self._waiter
        if waiter is not None:
            if waiter is self._quick:
                # Nobody else wakes us for this one: resume, and the await raises.
                waiter.cancel(msg)
                self._resume_soon()
                return True
            if waiter.cancel(msg):
                return True  # its done-callback wakes us with CancelledError
        self._must_cancel = True
        self._cancel_msg = msg
        return True

    def cancelling(self) -> int:
        return self._cancels

    def uncancel(self) -> int:
        if self._cancels > 0:
            self._cancels -= 1
        return self._cancels

    def done(self) -> bool:
        return self._done

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_coro(self) -> Coroutine[Any, Any, Any]:
        return self._coro

    def get_name(self) -> str:
        return f"call-{id(self):x}"

    # Future's side of a Task, and the private attributes anyio (httpx, ...) reads.

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        ctx = contextvars.copy_context() if context is None else context
        if self._done:
            self._loop.call_soon(fn, self, context=ctx)
        elif self._done_callbacks is None:
            self._done_callbacks = [(fn, ctx)]
        else:
            self._done_callbacks.append((fn, ctx))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        callbacks = self._done_callbacks or []
        kept = [(f, ctx) for f, ctx in callbacks if f != fn]
        self._done_callbacks = kept
        return len(callbacks) - len(kept)

    def cancelled(self) -> bool:
        return self._done and isinstance(self._error, asyncio.CancelledError)

    def result(self) -> Any:
        if not self._done:
            raise asyncio.InvalidStateError("the call is not done")
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self) -> BaseException | None:
        if not self._done:
            raise asyncio.InvalidStateError("the call is not done")
        if isinstance(self._error, asyncio.CancelledError):
            raise self._error
        return self._error

    @property
    def _fut_waiter(self) -> Any:
        return self._waiter

    @property
    def _callbacks(self) -> list[tuple[Callable[[Any], object], contextvars.Context]]:
        return list(self._done_callbacks or ())

    def __repr__(self) -> str:
        return f"<CallTask {'done' if self._done else 'pending'} coro={self._coro!r}>"

    # -- stepping

    def _resume(self) -> None:
        if self._loop not in _current_tasks:
            self._step(None)
        else:  # driven from inside a task (tests do): asyncio allows one at a time
            self._resume_soon()

    def _resume_soon(self) -> None:
        """Step a loop round later; until then nothing else may step it."""
        self._waiter = None
        self._loop.call_soon(self._step, None)

    def _step(self, exc: BaseException | None) -> None:
        if self._done:
            return
        if self._must_cancel:
            self._must_cancel = False
            msg = self._cancel_msg
            exc = asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)
        self._waiter = None
        loop = self._loop
        _enter_task(loop, self)
        guard = self._guard
        if guard is not None:
            guard.inline_calls += 1
            outer, guard.inline = guard.inline, True
        try:
            try:
                if exc is None:
                    result = self._context.run(self._coro.send, None)
                else:
                    result = self._context.run(self._coro.throw, exc)
            finally:
                if guard is not None:
                    guard.inline = outer
                _leave_task(loop, self)
        except StopIteration as stop:
            self._finish(stop.value, None)
        except (Exception, asyncio.CancelledError) as error:
            self._finish(None, error)
        except BaseException as error:  # KeyboardInterrupt, SystemExit: end the call, go on up
            self._finish(None, error)
            raise
        else:
            self._wait_on(result)

    def _wait_on(self, result: Any) -> None:
        """The coroutine yielded ``result``: arrange to be woken as a Task would."""
        blocking = getattr(result, "_asyncio_future_blocking", None)
        if blocking:
            result._asyncio_future_blocking = False
            self._waiter = result
            if result is not self._quick:
                if result.get_loop() is not self._loop:
                    self._waiter = None
                    error = RuntimeError(f"a plugin awaited {result!r}, from another event loop")
                    self._loop.call_soon(self._step, error)
                    return
                result.add_done_callback(self._wakeup)
            if self._must_cancel and result.cancel(self._cancel_msg):
                self._must_cancel = False
                if result is self._quick:
                    self._resume_soon()
        elif result is None:
            self._loop.call_soon(self._step, None)  # a bare yield (asyncio.sleep(0))
        else:
            error = RuntimeError(f"a plugin awaited {result!r}, which is not a future")
            self._loop.call_soon(self._step, error)

    def _wakeup(self, fut: asyncio.Future[Any]) -> None:
        # The await takes the result (or raises) from the future itself.
        if fut is self._waiter:
            self._step(None)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._done = True
        self._waiter = self._quick = None
        self._result, self._error = result, error
        self._on_done(result, error)
        callbacks = self._done_callbacks
        if callbacks is not None:  # somebody waits on the call itself (rare)
            for fn, ctx in callbacks:
                self._loop.call_soon(fn, self, context=ctx)
            self._done_callbacks = None

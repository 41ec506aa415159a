"""A call's coroutine, stepped in place: what an asyncio.Task does, minus two loop rounds.

Why not a Task: a Task takes its first step one loop round after it is
created, and after each ExtraInfo answer it wakes one more loop round later
(the future schedules its wakeup with ``call_soon``). The answer arrives in
``buffer_updated``; resuming the coroutine right there, and starting it right
where the call was read, saves both rounds: a call that asks one variable went
from 17.5 to about 15 us of CPU (bench/README.md).

The call still has a current task for the plugin's code: while a step runs,
``asyncio.current_task()`` returns the call's :class:`TaskHandle`
(registered with asyncio's own ``_enter_task``), so ``asyncio.timeout()``,
``wait_for``, aiohttp and redis work, and it can be cancelled
(``cancel``/``cancelling``/``uncancel`` as Task's). The handle is a small
interpreted object that passes every call on to this class, which the
install compiles: a compiled object cannot be weakly referenced safely (see
runner/api/taskhandle.py). Futures other than the connection's own questions
(sleeps, sockets, child tasks, gather) wake the call through the loop,
exactly as they wake a Task. Each call runs in its own copy of the context,
as a Task does. The handle also has a Future's side (done callbacks, result)
and the Task internals anyio reads (``_fut_waiter``, ``_must_cancel``,
``_callbacks``, weak references), so httpx and anyio work in plugins
(tests/test_calltask_libraries.py).
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import tasks
from collections.abc import Callable, Coroutine
from typing import Any, Final

from mypy_extensions import mypyc_attr

from runner.api.stepping import BUSY, Asked, Question, Returned, returned_value, step_in
from runner.api.taskhandle import DoneCallbacks, TaskHandle, new_handle

# asyncio's own bookkeeping of the current task (C functions); typed for any
# task-like object, which is what they accept. Final: compiled, a module-level
# name that is not Final is a dict lookup per use.
_enter_task: Final[Callable[[asyncio.AbstractEventLoop, Any], None]] = tasks._enter_task
_leave_task: Final[Callable[[asyncio.AbstractEventLoop, Any], None]] = tasks._leave_task
# loop -> its running task (asyncio.current_task() in 3.11 is Python around this).
_current_tasks: Final[dict[asyncio.AbstractEventLoop, Any]] = getattr(tasks, "_current_tasks")  # noqa: B009
_step_in: Final = step_in
_BUSY: Final = BUSY
_copy_context: Final = contextvars.copy_context
_TaskHandle: Final = TaskHandle
_new_handle: Final = new_handle
_Returned: Final = Returned
_returned_value: Final = returned_value
_Question: Final = Question

#: Called once when the coroutine ends: (its result, None) or (None, its exception).
OnDone = Callable[[Any, BaseException | None], None]


class CallOwner:
    """Told once when a call's coroutine ends: ``call_ended(result, None)`` or
    ``call_ended(None, error)`` (the worker's connection). A class, not a
    callable: compiled, a call through a stored bound method costs ~300
    instructions of argument parsing, a method of a compiled class a few."""

    def call_ended(self, result: Any, error: BaseException | None) -> None:
        """The call's coroutine ended."""


class _Callback(CallOwner):
    """A plain function as a call's owner."""

    def __init__(self, fn: OnDone) -> None:
        self.fn = fn

    def call_ended(self, result: Any, error: BaseException | None) -> None:
        self.fn(result, error)


class StepGuard:
    """Steps of plugin code started so far, and whether one runs now: what
    the worker's watchdog thread reads to find a plugin that blocks the event
    loop (runner.server.watchdog). The worker's ServerState is one. A class,
    not a Protocol: compiled, its fields are read and written in place."""

    def __init__(self) -> None:
        self.inline_calls = 0
        self.inline = False


@mypyc_attr(free_list_len=1)
class CallTask:
    __slots__ = (
        "_cancel_msg", "_cancels", "_context", "_coro", "_done", "_done_callbacks", "_error",
        "_guard", "_handle", "_loop", "_owner", "_quick", "_result", "must_cancel",
        "waiter",
    )  # fmt: skip

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        loop: asyncio.AbstractEventLoop,
        on_done: OnDone | CallOwner,
        guard: StepGuard | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        self._coro = coro
        # Marked busy while a step runs plugin code, so the worker's watchdog
        # can interrupt a step that holds the event loop (runner.server.watchdog).
        self._guard = guard
        self._loop = loop
        self._owner = on_done if isinstance(on_done, CallOwner) else _Callback(on_done)
        # The call's own context, as a Task's: a copy of the current one
        # unless the caller has made one (the connection's holds its StepMark).
        self._context = _copy_context() if context is None else context
        handle = _new_handle(_TaskHandle, self)
        # The current task while a step runs. Until the call ends, the two
        # refer to each other; the call lets go then, so no cycle outlives it.
        self._handle: TaskHandle | None = handle
        self.waiter: Any = None  # the future the coroutine awaits now
        self._quick: Any = None  # the last Question the call's own coroutine asked
        self.must_cancel = False
        self._cancel_msg: Any = None
        self._cancels = 0
        self._done = False
        self._done_callbacks: DoneCallbacks | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    # -- driven by the connection

    @property
    def handle(self) -> TaskHandle | None:
        """What ``asyncio.current_task()`` returns in the plugin's code (None once done)."""
        return self._handle

    def start(self) -> None:
        # Driven from inside a task (tests do), step_in steps nothing: asyncio
        # allows one task at a time, and _step steps it a loop round later.
        self._step(None)

    def question(self) -> Asked:
        """What the connection resolves and then calls :meth:`answered` for.

        Asked by the call's own coroutine (the usual case): a Question, which
        nothing but answered() resumes it from (no done-callback, no loop
        round). Asked from a child task (gather, create_task, wait_for): an
        asyncio Future, the only thing asyncio's tasks wait on; its
        done-callback wakes that task."""
        handle = self._handle
        if handle is not None and _current_tasks.get(self._loop) is handle:
            question = self._quick = _Question()
            return question
        return self._loop.create_future()

    def answered(self, question: Asked) -> None:
        """``question`` (from :meth:`question`) has its answer: resume now if the call awaits it."""
        if self.waiter is question and self._quick is question:
            self._step(None)

    # -- asyncio.Task's API, through the TaskHandle (and cancel() by the connection)

    def cancel(self, msg: Any = None) -> bool:
        if self._done:
            return False
        self._cancels += 1
        waiter = self.waiter
        if waiter is not None:
            if waiter is self._quick:
                # Nobody else wakes us for this one: resume, and the await raises.
                waiter.cancel(msg)
                self._resume_soon()
                return True
            if waiter.cancel(msg):
                return True  # its done-callback wakes us with CancelledError
        self.must_cancel = True
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

    def add_done_callback(
        self, fn: Callable[[Any], object], task: TaskHandle, context: contextvars.Context | None
    ) -> None:
        """``fn(task)`` once the call is done (``task``: the handle it was added on)."""
        ctx = contextvars.copy_context() if context is None else context
        if self._done:
            self._loop.call_soon(fn, task, context=ctx)
        elif self._done_callbacks is None:
            self._done_callbacks = [(fn, ctx)]
        else:
            self._done_callbacks.append((fn, ctx))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        callbacks = self._done_callbacks or []
        kept = [(f, ctx) for f, ctx in callbacks if f != fn]
        self._done_callbacks = kept
        return len(callbacks) - len(kept)

    def callbacks(self) -> DoneCallbacks:
        return list(self._done_callbacks or ())

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

    def __repr__(self) -> str:
        return f"<CallTask {'done' if self._done else 'pending'} coro={self._coro!r}>"

    # -- stepping

    def _resume_soon(self) -> None:
        """Step a loop round later; until then nothing else may step it."""
        self.waiter = None
        self._loop.call_soon(self._step, None)

    def _step(self, exc: BaseException | None) -> None:
        handle = self._handle
        if self._done or handle is None:
            return
        if self.must_cancel:
            self.must_cancel = False
            msg = self._cancel_msg
            exc = asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)
        self.waiter = None
        loop = self._loop
        guard = self._guard
        if guard is not None:
            guard.inline_calls += 1
            outer, guard.inline = guard.inline, True
        try:
            try:
                if exc is None:
                    # The usual step: nothing is raised when the coroutine
                    # ends, and the task is entered and left in C (stepping.step_in).
                    result = _step_in(self._context, self._coro, None, loop, handle)
                else:
                    _enter_task(loop, handle)
                    try:
                        result = self._context.run(self._coro.throw, exc)
                    finally:
                        _leave_task(loop, handle)
            finally:
                if guard is not None:
                    guard.inline = outer
        except StopIteration as stop:  # the end, after a throw
            self._finish(stop.value, None)
        except (Exception, asyncio.CancelledError) as error:
            self._finish(None, error)
        except BaseException as error:  # KeyboardInterrupt, SystemExit: end the call, go on up
            self._finish(None, error)
            raise
        else:
            if type(result) is _Returned:
                self._finish(_returned_value(result), None)
            elif result is _BUSY:  # the loop runs another task: nothing was stepped
                self._resume_soon()
            else:
                self._wait_on(result)

    def _wait_on(self, result: Any) -> None:
        """The coroutine yielded ``result``: arrange to be woken as a Task would."""
        if result is self._quick and result is not None:
            # The usual wait: the call's own question, which answered() wakes
            # it from (no callback).
            self.waiter = result
            if self.must_cancel:  # cancelled between steps: the await raises
                self.must_cancel = False
                result.cancel(self._cancel_msg)
                self._resume_soon()
            return
        blocking = getattr(result, "_asyncio_future_blocking", None)
        if blocking:
            result._asyncio_future_blocking = False
            self.waiter = result
            if result.get_loop() is not self._loop:
                self.waiter = None
                error = RuntimeError(f"a plugin awaited {result!r}, from another event loop")
                self._loop.call_soon(self._step, error)
                return
            result.add_done_callback(self._wakeup)
            if self.must_cancel and result.cancel(self._cancel_msg):
                self.must_cancel = False
        elif result is None:
            self._loop.call_soon(self._step, None)  # a bare yield (asyncio.sleep(0))
        else:
            error = RuntimeError(f"a plugin awaited {result!r}, which is not a future")
            self._loop.call_soon(self._step, error)

    def _wakeup(self, fut: asyncio.Future[Any]) -> None:
        # The await takes the result (or raises) from the future itself.
        if fut is self.waiter:
            self._step(None)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._done = True
        self.waiter = self._quick = None
        self._result, self._error = result, error
        handle, self._handle = self._handle, None  # the cycle ends here
        self._owner.call_ended(result, error)
        callbacks = self._done_callbacks
        if callbacks is not None:  # somebody waits on the call itself (rare)
            for fn, ctx in callbacks:
                self._loop.call_soon(fn, handle, context=ctx)
            self._done_callbacks = None

"""What ``asyncio.current_task()`` returns while a call's plugin code runs.

The call's coroutine is stepped by :class:`runner.api.calltask.CallTask`,
which the install compiles (runner/hotpath.py). A compiled class cannot be
the current task: anyio (under httpx) keeps per-task state in a
WeakKeyDictionary keyed by it, and a compiled object's weak references are
not cleared when it is freed. So the task asyncio sees is this small
interpreted object, one per call, and every part of asyncio.Task's API that
asyncio and libraries use on the current task is passed on to the CallTask.
This module is never compiled; in the compiled build its base, which holds
the call and the weak references, is the C helper's ``HandleBase``
(runner/api/_coro.c), which clears them as it should.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from runner.api.stepping import CORO_MODULE
from runner.proto.chelpers import c_function

DoneCallbacks = list[tuple[Callable[[Any], object], contextvars.Context]]


class TaskCore(Protocol):
    """What a handle passes its calls on to (runner.api.calltask.CallTask)."""

    @property
    def waiter(self) -> Any: ...
    @property
    def must_cancel(self) -> bool: ...
    def cancel(self, msg: Any = None) -> bool: ...
    def cancelling(self) -> int: ...
    def uncancel(self) -> int: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self) -> Any: ...
    def exception(self) -> BaseException | None: ...
    def get_loop(self) -> asyncio.AbstractEventLoop: ...
    def get_coro(self) -> Coroutine[Any, Any, Any]: ...
    def add_done_callback(
        self, fn: Callable[[Any], object], task: TaskHandle, context: contextvars.Context | None
    ) -> None: ...
    def remove_done_callback(self, fn: Callable[[Any], object]) -> int: ...
    def callbacks(self) -> DoneCallbacks: ...


class HandleBasePy:
    """What a handle holds: its call, and the weak references to it. The
    compiled build's is ``HandleBase`` in runner/api/_coro.c (with
    :func:`new_handle`, it costs a call ~350 instructions less)."""

    __slots__ = ("__weakref__", "_call")
    _call: TaskCore  # set by new_handle, before any use


_H = TypeVar("_H", bound=HandleBasePy)


def new_handle_py(cls: type[_H], call: TaskCore) -> _H:
    """A ``cls`` standing for ``call``."""
    handle = cls.__new__(cls)
    handle._call = call
    return handle


if TYPE_CHECKING:
    _Base = HandleBasePy
else:
    _Base = c_function(CORO_MODULE, "HandleBase") or HandleBasePy


class TaskHandle(_Base):
    """A call's task as asyncio and libraries see it (see the module docstring)."""

    __slots__ = ()

    def cancel(self, msg: Any = None) -> bool:
        return self._call.cancel(msg)

    def cancelling(self) -> int:
        return self._call.cancelling()

    def uncancel(self) -> int:
        return self._call.uncancel()

    def done(self) -> bool:
        return self._call.done()

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def result(self) -> Any:
        return self._call.result()

    def exception(self) -> BaseException | None:
        return self._call.exception()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._call.get_loop()

    def get_coro(self) -> Coroutine[Any, Any, Any]:
        return self._call.get_coro()

    def get_name(self) -> str:
        return f"call-{id(self):x}"

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        self._call.add_done_callback(fn, self, context)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        return self._call.remove_done_callback(fn)

    # The private attributes of asyncio.Task that anyio reads.

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._call.get_loop()

    @property
    def _fut_waiter(self) -> Any:
        return self._call.waiter

    @property
    def _must_cancel(self) -> bool:
        return self._call.must_cancel

    @property
    def _callbacks(self) -> DoneCallbacks:
        return self._call.callbacks()

    def __repr__(self) -> str:
        return f"<CallTask {'done' if self.done() else 'pending'} coro={self.get_coro()!r}>"


NewHandle = Callable[[type["TaskHandle"], TaskCore], "TaskHandle"]
#: Makes a call's handle: ``new_handle(TaskHandle, call)``.
new_handle: Final[NewHandle] = c_function(CORO_MODULE, "new_handle") or new_handle_py

"""Stepping a call's coroutine: the C helper's ``step_in``, ``Returned`` and
``Question`` (runner/api/_coro.c), or their Python twins in the pure build.

Both behave alike (tests/api/test_stepping.py runs them side by side); the C
ones save the compiled CallTask a StopIteration per call and an asyncio
Future per ExtraInfo question (see _coro.c for the figures).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, Protocol

from runner.proto.chelpers import c_function

#: What step_in_py returns when the loop runs another task.
BUSY_PY: Final = object()

# asyncio's own bookkeeping of the current task (what asyncio.current_task() reads).
_current_tasks: Final[dict[Any, Any]] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
_enter_task: Final[Callable[[asyncio.AbstractEventLoop, Any], None]] = asyncio.tasks._enter_task
_leave_task: Final[Callable[[asyncio.AbstractEventLoop, Any], None]] = asyncio.tasks._leave_task

CORO_MODULE: Final = "runner.api._coro"


class Asked(Protocol):
    """What the connection keeps of a question in flight: a Question, or the
    asyncio Future a child task awaits instead."""

    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def set_result(self, value: Any, /) -> None: ...
    def set_exception(self, error: BaseException, /) -> None: ...
    def cancel(self, msg: Any = None) -> bool: ...
    def __await__(self) -> Generator[Any, None, Any]: ...


class ReturnedPy:
    """The end of a coroutine, from :func:`step_in_py`: ``value`` is what it returned."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def step_in_py(
    context: contextvars.Context,
    coro: Coroutine[Any, Any, Any],
    value: Any,
    loop: asyncio.AbstractEventLoop,
    task: Any,
) -> Any:
    """One step of ``coro`` run in ``context`` with ``task`` as ``loop``'s
    current task: what the coroutine yielded, or a Returned; BUSY (and
    nothing stepped) where the loop runs another task."""
    if loop in _current_tasks:
        return BUSY_PY
    _enter_task(loop, task)
    try:
        return context.run(coro.send, value)
    except StopIteration as stop:
        return ReturnedPy(stop.value)
    finally:
        _leave_task(loop, task)


class QuestionPy:
    """What a call's own coroutine awaits while APISIX answers an ExtraInfo
    question: awaiting it yields the question itself until it is answered,
    then returns the answer (or raises the error)."""

    __slots__ = ("_cancelled", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = False
        self._cancelled = False

    def __await__(self) -> Generator[Any, None, Any]:
        while not self._done:
            yield self
        if self._error is not None:
            raise self._error
        return self._result

    def _settle(self, result: Any, error: BaseException | None) -> None:
        if self._done:
            raise RuntimeError("the question has its answer already")
        self._result, self._error, self._done = result, error, True

    def set_result(self, value: Any, /) -> None:
        """Answer the question."""
        self._settle(value, None)

    def set_exception(self, error: BaseException, /) -> None:
        """Make the await raise ``error``."""
        if not isinstance(error, BaseException):
            raise TypeError(f"set_exception: an exception instance, not {type(error).__name__}")
        self._settle(None, error)

    def cancel(self, msg: Any = None) -> bool:
        """Make the await raise CancelledError; False if answered already."""
        if self._done:
            return False
        self._settle(None, asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg))
        self._cancelled = True
        return True

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def __repr__(self) -> str:
        if not self._done:
            return "<Question pending>"
        if self._cancelled:
            return "<Question cancelled>"
        if self._error is not None:
            return f"<Question error={self._error!r}>"
        return f"<Question answer={self._result!r}>"


def answer_py(question: Asked, value: Any) -> bool:
    """Answer ``question`` (a Question or a Future) with ``value``, unless it
    has its answer already (cancelled): whether it was answered now."""
    if question.done():
        return False
    question.set_result(value)
    return True


StepIn = Callable[
    [contextvars.Context, Coroutine[Any, Any, Any], Any, asyncio.AbstractEventLoop, Any], Any
]

step_in: Final[StepIn] = c_function(CORO_MODULE, "step_in") or step_in_py
answer: Final[Callable[[Asked, Any], bool]] = c_function(CORO_MODULE, "answer") or answer_py
copy_context: Final[Callable[[contextvars.Context], contextvars.Context]] = (
    c_function(CORO_MODULE, "copy_context") or contextvars.Context.copy
)
#: What step_in returns, having stepped nothing, when the loop runs another task.
BUSY: Final[object] = c_function(CORO_MODULE, "BUSY") or BUSY_PY
#: The type step_in returns a coroutine's end in.
Returned: Final[type[ReturnedPy]] = c_function(CORO_MODULE, "Returned") or ReturnedPy


def returned_value_py(returned: ReturnedPy) -> Any:
    """The value a Returned holds (the C one's ``returned_value``: compiled,
    ``returned.value`` is a generic attribute lookup of a C object)."""
    return returned.value


returned_value: Final[Callable[[ReturnedPy], Any]] = (
    c_function(CORO_MODULE, "returned_value") or returned_value_py
)
#: The type of the questions a call's own coroutine awaits.
Question: Final[type[QuestionPy]] = c_function(CORO_MODULE, "Question") or QuestionPy

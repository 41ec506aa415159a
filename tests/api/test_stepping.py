"""runner.api.stepping: the C ``step_in``, ``Returned`` and ``Question`` of
the compiled build (runner/api/_coro.c) behave as their Python twins, which
the pure build runs. Every test runs on each implementation this build has."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Generator
from typing import Any

import pytest

from runner import hotpath
from runner.api import stepping, taskhandle
from runner.proto.chelpers import c_function

_C_STEP_IN = c_function(stepping.CORO_MODULE, "step_in")
_C_RETURNED = c_function(stepping.CORO_MODULE, "Returned")
_C_QUESTION = c_function(stepping.CORO_MODULE, "Question")

_NO_C = "the pure build has no C stepping (its Python twins run here)"
IMPLS = [
    pytest.param((stepping.step_in_py, stepping.ReturnedPy, stepping.QuestionPy), id="python"),
    pytest.param(
        (_C_STEP_IN, _C_RETURNED, _C_QUESTION),
        id="c",
        marks=pytest.mark.skipif(_C_STEP_IN is None, reason=_NO_C),
    ),
]

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("stepping_test_var", default="unset")


def test_the_c_helpers_are_installed_where_the_build_promises() -> None:
    compiled = hotpath.build() == "compiled"
    assert (stepping.step_in is not stepping.step_in_py) == compiled
    assert (stepping.Question is not stepping.QuestionPy) == compiled
    assert (stepping.Returned is not stepping.ReturnedPy) == compiled


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> tuple[Any, Any, Any]:
    return request.param  # type: ignore[no-any-return]


LOOP = object()  # asyncio keys its current tasks by loop; any object does here
TASK = object()


def _current() -> Any:
    return asyncio.tasks._current_tasks.get(LOOP)  # type: ignore[attr-defined]


def test_step_in_yields_then_returns(impl: tuple[Any, Any, Any]) -> None:
    step_in, returned, _ = impl
    got: list[Any] = []
    seen: list[Any] = []

    class Waits:
        def __await__(self) -> Generator[str, Any, Any]:
            got.append((yield "first"))
            return "resumed"

    async def coro() -> tuple[str, str]:
        VAR.set("inside")
        seen.append(_current())
        value = await Waits()
        seen.append(_current())
        return value, VAR.get()

    ctx = contextvars.copy_context()
    c = coro()
    assert step_in(ctx, c, None, LOOP, TASK) == "first"
    assert _current() is None  # left between steps
    end = step_in(ctx, c, "sent", LOOP, TASK)
    assert type(end) is returned
    assert end.value == ("resumed", "inside")
    assert got == ["sent"]
    assert seen == [TASK, TASK]  # the current task while each step ran
    assert _current() is None
    # The steps ran in `ctx`, not in the caller's context.
    assert VAR.get() == "unset"
    assert ctx[VAR] == "inside"


def test_step_in_returns_none_and_other_values_alike(impl: tuple[Any, Any, Any]) -> None:
    step_in, returned, _ = impl

    async def gives(value: Any) -> Any:
        return value

    for value in (None, 0, (), ("a", 1), StopIteration("not raised")):
        end = step_in(contextvars.copy_context(), gives(value), None, LOOP, TASK)
        assert type(end) is returned and end.value is value


def test_step_in_passes_the_coroutines_exception_on(impl: tuple[Any, Any, Any]) -> None:
    step_in, _, _ = impl

    async def fails() -> None:
        VAR.set("changed")
        raise KeyError("boom")

    ctx = contextvars.copy_context()
    with pytest.raises(KeyError, match="boom"):
        step_in(ctx, fails(), None, LOOP, TASK)
    assert VAR.get() == "unset"  # the context and the task were left even so
    assert _current() is None
    unstarted = fails()
    with pytest.raises(TypeError):
        step_in(ctx, unstarted, None)
    unstarted.close()
    # A coroutine that has ended cannot be stepped again.
    done = fails()
    with pytest.raises(KeyError):
        step_in(ctx, done, None, LOOP, TASK)
    with pytest.raises(RuntimeError):
        step_in(ctx, done, None, LOOP, TASK)
    assert _current() is None


def test_step_in_refuses_a_context_already_entered(impl: tuple[Any, Any, Any]) -> None:
    step_in, _, _ = impl
    ctx = contextvars.copy_context()
    inner = asyncio.sleep(0)

    async def nested() -> Any:
        return step_in(ctx, inner, None, object(), TASK)

    with pytest.raises(RuntimeError):
        step_in(ctx, nested(), None, LOOP, TASK)
    inner.close()
    assert _current() is None


def test_step_in_steps_nothing_where_the_loop_runs_another_task(
    impl: tuple[Any, Any, Any],
) -> None:
    """As asyncio's own tasks: one task at a time per loop. BUSY, and nothing stepped."""
    step_in, _, _ = impl
    busy = stepping.BUSY_PY if step_in is stepping.step_in_py else stepping.BUSY
    steps: list[str] = []

    async def coro() -> None:
        steps.append("ran")

    other = object()
    asyncio.tasks._enter_task(LOOP, other)  # type: ignore[attr-defined]
    try:
        c = coro()
        assert step_in(contextvars.copy_context(), c, None, LOOP, TASK) is busy
        c.close()
        assert _current() is other  # still the other one's
    finally:
        asyncio.tasks._leave_task(LOOP, other)  # type: ignore[attr-defined]
    assert steps == []


def _drive(awaitable: Any) -> tuple[list[Any], Any]:
    """Await ``awaitable`` from an interpreted coroutine, stepping it by hand:
    (what it yielded, its outcome)."""

    async def waiter() -> Any:
        return await awaitable

    coro = waiter()
    yielded = []
    try:
        while True:
            yielded.append(coro.send(None))
            if len(yielded) > 3:
                coro.close()
                return yielded, "still waiting"
    except StopIteration as stop:
        return yielded, ("value", stop.value)
    except BaseException as exc:
        return yielded, ("raised", exc)


def test_question_yields_itself_until_answered(impl: tuple[Any, Any, Any]) -> None:
    _, _, question_type = impl
    q = question_type()
    assert not q.done() and not q.cancelled()
    assert repr(q) == "<Question pending>"
    yielded, outcome = _drive(q)
    assert yielded == [q, q, q, q] and outcome == "still waiting"


@pytest.mark.parametrize("answer", [b"127.0.0.1", None, ("a", "tuple"), b""])
def test_question_returns_its_answer(impl: tuple[Any, Any, Any], answer: Any) -> None:
    _, _, question_type = impl
    q = question_type()

    async def waiter() -> Any:
        return await q

    coro = waiter()
    assert coro.send(None) is q
    q.set_result(answer)
    assert q.done() and not q.cancelled()
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == answer
    # Awaited again (already answered): no suspension at all.
    assert _drive(q) == ([], ("value", answer))
    with pytest.raises(RuntimeError, match="answer already"):
        q.set_result(b"twice")


def test_question_raises_its_error(impl: tuple[Any, Any, Any]) -> None:
    _, _, question_type = impl
    q = question_type()
    error = ConnectionError("APISIX closed the connection")
    q.set_exception(error)
    assert q.done() and not q.cancelled()
    yielded, outcome = _drive(q)
    assert yielded == [] and outcome == ("raised", error)
    with pytest.raises(TypeError):
        question_type().set_exception("not an exception")


def test_question_cancelled(impl: tuple[Any, Any, Any]) -> None:
    _, _, question_type = impl
    q = question_type()
    assert q.cancel("deadline") is True
    assert q.done() and q.cancelled()
    assert repr(q) == "<Question cancelled>"
    _, (kind, exc) = _drive(q)
    assert kind == "raised" and isinstance(exc, asyncio.CancelledError)
    assert exc.args == ("deadline",)
    assert q.cancel() is False  # once is enough
    plain = question_type()
    assert plain.cancel() is True
    _, (_, exc) = _drive(plain)
    assert isinstance(exc, asyncio.CancelledError) and exc.args == ()
    answered = question_type()
    answered.set_result(b"x")
    assert answered.cancel() is False and not answered.cancelled()


def test_question_thrown_into_raises_at_the_await(impl: tuple[Any, Any, Any]) -> None:
    """A cancel of the call while it awaits: the exception comes out of the await."""
    _, _, question_type = impl
    q = question_type()

    async def waiter() -> str:
        try:
            await q
        except asyncio.CancelledError:
            return "saw it"
        return "no"

    coro = waiter()
    assert coro.send(None) is q
    with pytest.raises(StopIteration) as stop:
        coro.throw(asyncio.CancelledError())
    assert stop.value.value == "saw it"


class Failure(Exception):
    pass


def test_question_in_a_cycle_is_collected(impl: tuple[Any, Any, Any]) -> None:
    _, _, question_type = impl
    q = question_type()
    try:
        raise Failure("refers back")
    except Failure as exc:
        error = exc
    q.set_exception(error)
    error.question = q  # type: ignore[attr-defined]  # error -> question -> error
    holder = weakref.ref(error)
    del q, error
    gc.collect()
    assert holder() is None


_C_ANSWER = c_function(stepping.CORO_MODULE, "answer")


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(stepping.answer_py, id="python"),
        pytest.param(_C_ANSWER, id="c", marks=pytest.mark.skipif(_C_ANSWER is None, reason=_NO_C)),
    ],
)
def test_answer_settles_a_question_or_a_future_once(answer: Any) -> None:
    for question_type in (stepping.QuestionPy, stepping.Question):
        q = question_type()
        assert answer(q, ("a", "tuple")) is True
        assert _drive(q) == ([], ("value", ("a", "tuple")))  # not taken for arguments
        assert answer(q, b"again") is False
        cancelled = question_type()
        cancelled.cancel()
        assert answer(cancelled, b"late") is False and cancelled.cancelled()
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[Any] = loop.create_future()
        assert answer(fut, ("a", "tuple")) is True
        assert fut.result() == ("a", "tuple")
        assert answer(fut, b"again") is False
        late: asyncio.Future[Any] = loop.create_future()
        late.cancel()
        assert answer(late, b"late") is False
    finally:
        loop.close()


_C_NEW_HANDLE = c_function(stepping.CORO_MODULE, "new_handle")


@pytest.mark.parametrize(
    "new_handle",
    [
        pytest.param(taskhandle.new_handle_py, id="python"),
        pytest.param(
            _C_NEW_HANDLE, id="c", marks=pytest.mark.skipif(_C_NEW_HANDLE is None, reason=_NO_C)
        ),
    ],
)
def test_new_handle_stands_for_its_call_and_lets_weak_references_go(new_handle: Any) -> None:
    call = object()
    handle = new_handle(taskhandle.TaskHandle, call)
    assert type(handle) is taskhandle.TaskHandle and handle._call is call
    ref = weakref.ref(handle)
    table: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary({handle: "state"})
    del handle
    assert ref() is None and len(table) == 0  # no GC pass needed
    if new_handle is _C_NEW_HANDLE:
        with pytest.raises(TypeError):
            new_handle(object, call)


@pytest.mark.parametrize(
    "value_of",
    [
        pytest.param(stepping.returned_value_py, id="python"),
        pytest.param(
            c_function(stepping.CORO_MODULE, "returned_value"),
            id="c",
            marks=pytest.mark.skipif(_C_STEP_IN is None, reason=_NO_C),
        ),
    ],
)
def test_returned_value_is_what_the_coroutine_returned(value_of: Any) -> None:
    returned = stepping.Returned if value_of is not stepping.returned_value_py else None
    kind = returned or stepping.ReturnedPy
    marker = object()
    assert value_of(kind(marker)) is marker
    if value_of is not stepping.returned_value_py:
        with pytest.raises(TypeError):
            value_of(marker)


def test_leaving_another_task_changes_nothing_and_raises(impl: tuple[Any, Any, Any]) -> None:
    """step_in enters and leaves the current task as asyncio does: a step
    that finds the task changed under it (a plugin's own _leave_task/_enter_task)
    raises, and what it found stays the current task."""
    step_in, _, _ = impl
    other = object()

    def swap() -> Generator[None, None, None]:
        tasks = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
        tasks[LOOP] = other
        yield

    with pytest.raises(RuntimeError, match="does not match"):
        step_in(contextvars.copy_context(), swap(), None, LOOP, TASK)
    assert _current() is other
    del asyncio.tasks._current_tasks[LOOP]  # type: ignore[attr-defined]

"""runner.api.calltask.CallTask on its own, on a uvloop loop: what asyncio.Task
promises a coroutine (results, exceptions, current_task, cancellation,
timeouts, contextvars) must hold when CallTask steps it instead.

Every CallTask here is started and answered from plain loop callbacks (no
asyncio task is current then), as the connection does from buffer_updated.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from runner.api.calltask import CallTask
from runner.api.stepping import Asked, Question
from runner.api.taskhandle import TaskHandle

_T = TypeVar("_T")
Outcome = tuple[Any, BaseException | None]

# Upper bound for anything that should take a few loop rounds: a call that
# hangs fails its test instead of the suite.
BOUND_S = 2.0


def run_until(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], timeout: float) -> bool:
    """Run ``loop`` until ``fut`` is done or ``timeout`` passes; True if done.

    No asyncio Task drives the wait: a CallTask that breaks asyncio's
    current-task bookkeeping fails the test instead of hanging it."""
    if fut.done():
        return True

    def stop(_: asyncio.Future[Any]) -> None:
        loop.stop()

    fut.add_done_callback(stop)
    timer = loop.call_later(timeout, loop.stop)
    try:
        loop.run_forever()
    finally:
        timer.cancel()
        fut.remove_done_callback(stop)
    return fut.done()


class Harness:
    """One CallTask on ``loop``, with every on_done call recorded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outcomes: list[Outcome] = []
        self.finished: asyncio.Future[None] = loop.create_future()
        self.task: CallTask | None = None
        self.handle: TaskHandle | None = None  # the call's current task
        self.current_in_on_done: list[Any] = []

    def on_done(self, result: Any, exc: BaseException | None) -> None:
        self.current_in_on_done.append(asyncio.current_task(self.loop))
        self.outcomes.append((result, exc))
        if not self.finished.done():
            self.finished.set_result(None)

    def make(self, coro: Coroutine[Any, Any, Any]) -> CallTask:
        self.task = CallTask(coro, self.loop, self.on_done)
        self.handle = self.task.handle
        return self.task

    def start(self, coro: Coroutine[Any, Any, Any]) -> CallTask:
        """Create and start the CallTask from a loop callback."""
        task = self.make(coro)
        in_callback(self.loop, task.start)
        return task

    def wait(self, timeout: float = BOUND_S) -> Outcome:
        """Run the loop until on_done; then a few more rounds to catch a second call."""
        done = run_until(self.loop, self.finished, timeout)
        assert done, f"the coroutine did not finish within {timeout} s: {self.task!r}"
        settle(self.loop)
        assert len(self.outcomes) == 1, self.outcomes
        return self.outcomes[0]


def in_callback(loop: asyncio.AbstractEventLoop, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` as a plain loop callback (no current task) and return its result."""
    box: asyncio.Future[_T] = loop.create_future()

    def call() -> None:
        try:
            box.set_result(fn())
        except BaseException as exc:
            box.set_exception(exc)

    loop.call_soon(call)
    assert run_until(loop, box, BOUND_S), "the loop did not run a callback"
    return box.result()


def settle(loop: asyncio.AbstractEventLoop, rounds: int = 5) -> None:
    """Let the loop run a few rounds of callbacks."""
    for _ in range(rounds):
        in_callback(loop, lambda: None)


def run_to_end(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Outcome:
    harness = Harness(loop)
    harness.start(coro)
    return harness.wait()


class BadYield:
    """An awaitable that yields a plain int: not something a task can wait on."""

    def __await__(self) -> Generator[Any, None, str]:
        yield 42
        return "unreachable"


class FakeConnection:
    """The part of runner.server.conn.Connection that drives a CallTask's questions:
    each ask() is CallTask.question() (a Question, or a Future for a child
    task); answers resolve them in order, then call answered()."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: CallTask) -> None:
        self.loop = loop
        self.task = task
        self.questions: collections.deque[tuple[str, Asked]] = collections.deque()

    def ask(self, name: str) -> Asked:
        fut = self.task.question()
        self.questions.append((name, fut))
        return fut

    async def var(self, name: str) -> str:
        return await self.ask(name)

    def answer(self, value: str) -> None:
        _, fut = self.questions.popleft()
        if fut.done():
            return
        fut.set_result(value)
        self.task.answered(fut)


# --------------------------------------------------------------------------- results


def test_result_delivered_once(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> str:
        await asyncio.sleep(0.001)
        return "value"

    harness = Harness(loop)
    task = harness.start(body())
    assert harness.wait() == ("value", None)
    assert task.done()
    # on_done runs with no task current (as Task's done callbacks do).
    assert harness.current_in_on_done == [None]


def test_current_task_weakly_referable_and_freed_with_the_call(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """anyio keeps per-task state in a WeakKeyDictionary keyed by the current
    task. The entry must go when the call is over and its task let go of, on
    both builds (compiled, the current task is the interpreted TaskHandle),
    without waiting for the cyclic GC."""
    states: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    async def body() -> bool:
        task = asyncio.current_task()
        states[task] = "state"
        return task is harness.handle

    harness = Harness(loop)
    harness.start(body())
    assert harness.wait() == (True, None)
    assert len(states) == 1
    assert harness.task is not None and harness.task.handle is None  # the call let go
    harness.handle = None
    assert len(states) == 0


def test_result_of_a_coroutine_that_never_suspends(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> int:
        return 7

    harness = Harness(loop)
    task = harness.make(body())
    in_callback(loop, task.start)
    assert harness.outcomes == [(7, None)]  # finished inside start()
    assert harness.wait() == (7, None)


def test_exception_delivered_once(loop: asyncio.AbstractEventLoop) -> None:
    error = ValueError("plugin failed")

    async def body() -> None:
        await asyncio.sleep(0)
        raise error

    result, exc = run_to_end(loop, body())
    assert result is None
    assert exc is error


def test_current_task_inside_and_none_after(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    seen: list[Any] = []
    between: list[Any] = []

    async def body() -> str:
        seen.append(asyncio.current_task())
        # While the coroutine is suspended, nothing is the current task.
        loop.call_soon(lambda: between.append(asyncio.current_task(loop)))
        await asyncio.sleep(0.001)
        seen.append(asyncio.current_task())
        return "ok"

    harness.start(body())
    assert harness.wait() == ("ok", None)
    task = harness.handle
    assert task is not None and seen == [task, task]
    assert between == [None]
    assert in_callback(loop, lambda: asyncio.current_task(loop)) is None
    assert task.get_loop() is loop and task._loop is loop
    assert not task.cancelling()
    assert task.done() and task.result() == "ok" and task.exception() is None


# --------------------------------------------------------------------------- timeouts


def test_timeout_on_slow_sleep_and_go_on(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> tuple[str, ...]:
        me = asyncio.current_task()
        assert me is not None
        trace = []
        try:
            async with asyncio.timeout(0.02):
                await asyncio.sleep(5)
        except TimeoutError:
            trace.append(f"timeout-1 cancelling={me.cancelling()}")
        # The first timeout's cancel was taken back (uncancel): a second one
        # turns into TimeoutError again, not a bare CancelledError.
        try:
            async with asyncio.timeout(0.02):
                await asyncio.sleep(5)
        except TimeoutError:
            trace.append(f"timeout-2 cancelling={me.cancelling()}")
        # A timeout that does not expire leaves the coroutine alone.
        async with asyncio.timeout(1):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        trace.append("continued")
        return tuple(trace)

    result, exc = run_to_end(loop, body())
    assert exc is None, exc
    assert result == ("timeout-1 cancelling=0", "timeout-2 cancelling=0", "continued")


def test_timeout_on_a_question_never_answered(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)

    asked: list[Asked] = []

    async def body() -> str:
        asked.append(task.question())
        try:
            async with asyncio.timeout(0.02):
                await asked[0]
        except TimeoutError:
            return "gave up"
        return "answered"

    task = harness.make(body())
    in_callback(loop, task.start)
    assert harness.wait() == ("gave up", None)
    assert type(asked[0]) is Question
    assert asked[0].cancelled()
    assert task.cancelling() == 0


def test_wait_for_slow_future(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> tuple[str, str]:
        slow: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(slow, 0.02)
        except TimeoutError:
            first = "timed out"
        else:
            first = "no timeout"
        assert slow.cancelled()
        fast: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.001, fast.set_result, "fast")
        return first, await asyncio.wait_for(fast, 1)

    assert run_to_end(loop, body()) == (("timed out", "fast"), None)


# --------------------------------------------------------------------------- children


def test_gather_of_child_coroutines(loop: asyncio.AbstractEventLoop) -> None:
    async def child(n: int, delay: float) -> tuple[int, bool]:
        await asyncio.sleep(delay)
        current = asyncio.current_task()
        return n, isinstance(current, asyncio.Task)

    async def body() -> list[tuple[int, bool]]:
        return list(await asyncio.gather(child(1, 0.01), child(2, 0), child(3, 0.005)))

    result, exc = run_to_end(loop, body())
    assert exc is None, exc
    assert result == [(1, True), (2, True), (3, True)]


def test_gather_child_failure(loop: asyncio.AbstractEventLoop) -> None:
    async def bad() -> None:
        await asyncio.sleep(0)
        raise KeyError("child")

    async def body() -> str:
        try:
            await asyncio.gather(asyncio.sleep(0.001), bad())
        except KeyError:
            return "caught child error"
        return "no error"

    assert run_to_end(loop, body()) == ("caught child error", None)


def test_task_group_failing_child_cancels_the_parent(loop: asyncio.AbstractEventLoop) -> None:
    async def boom() -> None:
        await asyncio.sleep(0.005)
        raise ValueError("boom")

    async def body() -> tuple[str, int]:
        caught = "nothing"
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(boom())
                await asyncio.sleep(5)  # the group cancels us when boom() fails
        except* ValueError as eg:
            caught = str(eg.exceptions[0])
        me = asyncio.current_task()
        assert me is not None
        await asyncio.sleep(0)  # not cancelled any more
        return caught, me.cancelling()

    assert run_to_end(loop, body()) == (("boom", 0), None)


def test_bare_yield_resumes_after_pending_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    order: list[str] = []

    async def body() -> int:
        for i in range(3):
            asyncio.get_running_loop().call_soon(order.append, f"callback {i}")
            await asyncio.sleep(0)
            order.append(f"resumed {i}")
        return 3

    assert run_to_end(loop, body()) == (3, None)
    assert order == [f"{what} {i}" for i in range(3) for what in ("callback", "resumed")]


# --------------------------------------------------------------------------- cancel


def test_cancel_while_awaiting_a_foreign_future(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    foreign: asyncio.Future[str] = loop.create_future()

    async def body() -> str:
        try:
            await foreign
        except asyncio.CancelledError:
            me = asyncio.current_task()
            assert me is not None
            await asyncio.sleep(0)  # it can go on awaiting after catching
            return f"caught, cancelling={me.cancelling()}"
        return "not cancelled"

    task = harness.start(body())
    settle(loop)
    assert not harness.outcomes
    assert in_callback(loop, task.cancel) is True
    assert harness.wait() == ("caught, cancelling=1", None)
    assert foreign.cancelled()


def test_cancel_not_caught_ends_with_cancelled_error(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    reached: list[str] = []

    async def body() -> None:
        await asyncio.sleep(5)
        reached.append("after sleep")

    task = harness.start(body())
    settle(loop)
    loop.call_soon(task.cancel)
    _, exc = harness.wait()
    assert isinstance(exc, asyncio.CancelledError), exc
    assert reached == []
    assert task.done()


def test_cancel_before_start(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    reached: list[str] = []

    async def body() -> None:
        reached.append("body ran")

    task = harness.make(body())
    assert task.cancel() is True
    in_callback(loop, task.start)
    _, exc = harness.wait()
    assert isinstance(exc, asyncio.CancelledError), exc
    assert reached == []


def test_cancel_from_inside(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> str:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            me.uncancel()
            await asyncio.sleep(0.001)
            return "cancelled at the next await"
        return "not cancelled"

    assert run_to_end(loop, body()) == ("cancelled at the next await", None)


def test_cancel_while_awaiting_a_question(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)

    asked: list[Asked] = []

    async def body() -> str:
        asked.append(task.question())
        try:
            await asked[0]
        except asyncio.CancelledError:
            return "cancelled"
        return "answered"

    task = harness.make(body())
    in_callback(loop, task.start)
    settle(loop)
    assert not harness.outcomes
    assert in_callback(loop, task.cancel) is True
    assert harness.wait() == ("cancelled", None)
    assert asked[0].cancelled()
    # An answer that comes late changes nothing.
    in_callback(loop, lambda: task.answered(asked[0]))
    settle(loop)
    assert len(harness.outcomes) == 1


def test_cancel_after_done_returns_false(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> str:
        await asyncio.sleep(0)
        return "done"

    harness = Harness(loop)
    task = harness.start(body())
    assert harness.wait() == ("done", None)
    assert task.cancel() is False
    assert in_callback(loop, task.cancel) is False
    assert task.cancelling() == 0
    settle(loop)
    assert len(harness.outcomes) == 1


# --------------------------------------------------------------------------- question / answered


def test_answered_resumes_synchronously(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    trace: list[str] = []

    asked: list[Asked] = []

    async def body() -> str:
        trace.append("asked")
        asked.append(task.question())
        value: str = await asked[0]
        trace.append(f"got {value}")
        return value

    task = harness.make(body())

    def start() -> list[str]:
        task.start()
        return list(trace)

    def answer() -> tuple[list[str], list[Outcome]]:
        asked[0].set_result("x")
        task.answered(asked[0])
        # The coroutine ran past its await before answered() returned.
        return list(trace), list(harness.outcomes)

    assert in_callback(loop, start) == ["asked"]
    settle(loop)
    assert trace == ["asked"]  # nothing but answered() resumes it
    assert in_callback(loop, answer) == (["asked", "got x"], [("x", None)])
    assert harness.wait() == ("x", None)


def test_answered_for_a_future_not_awaited_does_nothing(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    other: asyncio.Future[str] = loop.create_future()
    trace: list[str] = []

    asked: list[Asked] = []

    async def body() -> str:
        asked.append(task.question())  # asked, but awaited only later
        got_other = await other
        trace.append(f"other {got_other}")
        got_question: str = await asked[0]  # answered already: no suspension
        trace.append(f"question {got_question}")
        return got_other + got_question

    task = harness.make(body())
    in_callback(loop, task.start)

    def answer() -> None:
        asked[0].set_result("Q")
        task.answered(asked[0])

    in_callback(loop, answer)
    settle(loop)
    assert trace == []  # still waiting for `other`
    assert not harness.outcomes
    # An answered() call for a future that is not a question: no effect either.
    in_callback(loop, lambda: task.answered(other))
    settle(loop)
    assert trace == []
    loop.call_soon(other.set_result, "O")
    assert harness.wait() == ("OQ", None)
    assert trace == ["other O", "question Q"]


def test_answered_for_a_future_woken_by_its_callback(loop: asyncio.AbstractEventLoop) -> None:
    """A future that is not a question wakes the coroutine through its
    done-callback; an answered() for it must not step the coroutine twice."""
    harness = Harness(loop)
    fut: asyncio.Future[str] = loop.create_future()
    resumes: list[str] = []

    async def body() -> str:
        value = await fut
        resumes.append(value)
        await asyncio.sleep(0.01)
        resumes.append("slept")
        return value

    task = harness.start(body())

    def resolve() -> None:
        fut.set_result("v")
        task.answered(fut)
        task.answered(fut)

    in_callback(loop, resolve)
    assert harness.wait() == ("v", None)
    assert resumes == ["v", "slept"]


def test_questions_answered_in_order_by_gather(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    conn: FakeConnection | None = None

    async def body() -> list[str]:
        assert conn is not None
        return list(await asyncio.gather(conn.var("a"), conn.var("b")))

    task = harness.make(body())
    conn = FakeConnection(loop, task)
    in_callback(loop, task.start)
    settle(loop)
    assert [name for name, _ in conn.questions] == ["a", "b"]
    in_callback(loop, lambda: conn.answer("A"))
    in_callback(loop, lambda: conn.answer("B"))
    assert harness.wait() == (["A", "B"], None)


def test_second_question_asked_by_a_child_while_awaiting_the_first(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The coroutine awaits its own question; meanwhile a child task it
    started asks another one (question() is called for that one). Answering the
    first question must still resume the coroutine."""
    harness = Harness(loop)
    conn: FakeConnection | None = None

    async def body() -> tuple[str, str]:
        assert conn is not None
        child = asyncio.ensure_future(conn.var("b"))  # asks on its first step
        a = await conn.var("a")
        b = await child
        return a, b

    task = harness.make(body())
    conn = FakeConnection(loop, task)
    in_callback(loop, task.start)
    settle(loop)
    assert [name for name, _ in conn.questions] == ["a", "b"]
    # The call's own question, and the Future a child task (an asyncio Task) can wait on.
    assert [type(q) for _, q in conn.questions] == [Question, asyncio.Future]
    in_callback(loop, lambda: conn.answer("A"))
    in_callback(loop, lambda: conn.answer("B"))
    assert harness.wait(timeout=0.5) == (("A", "B"), None)


def test_cancel_while_a_child_asked_a_later_question(loop: asyncio.AbstractEventLoop) -> None:
    """As above, but nobody answers and the call is cancelled (its deadline):
    the coroutine must get CancelledError."""
    harness = Harness(loop)
    conn: FakeConnection | None = None

    async def body() -> str:
        assert conn is not None
        child = asyncio.ensure_future(conn.var("b"))
        try:
            await conn.var("a")
        except asyncio.CancelledError:
            child.cancel()
            raise
        return "answered"

    task = harness.make(body())
    conn = FakeConnection(loop, task)
    in_callback(loop, task.start)
    settle(loop)
    assert [name for name, _ in conn.questions] == ["a", "b"]
    assert in_callback(loop, task.cancel) is True
    _, exc = harness.wait(timeout=0.5)
    assert isinstance(exc, asyncio.CancelledError), exc


# --------------------------------------------------------------------------- context, bad awaits


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("calltask_test_var", default="unset")


def test_contextvars_are_per_call(loop: asyncio.AbstractEventLoop) -> None:
    async def body(name: str, delay: float) -> tuple[str, str, str]:
        VAR.set(name)
        await asyncio.sleep(delay)
        after_sleep = VAR.get()

        async def child() -> str:
            return VAR.get()

        from_child = await asyncio.ensure_future(child())  # a Task copies our context
        await asyncio.sleep(0)
        return name, after_sleep, from_child

    first, second = Harness(loop), Harness(loop)
    # Interleaved: the first sets its value, the second sets its own, then both read.
    first.make(body("first", 0.01))
    second.make(body("second", 0.001))

    def start_both() -> tuple[str, str]:
        assert first.task is not None and second.task is not None
        first.task.start()  # runs up to its sleep, here, in this callback
        after_first = VAR.get()
        second.task.start()
        return after_first, VAR.get()

    # Each step ran in the call's own context, not the starter's.
    assert in_callback(loop, start_both) == ("unset", "unset")
    assert first.wait() == (("first", "first", "first"), None)
    assert second.wait() == (("second", "second", "second"), None)
    assert VAR.get() == "unset"
    assert in_callback(loop, VAR.get) == "unset"


def test_awaiting_a_non_future_raises_inside_the_coroutine(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def body() -> str:
        try:
            await BadYield()
        except RuntimeError as exc:
            await asyncio.sleep(0)
            return f"RuntimeError: {exc}"
        return "no error"

    result, exc = run_to_end(loop, body())
    assert exc is None, exc
    assert isinstance(result, str) and result.startswith("RuntimeError"), result
    assert "42" in result
    # The loop is fine and serves the next call.
    assert run_to_end(loop, asyncio.sleep(0, "next")) == ("next", None)


def test_awaiting_a_non_future_uncaught_ends_the_call(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> None:
        await BadYield()

    _, exc = run_to_end(loop, body())
    assert isinstance(exc, RuntimeError), exc

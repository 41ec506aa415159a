"""runner.ops.logs: rate-limited per-request lines (LogLimiter, flush) and
what reaches APISIX's error.log in managed mode."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest

from runner.ops import logs
from runner.settings import LoggingSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Every record a logger writes, formatted, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    log = logging.getLogger("test.limits")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def limiter(clock: Clock, every: float = 10.0, max_kinds: int = 1000) -> logs.LogLimiter:
    return logs.LogLimiter(logging.getLogger("test.limits"), every, clock, max_kinds)


def raised(i: int) -> BaseException:
    try:
        raise RuntimeError(f"boom {i}")
    except RuntimeError as exc:
        return exc


def test_first_line_in_full_then_one_summary_per_interval(lines: Lines) -> None:
    clock = Clock()
    start = clock.now
    limited = limiter(clock)
    for i in range(200):
        limited.error("plugin 'x' raised RuntimeError", "request %d: plugin 'x' raised", i,
                      exc_info=raised(i))  # fmt: skip
        clock.now += 0.01  # 200 calls in 2 s
    assert lines.messages == ["request 0: plugin 'x' raised"]
    assert lines.records[0].exc_info is not None  # the traceback, once
    assert limited.pending() == 199

    clock.now = start + 10.0  # the next repeat writes the summary
    limited.error("plugin 'x' raised RuntimeError", "request %d: plugin 'x' raised", 200)
    assert len(lines.records) == 2
    summary = lines.records[1]
    assert summary.levelno == logging.ERROR and summary.exc_info is None
    assert summary.getMessage().startswith("plugin 'x' raised RuntimeError: 200 more times in")
    assert limited.pending() == 0


def test_flush_writes_a_due_summary_without_a_further_event(lines: Lines) -> None:
    clock = Clock()
    limited = limiter(clock)
    for _ in range(5):
        limited.warning("HTTPReqCall: malformed request", "HTTPReqCall: malformed request: x")
    logs.flush()  # not due yet
    assert len(lines.records) == 1
    clock.now += 10.0
    logs.flush()  # the module-level flush reaches every limiter
    assert len(lines.records) == 2
    assert lines.records[1].levelno == logging.WARNING
    assert "malformed request: 4 more times in the last 10 s" in lines.messages[1]
    clock.now += 10.0
    logs.flush()  # nothing new: no line, and the kind is forgotten
    assert len(lines.records) == 2
    limited.warning("HTTPReqCall: malformed request", "HTTPReqCall: malformed request: y")
    assert lines.messages[-1] == "HTTPReqCall: malformed request: y"  # a new episode, in full


def test_final_flush_writes_what_is_pending(lines: Lines) -> None:
    clock = Clock()
    limited = limiter(clock)
    for _ in range(3):
        limited.error("k", "line")
    limited.flush(final=True)
    assert lines.messages == ["line", "k: 2 more times in the last 0 s (not logged one by one)"]


def test_kinds_are_counted_apart(lines: Lines) -> None:
    clock = Clock()
    limited = limiter(clock)
    for _ in range(3):
        limited.error("plugin 'a' raised KeyError", "a KeyError")
        limited.error("plugin 'a' raised TypeError", "a TypeError")
        limited.error("plugin 'b' raised KeyError", "b KeyError")
        limited.error("PrepareConf for route key r1 rejected: x", "r1")
        limited.error("PrepareConf for route key r2 rejected: x", "r2")
    assert lines.messages == ["a KeyError", "a TypeError", "b KeyError", "r1", "r2"]
    clock.now += 10
    logs.flush()
    assert sorted(lines.messages[5:]) == sorted(
        f"{k}: 2 more times in the last 10 s (not logged one by one)"
        for k in ("plugin 'a' raised KeyError", "plugin 'a' raised TypeError",
                  "plugin 'b' raised KeyError", "PrepareConf for route key r1 rejected: x",
                  "PrepareConf for route key r2 rejected: x")
    )  # fmt: skip


def test_too_many_kinds_are_counted_together(lines: Lines) -> None:
    clock = Clock()
    limited = limiter(clock, max_kinds=3)
    for i in range(100):
        limited.error(f"route key {i} rejected", "route key %d rejected", i)
    assert lines.messages == [f"route key {i} rejected" for i in range(4)]
    clock.now += 10
    logs.flush()
    assert lines.messages[-1].startswith(
        "other repeated lines (more than 3 kinds at once): 96 more"
    )


# --------------------------------------------------------------------------- managed mode


Setup = Callable[[LoggingSettings, bool], io.StringIO]


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """setup_logging writing to a StringIO for stderr (patched when called: the
    capture of the test run puts its own back between phases); the root logger
    restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._role, logs._child_level

    def start(conf: LoggingSettings, foreground: bool) -> io.StringIO:
        out = io.StringIO()
        monkeypatch.setattr("sys.stderr", out)
        logs.setup_logging(conf, foreground)
        return out

    try:
        yield start
    finally:
        root.handlers[:], level, logs._role, logs._child_level = saved
        root.setLevel(level)


def test_managed_mode_writes_warnings_and_the_start_up_summary(setup: Setup) -> None:
    stderr = setup(LoggingSettings(), False)
    # As the supervisor and discovery log them.
    summary = logs.SUMMARY_LINE
    logging.getLogger("runner.supervisor").info(
        "listening on %s with %d workers", "/s", 2, extra=summary
    )
    logging.getLogger("runner.plugins").info("loaded plugins: %s", "stop", extra=summary)
    logging.getLogger("runner.supervisor").info("worker %d started (pid %d)", 0, 1)
    logging.getLogger("runner.server").warning("%s is world-writable", "/p")
    logging.getLogger("runner.plugins").info({"not": "a format string"})
    logging.getLogger("runner.supervisor").info("%d plugins ready", 3, extra=logs.SUMMARY_LINE)
    text = stderr.getvalue()
    assert "INFO [supervisor pid " in text
    assert "listening on /s with 2 workers" in text
    assert "loaded plugins: stop" in text
    assert "3 plugins ready" in text
    assert "WARNING [supervisor pid " in text and "/p is world-writable" in text
    assert "worker 0 started" not in text
    assert "not" not in text.replace("/p is", "")

    # A worker: per-request INFO is not even made into a record.
    logs.set_role("worker 0")
    assert not logging.getLogger("plugin").isEnabledFor(logging.INFO)
    logging.getLogger("runner.worker").info("loaded plugins: %s", "from a worker")
    logging.getLogger("plugin").warning("a plugin warns")
    text = stderr.getvalue()
    assert "from a worker" not in text
    assert "WARNING [worker 0 pid " in text and "a plugin warns" in text


def test_foreground_keeps_the_configured_level(setup: Setup) -> None:
    stderr = setup(LoggingSettings(level="INFO"), True)
    logs.set_role("worker 1")
    logging.getLogger("runner.worker").info("serving on %s", "/s")
    assert "serving on /s" in stderr.getvalue()


def test_the_level_still_applies_in_managed_mode(setup: Setup) -> None:
    stderr = setup(LoggingSettings(level="ERROR"), False)
    logging.getLogger("runner.supervisor").info("listening on %s with %d workers", "/s", 2)
    logging.getLogger("runner.server").warning("a warning")
    logging.getLogger("runner.server").error("an error")
    assert stderr.getvalue().count("\n") == 1 and "an error" in stderr.getvalue()

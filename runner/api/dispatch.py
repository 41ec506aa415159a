"""Runs plugin chains and turns their outcome into reply frames.

No I/O here: the connection hands in decoded views and an ``ask`` function for
ExtraInfo, and gets back the bytes of the final frame. Exceptions map to
protocol errors: a plugin that raises becomes SERVICE_UNAVAILABLE (logged with
its traceback and name), a malformed request BAD_REQUEST. Those lines go
through a rate limiter (``logs.LogLimiter``): a plugin failing on every request
logs its traceback once, then a count every ``logs.SUMMARY_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from time import perf_counter
from typing import Any, Final

from runner.api.calltask import CallTask
from runner.api.chain import Chain, Step
from runner.api.http import Ask, Request, Response, UpstreamResponse
from runner.ops import logs
from runner.ops.metrics import BUCKETS, PluginStats
from runner.proto import (
    DecodeError,
    ErrCode,
    FrameTooLarge,
    ReqCallView,
    RespCallView,
    build_err,
    build_req_call_none,
    build_req_call_rewrite,
    build_req_call_stop,
    build_resp_call_resp,
)
from runner.proto.replymemo import ReplyMemo

# The log context of an async step (Final: compiled, reading logs.task_context
# per step would be a module attribute lookup each time).
_TASK_CONTEXT: Final = logs.task_context


class StepMark:
    """The request and plugin a connection's call runs now (None between
    calls): what log lines written in the call, and its deadline message, name.

    A connection runs each call in a copy of a context whose
    ``logs.task_context`` holds the connection's mark, so a step names itself
    by setting ``now``: a ``ContextVar.set`` per step cost ~1,800 instructions
    with the context it left to free. A task a plugin starts gets a copy of
    ``now`` as it is then (``logs.task_factory``, installed on each worker's
    loop), so it names its own call even after the mark moves on."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now: tuple[int, str] | None = None


log = logging.getLogger("runner.dispatch")
limited = logs.LogLimiter(log)  # per-request failure lines, one kind per plugin and error

Frame = bytes | bytearray

ERR_BAD_REQUEST: Final = build_err(ErrCode.BAD_REQUEST)
ERR_UNAVAILABLE: Final = build_err(ErrCode.SERVICE_UNAVAILABLE)
ERR_TOKEN_NOT_FOUND: Final = build_err(ErrCode.CONF_TOKEN_NOT_FOUND)
# Metrics outcome of a call, by the identity of its (shared) error frame.
OUTCOMES: Final[dict[int, str]] = {
    id(ERR_BAD_REQUEST): "bad_request",
    id(ERR_UNAVAILABLE): "service_unavailable",
    id(ERR_TOKEN_NOT_FOUND): "conf_token_not_found",
}

# Hop-by-hop headers never go back in a post-resp header set (RFC 9110 §7.6.1);
# APISIX would copy them onto the client response as if end-to-end.
_HOP_BY_HOP: Final = frozenset(
    ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade")
)  # fmt: skip


class PluginFailed(Exception):
    """A plugin raised or missed its deadline; carries its name for the log line."""

    def __init__(self, name: str, outcome: str = "error") -> None:
        super().__init__(name)
        self.plugin = name
        self.outcome = outcome


class ReplyTooLarge(FrameTooLarge):
    """An async call's reply that no frame can carry, with the route it was for."""

    def __init__(self, route: str, exc: FrameTooLarge) -> None:
        super().__init__(str(exc))
        self.route = route
        # What `raise ... from None` means, which the compiled build ignores.
        self.__suppress_context__ = True


class PluginTimeout(Exception):
    """Raised inside a plugin (a ``def``, or an ``async def`` between two
    awaits) that held the event loop past ``inline_timeout`` (see
    runner.server.watchdog)."""


def req_reply(request: Request, response: Response, memo: ReplyMemo | None = None) -> Frame:
    """The HTTPReqCall answer for what the chain did. ``memo``: the chain's,
    for a Rewrite of headers and args only (the usual kind)."""
    if response.stopped:
        status = response.status or 200
        return build_req_call_stop(
            request.id, status, response.header_items(), response.body or b""
        )
    path, headers, args, body = request.upstream_changes()
    resp_headers = response.header_items()
    if path is None and body is None and not resp_headers:
        if not (headers or args):
            return build_req_call_none(request.id)
        if memo is not None:
            return memo.rewrite(request.id, headers, args)
    return build_req_call_rewrite(request.id, path, headers, args, resp_headers, body)


def resp_reply(response: UpstreamResponse) -> Frame:
    """The HTTPRespCall answer, always with the complete header set.

    APISIX replaces *all* upstream headers with the runner's when it sends any,
    and when it sends none it copies the upstream's minus Content-Type,
    Location and other "vital" ones (PROTOCOL.md §6.8). Sending the merged set
    every time is the only way the upstream's headers all reach the client.
    """
    body = response.new_body
    drop = _HOP_BY_HOP if body is None else _HOP_BY_HOP | {"content-length"}
    headers = [(n, v) for n, v in response.all_headers() if n.lower() not in drop]
    status = response.status if response.status != response.upstream_status else 0
    return build_resp_call_resp(response.id, status, headers, body)


def _failed(step: Step, exc: BaseException, outcome: str, seconds: float) -> None:
    """A plugin raised or missed its deadline: skip it (fail-open) or fail the call."""
    if step.stats is not None:
        step.stats.count("skipped" if step.fail_open else outcome, seconds)
    if not step.fail_open:
        failure = PluginFailed(step.name, outcome)
        # Set by hand, not `raise ... from exc`: compiled (mypyc), `from` is
        # dropped, and the log line's traceback is the cause's.
        failure.__cause__ = exc
        raise failure
    if outcome == "timeout":
        what = f"plugin {step.name!r} missed its deadline; skipped (fail_open)"
        limited.warning(what, "%s", what)
    else:
        limited.warning(
            f"plugin {step.name!r} raised {type(exc).__name__}; skipped (fail_open)",
            "plugin %r raised %r; skipped (fail_open)", step.name, exc,
        )  # fmt: skip


def _count_req(
    stats: PluginStats, mark: int, request: Request, response: Response, seconds: float
) -> None:
    if response.stopped:
        stats.stop += 1
    elif request.change_count(response) != mark:
        stats.rewrite += 1
    else:
        stats.passed += 1
    stats.counts[bisect_left(BUCKETS, seconds)] += 1
    stats.sum += seconds


def _sync_outcome(exc: Exception) -> str:
    # An inline plugin misses its deadline only through the watchdog.
    return "timeout" if isinstance(exc, PluginTimeout) else "error"


def _call_timed(step: Step, stats: PluginStats, request: Request, response: Response) -> None:
    """One plain ``def`` step with metrics on: its outcome and time counted."""
    mark = request.change_count(response)
    t0 = perf_counter()
    try:
        step.fn(step.conf, request, response)
    except DecodeError:
        raise
    except Exception as exc:
        _failed(step, exc, _sync_outcome(exc), perf_counter() - t0)
        return
    _count_req(stats, mark, request, response, perf_counter() - t0)


async def _run_guarded(step: Step, req_id: int, mark: StepMark | None, *args: Any) -> float | None:
    """Run one step of an async chain: the seconds it took, or None when it
    failed and was skipped (fail-open); otherwise a failure raises.

    One coroutine per step, the step's call written out: every level of
    coroutine costs each ExtraInfo answer a resume on its way to the plugin."""
    t0 = perf_counter()
    # Log lines the plugin writes name the request and the plugin; the
    # context ends with the plugin (the failure line names them itself).
    where = (req_id, step.name)
    context = None
    if mark is not None:
        mark.now = where
    else:
        context = _TASK_CONTEXT.set(where)
    try:
        try:
            if not step.is_async:
                step.fn(step.conf, *args)
            elif step.timeout is None:
                await step.fn(step.conf, *args)
            else:
                async with asyncio.timeout(step.timeout):
                    await step.fn(step.conf, *args)
        finally:
            if context is not None:
                _TASK_CONTEXT.reset(context)
            elif mark is not None:
                mark.now = None
    except DecodeError:
        raise
    except Exception as exc:
        _failed(step, exc, "timeout" if isinstance(exc, TimeoutError | PluginTimeout) else "error",
                perf_counter() - t0)  # fmt: skip
        return None
    return perf_counter() - t0


class _InlineCall:
    """The inline call running now, for the log lines its plugins write."""

    __slots__ = ("plugin", "req_id")

    def __init__(self) -> None:
        self.req_id = 0
        self.plugin: str | None = None

    def context(self) -> tuple[int, str] | None:
        plugin = self.plugin
        return None if plugin is None else (self.req_id, plugin)


_INLINE: Final = _InlineCall()
logs.inline_context = _INLINE.context


def run_req_sync(chain: Chain, view: ReqCallView, ask: Ask) -> Frame:
    """The request phase for a chain of plain ``def`` filters, run inline."""
    request = Request(view, ask, view.conf_token)
    response = Response()
    inline = _INLINE
    inline.req_id = request.id
    try:
        for step in chain.req:
            inline.plugin = step.name
            stats = step.stats
            if stats is not None:
                _call_timed(step, stats, request, response)
            else:
                # The usual step (no metrics), written out: a Python call
                # per plugin is a tenth of a no-op plugin's whole cost.
                try:
                    step.fn(step.conf, request, response)
                except DecodeError:
                    raise
                except Exception as exc:
                    _failed(step, exc, _sync_outcome(exc), 0.0)
            if response.stopped:
                break
    finally:
        inline.plugin = None
    return req_reply(request, response, chain.memo)


async def run_req_async(
    chain: Chain, view: ReqCallView, ask: Ask, mark: StepMark | None = None
) -> Frame:
    """The request phase for a chain with an ``async def`` filter, run as the
    call's coroutine. ``mark``: the connection's (see StepMark); without
    one, each step sets ``logs.task_context`` itself."""
    request = Request(view, ask, view.conf_token)
    response = Response()
    req_id = request.id
    for step in chain.req:
        stats = step.stats
        if stats is not None:
            changes = request.change_count(response)
            seconds = await _run_guarded(step, req_id, mark, request, response)
            if seconds is not None:
                _count_req(stats, changes, request, response, seconds)
        elif step.timeout is not None or not step.is_async:
            await _run_guarded(step, req_id, mark, request, response)
        else:
            # _run_guarded written out for the usual async step (no metrics,
            # no deadline of its own): a coroutine less on the way to every
            # ExtraInfo answer. The log context is not reset after the step
            # (a reset costs as much as the set): the next step sets its own,
            # and nothing but this step's own failure line (which names the
            # plugin anyway) logs in the call's context after it.
            if mark is not None:
                mark.now = (req_id, step.name)
            else:
                _TASK_CONTEXT.set((req_id, step.name))
            try:
                await step.fn(step.conf, request, response)
            except DecodeError:
                raise
            except Exception as exc:
                _failed(
                    step,
                    exc,
                    "timeout" if isinstance(exc, TimeoutError | PluginTimeout) else "error",
                    0.0,
                )
        if response.stopped:
            break
    try:
        return req_reply(request, response, chain.memo)
    except FrameTooLarge as exc:  # the log line's kind is the route (see failure_frame)
        raise ReplyTooLarge(chain.key, exc) from None


async def run_resp(
    chain: Chain, view: RespCallView, ask: Ask, mark: StepMark | None = None
) -> Frame:
    """The post-resp phase, run as the call's coroutine (``mark``: as run_req_async's)."""
    response = UpstreamResponse(view.id, view.status, view.headers, ask)
    for step in chain.resp:
        seconds = await _run_guarded(step, response.id, mark, response)
        if step.stats is not None and seconds is not None:
            step.stats.count("pass", seconds)
    try:
        return resp_reply(response)
    except FrameTooLarge as exc:
        raise ReplyTooLarge(chain.key, exc) from None


def failure_frame(exc: BaseException, what: str, route: str = "") -> Frame:
    """The type-0 frame for an exception escaping a call, logged once: the
    first of a kind in full, its repeats summed up (see ``limited``).
    ``route``: the route key of the call's chain, where the caller has it."""
    if isinstance(exc, DecodeError):
        limited.warning("malformed request", "%s: malformed request: %s", what, exc)
        return ERR_BAD_REQUEST
    if isinstance(exc, PluginFailed):
        name = exc.plugin
        if exc.outcome == "timeout":
            # The watchdog's reason (it held the event loop), or its own deadline.
            why = (
                exc.__cause__ if isinstance(exc.__cause__, PluginTimeout) else "missed its deadline"
            )
            limited.error(f"plugin {name!r} missed its deadline",
                          "%s: plugin %r %s", what, name, why)  # fmt: skip
        else:
            cause = exc.__cause__
            limited.error(f"plugin {name!r} raised {type(cause).__name__}",
                          "%s: plugin %r raised", what, name, exc_info=cause)  # fmt: skip
        return ERR_UNAVAILABLE
    if isinstance(exc, FrameTooLarge):
        if isinstance(exc, ReplyTooLarge):
            route = exc.route
        limited.error(f"reply too large for the protocol (route key {route})",
                      "%s: reply too large for the protocol: %s", what, exc)  # fmt: skip
        return ERR_UNAVAILABLE
    limited.error(f"internal error ({type(exc).__name__})", "%s: internal error", what,
                  exc_info=exc)  # fmt: skip
    return ERR_UNAVAILABLE


def running_plugin(call: CallTask) -> str | None:
    """The plugin an async call is in now: the step awaiting when, say, the
    call's deadline hits. Each step names itself in ``logs.task_context``, in
    the call's own context, so asking costs the success path nothing."""
    running = logs.where(call._context.get(logs.task_context))
    return running[1] if running is not None else None

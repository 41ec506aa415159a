"""Reading a call's result the way the redis-limit tests do."""

from __future__ import annotations

from runner.testing import ReqCallResult, Rewrite, Stop


def headers_of(result: ReqCallResult) -> dict[str, str | None]:
    """The response headers a call sets: a stop's, or a rewrite's resp_headers."""
    action = result.action
    if isinstance(action, Stop):
        return dict(action.headers)
    if action is None:
        return {}
    assert isinstance(action, Rewrite), action
    return dict(action.resp_headers)


def allowed(result: ReqCallResult) -> bool:
    return not isinstance(result.action, Stop)


def status(result: ReqCallResult) -> int | None:
    return result.action.status if isinstance(result.action, Stop) else None

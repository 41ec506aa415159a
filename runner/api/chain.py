"""A route's chain: its plugins in order, each with its config decoded once.

Built at PrepareConf (by the conf store, or by the test kit) and run per call
by :mod:`runner.api.dispatch`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from runner.api.plugin import ConfError, Plugin, has_filter, has_response_filter, is_async
from runner.api.policy import in_thread
from runner.ops.metrics import PluginStats, WorkerMetrics
from runner.proto.replymemo import ReplyMemo
from runner.settings import PluginOptions

log = logging.getLogger("runner.confstore")


# Plain classes, not NamedTuples: this module is compiled with the hot path
# (runner/hotpath.py), where reading a field of a native class is a load,
# and a NamedTuple's field a lookup by name through its type.


class Step:
    """One plugin of a route's chain, with its config decoded."""

    __slots__ = ("conf", "fail_open", "fn", "is_async", "name", "stats", "timeout")

    def __init__(
        self,
        fn: Callable[..., Any],
        conf: Any,
        name: str,
        is_async: bool,
        stats: PluginStats | None = None,  # this worker's metrics of the plugin
        fail_open: bool = False,  # skip the plugin (log + metric) when it fails
        timeout: float | None = None,  # its own deadline (async plugins)
    ) -> None:
        self.fn: Final = fn
        self.conf: Final = conf
        self.name: Final = name
        self.is_async: Final = is_async
        self.stats: Final = stats
        self.fail_open: Final = fail_open
        self.timeout: Final = timeout

    def __repr__(self) -> str:
        return f"Step({self.name!r}, is_async={self.is_async})"


class Chain:
    """A route's plugins in order, split by phase."""

    __slots__ = ("key", "memo", "releases", "req", "req_async", "resp", "resp_async")

    def __init__(
        self,
        key: str,
        req: tuple[Step, ...],
        resp: tuple[Step, ...],
        req_async: bool,
        resp_async: bool,
        # The plugins' release_conf hooks, bound to this route's configs: run
        # when the worker drops the chain (see release).
        releases: tuple[Callable[[], object], ...] = (),
    ) -> None:
        self.key: Final = key
        self.req: Final = req
        self.resp: Final = resp
        self.req_async: Final = req_async
        self.resp_async: Final = resp_async
        self.releases: Final = releases
        # The route's last Rewrite, answered again while calls change the same.
        self.memo: Final = ReplyMemo()

    def __repr__(self) -> str:
        return f"Chain({self.key!r}, req={self.req!r}, resp={self.resp!r})"


def release(chain: Chain) -> None:
    """Let plugins free what a route's config holds (connections, sessions)
    once the worker drops the chain: evicted, expired or replaced."""
    for hook in chain.releases:
        try:
            hook()
        except Exception:
            log.exception("route key %s: releasing a plugin's config failed", chain.key)


def _step(
    fn: Callable[..., Any],
    parsed: Any,
    name: str,
    options: PluginOptions | None,
    metrics: WorkerMetrics | None,
) -> Step:
    if options is not None and options.blocking and not is_async(fn):
        fn = in_thread(fn)  # a blocking def may not freeze the event loop
    stats = metrics.plugin(name) if metrics is not None else None
    if options is None:
        return Step(fn, parsed, name, is_async(fn), stats)
    return Step(fn, parsed, name, is_async(fn), stats, options.fail_open, options.timeout)


def build_chain(
    plugins: Mapping[str, Plugin],
    key: str,
    conf: Sequence[tuple[str, str]],
    options: Mapping[str, PluginOptions] | None = None,
    metrics: WorkerMetrics | None = None,
) -> Chain:
    """Decode every plugin config of a route, in order. Duplicates are kept."""
    options = options or {}
    req: list[Step] = []
    resp: list[Step] = []
    releases: list[Callable[[], object]] = []
    for index, (name, raw) in enumerate(conf):
        try:
            plugin, parsed = _parse(plugins, index, name, raw)
        except ConfError:
            release(Chain(key, (), (), False, False, tuple(releases)))  # what was parsed so far
            raise
        hook = getattr(plugin, "release_conf", None)
        if hook is not None:
            releases.append(functools.partial(hook, parsed))
        opts = options.get(name) or PluginOptions.of(plugin)
        if has_filter(plugin):
            req.append(_step(plugin.filter, parsed, name, opts, metrics))
        if has_response_filter(plugin):
            resp.append(_step(plugin.response_filter, parsed, name, opts, metrics))
    return Chain(
        key, tuple(req), tuple(resp),
        any(s.is_async for s in req), any(s.is_async for s in resp), tuple(releases),
    )  # fmt: skip


def _parse(plugins: Mapping[str, Plugin], index: int, name: str, raw: str) -> tuple[Plugin, Any]:
    plugin = plugins.get(name)
    if plugin is None:
        known = ", ".join(sorted(plugins)) or "none"
        raise ConfError(f"conf[{index}]: unknown plugin {name!r} (loaded: {known})")
    try:
        return plugin, plugin.parse_conf(raw)
    except ConfError as exc:
        failed = ConfError(f"conf[{index}] plugin {name!r}: {exc}")
    except (ValueError, TypeError, KeyError) as bad:  # a name per except (mypyc)
        failed = ConfError(f"conf[{index}] plugin {name!r}: {bad!r}")
    # `from None` by hand: compiled (mypyc), `raise ... from` is dropped.
    failed.__suppress_context__ = True
    raise failed

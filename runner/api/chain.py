"""A route's chain: its plugins in order, each with its config decoded once.

Built at PrepareConf (by the conf store, or by the test kit) and run per call
by :mod:`runner.api.dispatch`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from runner.api.plugin import ConfError, Plugin, has_filter, has_response_filter, is_async
from runner.api.policy import in_thread
from runner.ops.metrics import PluginStats, WorkerMetrics
from runner.settings import PluginOptions


class Step(NamedTuple):
    """One plugin of a route's chain, with its config decoded."""

    fn: Callable[..., Any]
    conf: Any
    name: str
    is_async: bool
    stats: PluginStats | None = None  # this worker's metrics of the plugin
    fail_open: bool = False  # skip the plugin (log + metric) when it fails
    timeout: float | None = None  # its own deadline (async plugins)


class Chain(NamedTuple):
    """A route's plugins in order, split by phase."""

    key: str
    req: tuple[Step, ...]
    resp: tuple[Step, ...]
    req_async: bool
    resp_async: bool


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
    for index, (name, raw) in enumerate(conf):
        plugin = plugins.get(name)
        if plugin is None:
            known = ", ".join(sorted(plugins)) or "none"
            raise ConfError(f"conf[{index}]: unknown plugin {name!r} (loaded: {known})")
        try:
            parsed = plugin.parse_conf(raw)
        except ConfError as exc:
            raise ConfError(f"conf[{index}] plugin {name!r}: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfError(f"conf[{index}] plugin {name!r}: {exc!r}") from None
        opts = options.get(name) or PluginOptions.of(plugin)
        if has_filter(plugin):
            req.append(_step(plugin.filter, parsed, name, opts, metrics))
        if has_response_filter(plugin):
            resp.append(_step(plugin.response_filter, parsed, name, opts, metrics))
    return Chain(
        key, tuple(req), tuple(resp), any(s.is_async for s in req), any(s.is_async for s in resp)
    )

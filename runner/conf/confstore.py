"""Conf tokens: PrepareConf's plugin configs, parsed once, found by token.

Two levels, so that several worker processes can share one conf space:

* a **backend** holds the raw ``(key, [(plugin, config string)])`` of every
  live token and allocates tokens. It is the single source of truth; a
  backend shared by all workers (see ``runner.conf.sharedstore``) lets a token
  issued by one worker resolve on every other.
* each worker's :class:`ConfStore` keeps an LRU of decoded :class:`Chain`s in
  front of it, so the hot path is one dict lookup in the worker's own memory.
  A token the LRU lacks is fetched from the backend and parsed once.

Tokens slide: every use renews a token's lifetime (PROTOCOL.md §6.3 — APISIX
may use a token ~6840 s after it was issued). Tokens start at a random offset
so that a restarted runner never hands out a number an earlier runner issued
and APISIX may still hold (it would run another route's plugins).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from runner.api.chain import Chain, build_chain, release
from runner.api.plugin import ConfError, Plugin
from runner.ops.logs import LogLimiter
from runner.ops.metrics import WorkerMetrics
from runner.settings import PluginOptions

log = logging.getLogger("runner.confstore")
limited = LogLimiter(log)  # a stored conf that fails parses again on every call

RawConf = tuple[tuple[str, str], ...]


class Backend(Protocol):
    def issue(self, key: str, conf: RawConf) -> int:
        """The live token of (key, conf), or a new one."""

    def lookup(self, token: int) -> tuple[str, RawConf] | None: ...

    def touch(self, token: int) -> None:
        """Renew a token's lifetime."""


class ConfStore:
    """A worker's view of the conf space: decoded chains by token."""

    def __init__(
        self,
        plugins: Mapping[str, Plugin],
        backend: Backend,
        cache_size: int = 4096,
        touch_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        options: Mapping[str, PluginOptions] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._plugins = plugins
        self._options = options
        self.metrics = metrics
        self._backend = backend
        self._size = cache_size
        self._clock = clock
        # The time get() compares with: the clock's, read on each call, until
        # coarse_clock(); then whatever tick() read last. A worker ticks it
        # four times a second (runner.server.worker), sparing a clock read per
        # call; touches are a minute apart.
        self._coarse = False
        self._now = clock()
        self._touch_every = touch_every
        # token -> (chain, when the backend was last told of a use)
        self._lru: OrderedDict[int, tuple[Chain, float]] = OrderedDict()
        # The token get() last moved to the end of the LRU, and its entry:
        # while it stays the last, a call on the same route (the usual run of
        # calls) needs neither the dict lookup nor move_to_end. Any other
        # change of the LRU forgets it (-1: no token).
        self._last = -1
        self._last_entry: tuple[Chain, float] | None = None

    def prepare(self, key: str, conf: Sequence[tuple[str, str]]) -> int:
        """Parse a route's configs (raising ConfError) and return its token."""
        chain = self._build(key, conf)
        try:
            token = self._backend.issue(key, tuple(conf))
        except ConfError:
            release(chain)
            raise
        if token in self._lru:
            # Every nginx worker prepares the same route: keep the chain this
            # worker has (plugins may keep per-route state in it).
            release(chain)
            self._lru.move_to_end(token)
            self._forget_last()
        else:
            self._remember(token, chain)
        return token

    def get(self, token: int) -> Chain | None:
        """The chain of a live token, or None (answer CONF_TOKEN_NOT_FOUND)."""
        entry = self._last_entry if token == self._last else self._lru.get(token)
        if entry is None:
            if self.metrics is not None:
                self.metrics.conf_misses += 1
            return self._load(token)
        if self.metrics is not None:
            self.metrics.conf_hits += 1
        now = self._now if self._coarse else self._clock()
        if now - entry[1] > self._touch_every:
            # Tell the backend at most once a minute per token, not per call.
            self._forget_last()
            if self._backend.lookup(token) is None:
                del self._lru[token]
                release(entry[0])
                return None
            self._backend.touch(token)
            entry = self._lru[token] = (entry[0], now)
        if token != self._last:
            self._lru.move_to_end(token)
            self._last, self._last_entry = token, entry
        return entry[0]

    def coarse_clock(self) -> None:
        """From now on, get() reads the time tick() last read, not the clock."""
        self._coarse = True
        self.tick()

    def tick(self) -> None:
        """Read the clock for get() (see coarse_clock)."""
        self._now = self._clock()

    def _load(self, token: int) -> Chain | None:
        found = self._backend.lookup(token)
        if found is None:
            return None
        key, conf = found
        try:
            chain = self._build(key, conf)
        except ConfError:
            limited.error(f"the stored conf of route key {key} no longer parses",
                          "token %d (route key %s) no longer parses", token, key,
                          exc_info=True)  # fmt: skip
            return None
        self._backend.touch(token)
        self._remember(token, chain)
        return chain

    def _build(self, key: str, conf: Sequence[tuple[str, str]]) -> Chain:
        return build_chain(self._plugins, key, conf, self._options, self.metrics)

    def _forget_last(self) -> None:
        self._last, self._last_entry = -1, None

    def _remember(self, token: int, chain: Chain) -> None:
        self._forget_last()
        self._lru[token] = (chain, self._clock())
        self._lru.move_to_end(token)
        while len(self._lru) > self._size:
            release(self._lru.popitem(last=False)[1][0])

    def __len__(self) -> int:
        return len(self._lru)

    def close(self) -> None:
        """Drop every chain (the worker stops): plugins release their configs."""
        self._forget_last()
        while self._lru:
            release(self._lru.popitem(last=False)[1][0])

"""Interrupts a plugin that holds the event loop too long.

Sync plugins run inline on the event loop (the fastest path), and an async
plugin's code between two awaits does too. One that blocks (``time.sleep``, a
blocking socket, an endless loop, a quadratic computation on a client's input)
would freeze every connection of its worker until APISIX gives up after 60 s.
A daemon thread watches the connection state's inline-step counter (inline
calls, and each step of an async call: see CallTask's guard): when the same
step is still running after ``limit`` seconds, it sends the worker's main
thread SIGUSR1, whose handler raises :class:`~runner.api.dispatch.PluginTimeout`
inside the plugin. The call then fails (or, for a fail-open plugin, skips it)
and the loop runs again. Per step this costs a few attribute writes, no clock
read.

Blocking in C code that holds the GIL cannot be interrupted this way; mark
such plugins ``blocking`` so they run in a thread (runner.api.policy).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Protocol

from runner.api.dispatch import PluginTimeout

log = logging.getLogger("runner.watchdog")


class InlineState(Protocol):
    inline_calls: int
    inline: bool


class Watchdog:
    def __init__(self, state: InlineState, limit: float) -> None:
        self._state = state
        self._limit = limit
        self._stuck_call = -1
        self._stop = threading.Event()
        self._main = threading.main_thread().ident

    def start(self) -> None:
        signal.signal(signal.SIGUSR1, self._interrupt)
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        state = self._state
        tick = min(0.1, self._limit / 4)
        seen, since = -1, time.monotonic()
        while not self._stop.wait(tick):
            calls, now = state.inline_calls, time.monotonic()
            if not state.inline or calls != seen:
                seen, since = calls, now
                continue
            if now - since >= self._limit and self._stuck_call != calls:
                self._stuck_call = calls
                assert self._main is not None
                signal.pthread_kill(self._main, signal.SIGUSR1)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: raise only if that very
        # call is still running, never into the event loop's own code.
        state = self._state
        if state.inline and state.inline_calls == self._stuck_call:
            raise PluginTimeout(f"blocked the event loop for more than {self._limit:.1f} s")

"""Fixtures shared by the unit tests at this level."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh uvloop event loop, not running: the test drives it."""
    lp: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()

"""A plugin that computes for a long time between two awaits cannot hold its
worker: the watchdog interrupts it after inline_timeout, the call fails with
SERVICE_UNAVAILABLE, and the worker's other connections are served again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.testing import HTTPRequest, RunnerError, Stop
from runner.testing.pytest_plugin import RunningRunner
from tests.integration.conftest import start_runner

PLUGINS = str(Path(__file__).resolve().parent / "plugins")


@pytest.fixture(scope="module")
def runner() -> Iterator[RunningRunner]:
    config = {"workers": 1, "inline_timeout": 0.3, "call_timeout": 20}
    running = start_runner(plugins_dir=PLUGINS, config=config)
    yield running
    running.stop()


def test_an_async_step_that_holds_the_loop_is_interrupted(runner: RunningRunner) -> None:
    async def scenario() -> tuple[BaseException | object, object]:
        async with await runner.client() as busy, await runner.client() as other:
            slow = await busy.prepare_conf([("busy-async", "15")])
            quick = await other.prepare_conf([("stop", '{"status": 204}')])
            attack = asyncio.ensure_future(busy.call(slow, HTTPRequest()))
            await asyncio.sleep(0.05)  # the busy step holds the worker now
            bystander = await other.call(quick, HTTPRequest())
            outcome = await asyncio.gather(attack, return_exceptions=True)
            return outcome[0], bystander.action

    attack, bystander = asyncio.run(scenario())
    # 15 s of computing would have outlived APISIX's patience; 0.3 s did not.
    assert isinstance(attack, RunnerError) and attack.name == "SERVICE_UNAVAILABLE", attack
    assert isinstance(bystander, Stop) and bystander.status == 204
    assert "blocked the event loop for more than 0.3 s" in runner.log_text()

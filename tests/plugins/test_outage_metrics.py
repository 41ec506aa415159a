"""A backend outage is counted in /metrics, per plugin: outages and the
requests they failed (runner.ops.outage with runner.ops.metrics)."""

from __future__ import annotations

import asyncio
import json
import time

from runner.testing import HTTPRequest, Stop
from runner.testing.pytest_plugin import RunnerFactory
from tests.integration.test_operations import free_port, http_get, samples


def test_a_redis_outage_is_counted_in_metrics(runner_factory: RunnerFactory) -> None:
    port = free_port()
    runner = runner_factory(config={"metrics": {"address": f"127.0.0.1:{port}"}}, workers=1)
    closed = free_port()  # nothing listens there: Redis is "down"
    conf = {"redis_url": f"redis://127.0.0.1:{closed}/0", "fail_open": True, "timeout": 0.2}

    async def scenario() -> None:
        async with await runner.client() as c:
            token = await c.prepare_conf([("redis-limit", json.dumps(conf))])
            for _ in range(5):
                result = await c.call(token, HTTPRequest())
                assert not isinstance(result.action, Stop)  # fail_open: allowed

    asyncio.run(scenario())
    want = {
        'apisix_runner_plugin_events_total{event="outages",plugin="redis-limit"}': 1.0,
        'apisix_runner_plugin_events_total{event="outage_failures",plugin="redis-limit"}': 5.0,
    }
    deadline = time.monotonic() + 10  # the worker writes its snapshot every second or so
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        got = samples(http_get(f"http://127.0.0.1:{port}/metrics")[1])
        if all(got.get(k) == v for k, v in want.items()):
            break
        time.sleep(0.2)
    assert {k: got.get(k) for k in want} == want
    assert runner.log_text().count("unavailable (") == 1  # logged once

"""Reloads, worker-count changes and max_requests recycling under wrk,
through nginx and APISIX's ext-plugin client: APISIX sees no failed RPC and
the client no non-2xx (bench/gateway/reload.py runs the long version)."""

from __future__ import annotations

import pytest

from bench.gateway.reload import Outcome, run_once


@pytest.mark.parametrize(
    ("workers", "cycle", "max_requests"),
    [(2, [], 0), (2, [2, 3, 1], 0), (2, [], 1500)],
    ids=["sighup", "workers-2-3-1", "max-requests"],
)
def test_no_call_lost(workers: int, cycle: list[int], max_requests: int) -> None:
    outcome: Outcome = run_once("stop", 16, 4, 0.6, workers, cycle, max_requests)
    assert outcome.requests > 1000, outcome
    assert outcome.clean, outcome
    if max_requests:
        assert outcome.recycles > 0, outcome

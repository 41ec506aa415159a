"""Shared inputs of the micro-benchmarks: the load generator's realistic
HTTPReqCall (10 headers, 3 args, built with the flatc-generated code as APISIX
would build it) and a worker's conf store with the bundled and bench plugins.

Run them (the repo's testpaths is tests/, so name the directory)::

    .venv/bin/pytest bench/micro --benchmark-only
    .venv/bin/pytest bench/micro --benchmark-disable -q    # just check they run
"""

from __future__ import annotations

import pytest

from bench import loadgen
from bench.micro import harness
from runner.conf.confstore import ConfStore


@pytest.fixture(scope="session")
def call_frame() -> bytes:
    """A whole HTTPReqCall frame (header included), conf token 1."""
    return loadgen.build_call(loadgen.realistic_request(), 1)


@pytest.fixture(scope="session")
def payload(call_frame: bytes) -> bytes:
    return call_frame[4:]


@pytest.fixture
def store() -> ConfStore:
    """A conf store with every workload of the target table prepared: the
    token of workload ``name`` is ``TOKENS[name]``."""
    s = harness.new_store()
    for name, conf in harness.WORKLOADS.items():
        assert s.prepare(f"route#{name}", conf) == TOKENS[name]
    return s


TOKENS = {name: i for i, name in enumerate(harness.WORKLOADS, start=1)}

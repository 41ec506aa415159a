"""Conf lookup and chain dispatch: runner against a plain runner.

``runner`` is what a worker does with a call once its frame is cut out:
ReqCallView, the chain from the ConfStore, runner.api.dispatch.run_req_sync,
the reply frame. ``flatc`` is the straightforward way (baseline.py): decode
every field with the generated code, run the same plugin logic on dicts,
build the reply with flatbuffers.Builder.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from bench.micro import baseline
from bench.micro.conftest import TOKENS
from bench.micro.test_codec import IMPLS, Bench, pick, same_reply
from runner.api import dispatch
from runner.api.chain import Chain
from runner.conf.confstore import ConfStore
from runner.proto import ReqCallView


async def no_extra_info(info_type: int, name: str | None) -> bytes | None:
    raise AssertionError("a sync chain asked for ExtraInfo")


@pytest.mark.parametrize("impl", IMPLS)
def test_conf_lookup(benchmark: Bench, impl: str, store: ConfStore) -> None:
    """A token's chain, found in the worker's LRU (a hit: the steady state)."""
    benchmark.group = "conf lookup (hit)"
    token = TOKENS["stop"]
    chain = store.get(token)
    assert chain is not None
    # The plain way: a dict of token -> (chain, expiry), checked on every use.
    ttl: dict[int, tuple[Chain, float]] = {token: (chain, time.monotonic() + 3600.0)}

    def ours() -> Chain | None:
        return store.get(token)

    def theirs() -> Chain | None:
        entry = ttl.get(token)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    assert ours() is theirs() is chain
    benchmark(pick(impl, ours, theirs))


CHAINS: dict[str, tuple[str, list[baseline.NaivePlugin]]] = {
    "stop": ("stop", [baseline.plugin_stop]),
    "rewrite (2 headers + 1 arg, per request)": ("rewrite", [baseline.plugin_rewrite]),
    "3 no-ops": ("noop3", [baseline.plugin_noop] * 3),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chain_name", list(CHAINS))
def test_dispatch(
    benchmark: Bench, chain_name: str, impl: str, store: ConfStore, payload: bytes
) -> None:
    """Decode the call, find its chain, run it, build the reply."""
    benchmark.group = f"dispatch: {chain_name}"
    workload, naive_chain = CHAINS[chain_name]
    mv = memoryview(payload)
    token = TOKENS[workload]

    def ours() -> bytes | bytearray:
        view = ReqCallView(mv)
        chain = store.get(token)  # the call's own token is 1; look this route's up
        assert chain is not None
        return dispatch.run_req_sync(chain, view, no_extra_info)

    def theirs() -> bytes:
        return baseline.dispatch(payload, naive_chain)

    chain = store.get(token)
    assert chain is not None
    for step in chain.req:  # bench-rewrite counts its calls: both sides from 1
        if step.name == "bench-rewrite":
            plugin = getattr(step.fn, "__self__")  # noqa: B009 (a bound filter)
            baseline.restart_counts(sys.modules[type(plugin).__module__])
    same_reply(ours(), theirs())
    run: Callable[[], Any] = pick(impl, ours, theirs)
    benchmark(run)

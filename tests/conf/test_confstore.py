from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runner import ConfError, Plugin, Request, Response
from runner.conf.confstore import ConfStore
from runner.conf.sharedstore import SqliteBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cfg(msgspec.Struct):
    n: int


class Counting(Plugin):
    name = "counting"
    Config = Cfg
    parsed = 0

    def parse_conf(self, raw: str) -> Any:
        Counting.parsed += 1
        return super().parse_conf(raw)

    def filter(self, conf: Cfg, request: Request, response: Response) -> None:
        pass


class Raw(Plugin):
    name = "raw"

    async def filter(self, conf: str, request: Request, response: Response) -> None:
        pass


PLUGINS: dict[str, Plugin] = {"counting": Counting(), "raw": Raw()}


Make = Callable[..., tuple[ConfStore, Clock]]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """A factory of worker conf stores, each on a store file of its own."""
    backends: list[SqliteBackend] = []

    def factory(ttl: float = 100.0, size: int = 10, cache: int = 10) -> tuple[ConfStore, Clock]:
        clock = Clock()
        path = str(tmp_path / f"confs-{len(backends)}.sqlite3")
        SqliteBackend.create(path, ttl, size)
        backends.append(SqliteBackend(path, ttl, size, clock=clock))
        return ConfStore(PLUGINS, backends[-1], cache, touch_every=10.0, clock=clock), clock

    yield factory
    for backend in backends:
        backend.close()


def test_config_is_parsed_once_at_prepare(make: Make) -> None:
    store, _ = make()
    Counting.parsed = 0
    token = store.prepare("k", [("counting", '{"n": 1}')])
    for _ in range(100):
        chain = store.get(token)
        assert chain is not None
    assert Counting.parsed == 1
    assert chain.req[0].conf == Cfg(1)
    assert chain.req_async is False


def test_order_duplicates_and_raw_configs_are_kept(make: Make) -> None:
    store, _ = make()
    token = store.prepare("k", [("raw", "b"), ("counting", '{"n":2}'), ("raw", "a")])
    chain = store.get(token)
    assert chain is not None
    assert [(s.name, s.conf) for s in chain.req] == [
        ("raw", "b"),
        ("counting", Cfg(2)),
        ("raw", "a"),
    ]
    assert chain.req_async is True


def test_empty_conf_gets_a_token(make: Make) -> None:
    store, _ = make()
    token = store.prepare("k", [])
    assert token != 0 and store.get(token) is not None


def test_same_key_same_token_other_key_other_token(make: Make) -> None:
    store, _ = make()
    a = store.prepare("k1", [("raw", "x")])
    assert store.prepare("k1", [("raw", "x")]) == a
    assert store.prepare("k2", [("raw", "x")]) != a
    assert store.prepare("k1", [("raw", "changed")]) != a


def test_bad_configs_name_plugin_and_field(make: Make) -> None:
    store, _ = make()
    with pytest.raises(ConfError, match=r"conf\[1\]: unknown plugin 'nope'"):
        store.prepare("k", [("raw", ""), ("nope", "")])
    with pytest.raises(ConfError, match=r"conf\[0\] plugin 'counting': .*\$\.n"):
        store.prepare("k", [("counting", '{"n": "x"}')])


def test_tokens_slide_and_expire(make: Make) -> None:
    store, clock = make(ttl=100.0)
    token = store.prepare("k", [])
    for _ in range(5):  # used every 60 s: never expires
        clock.now += 60
        assert store.get(token) is not None
    clock.now += 500  # idle longer than the TTL
    assert store.get(token) is None


def test_a_coarse_clock_store_sees_time_pass_only_when_ticked(make: Make) -> None:
    """A worker's store reads the time its housekeeping last read (four
    times a second), not the clock per call: tokens still slide and expire."""
    store, clock = make(ttl=100.0)
    store.coarse_clock()
    token = store.prepare("k", [])
    for _ in range(5):  # used every 60 s, ticked in between: never expires
        clock.now += 60
        store.tick()
        assert store.get(token) is not None
    clock.now += 500  # idle longer than the TTL, but not ticked: the cached chain
    assert store.get(token) is not None
    store.tick()
    assert store.get(token) is None  # now it sees the time, and the backend's expiry


def test_backend_is_bounded_and_evicts_least_recently_used(make: Make) -> None:
    store, _ = make(size=3, cache=1)
    tokens = [store.prepare(f"k{i}", []) for i in range(5)]
    assert [store.get(t) is not None for t in tokens] == [False, False, True, True, True]


def test_the_worker_cache_evicts_the_least_recently_used_chain(make: Make) -> None:
    store, _ = make(cache=2)
    a, b = store.prepare("a", []), store.prepare("b", [])
    chain_a, chain_b = store.get(a), store.get(b)
    for _ in range(3):  # a becomes the most recent; repeated calls on it take the short way
        assert store.get(a) is chain_a
    store.prepare("c", [])  # the cache holds 2: b, the least recently used, goes
    assert store.get(a) is chain_a
    assert store.get(b) is not chain_b  # rebuilt from the backend


def test_a_chain_evicted_right_after_its_calls_is_not_handed_out_again(make: Make) -> None:
    store, _ = make(cache=1)
    a = store.prepare("a", [("counting", '{"n": 1}')])
    chain_a = store.get(a)
    assert store.get(a) is chain_a
    store.prepare("b", [])  # evicts (and releases) a's chain
    again = store.get(a)
    assert again is not None and again is not chain_a


def test_tokens_start_at_a_random_offset(make: Make) -> None:
    firsts = {make()[0].prepare("k", []) for _ in range(5)}
    assert len(firsts) == 5 and 0 not in firsts


def test_a_token_from_another_worker_resolves_through_the_backend(tmp_path: Path) -> None:
    path = str(tmp_path / "confs.sqlite3")
    SqliteBackend.create(path, 100.0, 10)
    backend_a = SqliteBackend(path, 100.0, 10)
    backend_b = SqliteBackend(path, 100.0, 10)
    try:
        token = ConfStore(PLUGINS, backend_a).prepare("k", [("counting", '{"n": 5}')])
        chain = ConfStore(PLUGINS, backend_b).get(token)
        assert chain is not None and chain.req[0].conf == Cfg(5)
    finally:
        backend_a.close()
        backend_b.close()

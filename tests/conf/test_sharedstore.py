from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runner import Plugin, Request, Response
from runner.conf import sharedstore
from runner.conf.confstore import Backend, ConfStore
from runner.conf.sharedstore import SqliteBackend

TTL = 100.0
CTX = multiprocessing.get_context("fork")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Cfg(msgspec.Struct):
    n: int


class Counting(Plugin):
    name = "counting"
    Config = Cfg

    def filter(self, conf: Cfg, request: Request, response: Response) -> None:
        pass


PLUGINS: dict[str, Plugin] = {"counting": Counting()}


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "confs.sqlite3")
    SqliteBackend.create(path, TTL, 100)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(db: str, clock: Clock) -> Iterator[SqliteBackend]:
    with SqliteBackend(db, TTL, 100, clock=clock) as b:
        yield b


def test_is_a_backend(backend: SqliteBackend) -> None:
    typed: Backend = backend
    assert typed.lookup(1) is None


def test_same_key_and_conf_same_token(backend: SqliteBackend) -> None:
    a = backend.issue("k1", (("p", "x"),))
    assert backend.issue("k1", (("p", "x"),)) == a
    others = {
        backend.issue("k2", (("p", "x"),)),
        backend.issue("k1", (("p", "changed"),)),
        backend.issue("k1", (("q", "x"),)),
        backend.issue("k1", (("p", "x"), ("p", "x"))),
        backend.issue("k1", ()),
    }
    assert a not in others and len(others) == 5
    assert 0 not in others and a != 0
    assert backend.size() == 6


def test_order_and_duplicates_survive_lookup(backend: SqliteBackend) -> None:
    conf = (("b", "2"), ("a", '{"x": "\\u00e9"}'), ("b", "2"), ("c", ""))
    token = backend.issue("route/é", conf)
    assert backend.lookup(token) == ("route/é", conf)
    assert backend.lookup(token + 1) is None


def test_tokens_start_at_a_random_offset(tmp_path: Path) -> None:
    firsts = set()
    for i in range(3):
        path = str(tmp_path / f"{i}.sqlite3")
        SqliteBackend.create(path, TTL, 10)
        with SqliteBackend(path, TTL, 10) as b:
            firsts.add(b.issue("k", ()))
    assert len(firsts) == 3 and all(0 < t < 1 << 31 for t in firsts)


def test_tokens_wrap_to_1_and_skip_live_ones(backend: SqliteBackend, db: str) -> None:
    with backend._write() as conn:
        conn.execute("UPDATE meta SET next_token = ?", (0xFFFFFFFE,))
    assert backend.issue("a", ()) == 0xFFFFFFFE
    assert backend.issue("b", ()) == 0xFFFFFFFF
    assert backend.issue("c", ()) == 1
    with backend._write() as conn:
        conn.execute("UPDATE meta SET next_token = ?", (0xFFFFFFFF,))
    assert backend.issue("d", ()) == 2  # 0xFFFFFFFF and 1 are live


def test_untouched_token_expires_touched_one_lives(backend: SqliteBackend, clock: Clock) -> None:
    idle = backend.issue("idle", ())
    used = backend.issue("used", ())
    for _ in range(5):
        clock.now += 60
        backend.touch(used)
    assert backend.lookup(idle) is None
    assert backend.lookup(used) == ("used", ())
    assert backend.size() == 1
    backend.touch(idle)  # too late: stays expired
    assert backend.lookup(idle) is None


def test_expired_key_gets_a_new_token_and_old_rows_are_deleted(
    backend: SqliteBackend, clock: Clock
) -> None:
    old = backend.issue("k", ())
    clock.now += TTL + 1
    new = backend.issue("k", ())
    assert new != old and backend.lookup(old) is None
    (rows,) = backend._db().execute("SELECT count(*) FROM conf").fetchone()
    assert rows == 1


def test_reissue_renews_the_token(backend: SqliteBackend, clock: Clock) -> None:
    token = backend.issue("k", ())
    clock.now += TTL - 1
    assert backend.issue("k", ()) == token
    clock.now += TTL - 1
    assert backend.lookup(token) == ("k", ())


def test_bound_keeps_the_most_recently_used(db: str, clock: Clock) -> None:
    with SqliteBackend(db, TTL, 3, clock=clock) as b:
        tokens = []
        for i in range(3):
            clock.now += 1
            tokens.append(b.issue(f"k{i}", ()))
        clock.now += 1
        b.touch(tokens[0])  # k0 is now more recent than k1 and k2
        for i in range(3, 5):
            clock.now += 1
            tokens.append(b.issue(f"k{i}", ()))
        alive = [b.lookup(t) is not None for t in tokens]
        assert alive == [True, False, False, True, True]
        assert b.size() == 3


# -- several processes


def _issue_keys(path: str, barrier: Barrier, out: Queue[Any], seed: int) -> None:
    keys = [f"route/{i}" for i in range(50)]
    random.Random(seed).shuffle(keys)
    with SqliteBackend(path, TTL, 1000) as b:
        barrier.wait(timeout=10)
        out.put({k: b.issue(k, (("p", k), ("q", "{}"))) for k in keys})


def _join(procs: list[Any]) -> None:
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0


def test_processes_issuing_at_once_agree_on_tokens(db: str) -> None:
    barrier = CTX.Barrier(4)
    out: Queue[Any] = CTX.Queue()
    procs = [CTX.Process(target=_issue_keys, args=(db, barrier, out, s)) for s in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    _join(procs)
    out.close()
    out.join_thread()
    assert all(r == results[0] for r in results)
    assert len(set(results[0].values())) == 50 and 0 not in results[0].values()
    with SqliteBackend(db, TTL, 1000) as b:
        assert b.size() == 50


def _lookup(path: str, token: int, out: Queue[Any]) -> None:
    with SqliteBackend(path, TTL, 100) as b:
        out.put(b.lookup(token))


def test_a_token_issued_here_resolves_in_a_child(db: str) -> None:
    with SqliteBackend(db, TTL, 100) as b:
        token = b.issue("k", (("p", "1"), ("p", "2")))
    out: Queue[Any] = CTX.Queue()
    proc = CTX.Process(target=_lookup, args=(db, token, out))
    proc.start()
    assert out.get(timeout=30) == ("k", (("p", "1"), ("p", "2")))
    _join([proc])
    out.close()
    out.join_thread()


def test_a_connection_is_not_used_across_fork(backend: SqliteBackend) -> None:
    out: Queue[Any] = CTX.Queue()

    def child() -> None:
        try:
            backend.lookup(1)
        except RuntimeError as exc:
            out.put(str(exc))

    proc = CTX.Process(target=child)
    proc.start()
    assert "opened in the process" in out.get(timeout=30)
    _join([proc])
    out.close()
    out.join_thread()


def _prepare_in_worker(path: str, out: Queue[Any]) -> None:
    with SqliteBackend(path, TTL, 100) as b:
        store = ConfStore(PLUGINS, b)
        out.put(store.prepare("k", [("counting", '{"n": 7}'), ("counting", '{"n": 8}')]))


def test_conf_store_in_another_process_resolves_the_chain(db: str) -> None:
    out: Queue[Any] = CTX.Queue()
    proc = CTX.Process(target=_prepare_in_worker, args=(db, out))
    proc.start()
    token = out.get(timeout=30)
    _join([proc])
    out.close()
    out.join_thread()
    with SqliteBackend(db, TTL, 100) as b:
        chain = ConfStore(PLUGINS, b).get(token)
        assert chain is not None and chain.key == "k"
        assert [s.conf for s in chain.req] == [Cfg(7), Cfg(8)]
        assert ConfStore(PLUGINS, b).get(token + 1) is None


def test_issue_waits_for_another_writer(backend: SqliteBackend, db: str) -> None:
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.2, blocker.execute, ("COMMIT",))
    timer.start()
    try:
        started = time.monotonic()
        token = backend.issue("k", ())
        assert time.monotonic() - started >= 0.15
        assert backend.lookup(token) == ("k", ())
    finally:
        timer.join()
        blocker.close()


def test_issue_gives_up_after_the_busy_timeout(
    backend: SqliteBackend, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharedstore, "BUSY_TIMEOUT", 0.05)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            backend.issue("k", ())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert backend.issue("k", ()) != 0


def test_opening_waits_while_another_process_holds_the_file(db: str) -> None:
    # Workers open the store together at start-up; one that found the file
    # held died with "database is locked" (and was respawned) before.
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("PRAGMA locking_mode=EXCLUSIVE")  # readers are kept out too
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("UPDATE meta SET next_token = next_token")
    timer = threading.Timer(0.2, blocker.close)
    timer.start()
    try:
        started = time.monotonic()
        opened = SqliteBackend(db, 60.0, 100)
        assert time.monotonic() - started >= 0.15
        assert opened.lookup(opened.issue("k", ())) == ("k", ())
    finally:
        timer.join()


def test_opening_a_missing_store_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"SqliteBackend\.create"):
        SqliteBackend(str(tmp_path / "nope.sqlite3"), TTL, 10)
    with pytest.raises(ValueError):
        SqliteBackend.create(str(tmp_path / "bad.sqlite3"), 0, 10)


def test_create_starts_afresh(db: str) -> None:
    with SqliteBackend(db, TTL, 100) as b:
        token = b.issue("k", ())
    SqliteBackend.create(db, TTL, 100)
    with SqliteBackend(db, TTL, 100) as b:
        assert b.lookup(token) is None and b.size() == 0
        assert b._db().execute("PRAGMA journal_mode").fetchone() == ("wal",)

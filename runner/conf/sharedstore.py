"""The conf store shared by all worker processes of one runner, in SQLite.

APISIX sends PrepareConf once per route for the whole node, then sends calls
carrying the token it got on any connection, which any worker may serve, so
every worker must resolve every token. :class:`SqliteBackend` is the
:class:`runner.conf.confstore.Backend` that makes this so.

Why SQLite:

* it is in the standard library (``sqlite3``): no new dependency, no server
  process to run next to the runner;
* it is safe across processes: in WAL mode readers never block and are never
  blocked, and writers take the file lock in ``BEGIN IMMEDIATE`` transactions,
  so two workers asked for the same route at the same moment agree on one
  token. A writer that finds the lock taken retries for up to a few seconds
  (see :func:`_retry_busy`);
* it outlives any worker: a worker that crashes or is replaced on reload loses
  nothing, the next one finds every live token in the file. It need not
  survive a machine crash (the runner's own lifetime bounds the tokens'), so
  ``synchronous=OFF``: a commit is a write to the page cache, no fsync;
* it is bounded by explicit eviction: after an insert the least recently used
  rows beyond ``max_entries`` are deleted, and ``issue`` drops rows idle for
  longer than ``ttl``;
* its speed does not touch the hot path: each worker's :class:`ConfStore`
  keeps decoded chains in an in-memory LRU and reads the file only on a miss
  (one indexed SELECT), writes on PrepareConf (a few statements in one
  transaction, tens of microseconds) and renews a token's access time at most
  about once a minute per token and worker.

Tokens: :meth:`SqliteBackend.create` (the supervisor, once, before forking)
stores a random first token in [1, 2**31), so a restarted runner does not hand
out numbers an earlier runner process issued and APISIX may still hold (they
would run another route's plugins). Tokens then count up in the file, shared
by all workers, wrap from 0xFFFFFFFF to 1 (0 means "absent" in the protocol)
and skip numbers still held by a row.

Access times are wall-clock (``time.time``) since several processes compare
them. A row is live while ``now - atime <= ttl``; expiry is checked on every
read, and expired rows are deleted lazily by ``issue``.

A connection must not cross a fork: the supervisor calls :meth:`create` and
keeps nothing open, and each worker opens its own :class:`SqliteBackend`
after the fork.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Self, TypeVar

import msgspec

from runner.api.plugin import ConfError
from runner.conf.confstore import RawConf

BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's transaction
BUSY_FIRST_SLEEP = 50e-6
BUSY_MAX_SLEEP = 1e-3
FIRST_TOKEN_LIMIT = 1 << 31
MAX_TOKEN = 0xFFFFFFFF

SCHEMA = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_token INTEGER NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE conf (
    token INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    key TEXT NOT NULL,
    conf BLOB NOT NULL,
    atime REAL NOT NULL
);
CREATE INDEX conf_by_atime ON conf (atime);
CREATE TRIGGER conf_count_insert AFTER INSERT ON conf
    BEGIN UPDATE meta SET rows = rows + 1; END;
CREATE TRIGGER conf_count_delete AFTER DELETE ON conf
    BEGIN UPDATE meta SET rows = rows - 1; END;
"""

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_decode_conf = msgspec.json.Decoder(RawConf).decode


def _digest(key: str, blob: bytes) -> bytes:
    """The identity of (key, conf): 128 bits of BLAKE2b, unambiguous framing."""
    raw_key = key.encode()
    h = hashlib.blake2b(len(raw_key).to_bytes(8, "little"), digest_size=16)
    h.update(raw_key)
    h.update(blob)
    return h.digest()


def _after(token: int) -> int:
    return token + 1 if token < MAX_TOKEN else 1


def _remove_db_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.unlink(path + suffix)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # extended codes too


def _retry_busy(op: Callable[[], T]) -> T:
    """Run ``op``, retrying while another process holds the write lock.

    SQLite's own busy handler (``sqlite3.connect(timeout=...)``) sleeps 1, 2,
    5, 10, 15, 20, 25... ms between tries, so a worker that loses a few races
    in a burst of PrepareConfs stalls its event loop for tens of ms while the
    lock is held ~30 us at a time (measured, 2 cores, workers issuing back to
    back: worst 85 ms with 4 workers, 440 ms with 16). Here the sleeps start at
    50 us and stay under 1 ms (worst 20 ms and 80 ms; with 1 ms between each
    worker's issues, worst 1 ms instead of 8 ms).
    """
    try:
        return op()
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = BUSY_FIRST_SLEEP
    while True:
        time.sleep(delay)
        delay = min(delay * 2, BUSY_MAX_SLEEP)
        try:
            return op()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: autocommit; transactions are explicit BEGINs.
    # timeout=0: no busy handler in SQLite, _retry_busy does the waiting.
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    # The first statement reads the file: it waits like any other while another
    # process holds it (workers start together; one may be recovering the WAL),
    # or a worker dies at start-up with "database is locked".
    _retry_busy(lambda: conn.execute("PRAGMA synchronous=OFF"))  # per connection
    return conn


class SqliteBackend:
    """Conf tokens in one SQLite file, shared by every worker of a runner."""

    @staticmethod
    def create(path: str, ttl: float, max_entries: int) -> None:
        """Make a fresh store at ``path`` (any old one there is removed).

        Called once by the supervisor before it forks; ``ttl`` and
        ``max_entries`` are applied by the workers' backends, and are taken
        here only so that both sides are configured alike.
        """
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be > 0 and max_entries >= 1")
        _remove_db_files(path)
        conn = _connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # stored in the file
            conn.executescript(SCHEMA)
            first = 1 + secrets.randbelow(FIRST_TOKEN_LIMIT - 1)
            conn.execute("INSERT INTO meta (id, next_token) VALUES (1, ?)", (first,))
        finally:
            conn.close()

    def __init__(
        self,
        path: str,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no conf store at {path} (SqliteBackend.create makes it)")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._pid = os.getpid()
        self._conn = _connect(path)
        # Rows this process removed: expired (TTL) and evicted (LRU); metrics.
        self.expired = 0
        self.evicted = 0

    # -- the Backend protocol

    def issue(self, key: str, conf: RawConf) -> int:
        """The live token of (key, conf), renewed, or a new one."""
        try:
            blob = _encode(conf)
            digest = _digest(key, blob)
        except UnicodeEncodeError:
            # APISIX's route keys and configs come from its JSON store: always
            # UTF-8. Bytes that are not can only be a forged frame.
            raise ConfError("the route key or a config holds bytes that are not UTF-8") from None
        now = self._clock()
        with self._write() as db:
            self.expired += db.execute(
                "DELETE FROM conf WHERE atime < ?", (now - self._ttl,)
            ).rowcount
            row = db.execute("SELECT token FROM conf WHERE digest = ?", (digest,)).fetchone()
            if row is not None:
                db.execute("UPDATE conf SET atime = ? WHERE token = ?", (now, row[0]))
                return int(row[0])
            token = self._allocate(db)
            db.execute(
                "INSERT INTO conf (token, digest, key, conf, atime) VALUES (?, ?, ?, ?, ?)",
                (token, digest, key, blob, now),
            )
            self._evict(db, token)
            return token

    def lookup(self, token: int) -> tuple[str, RawConf] | None:
        """(key, conf) of a live token, or None."""
        row = (
            self._db()
            .execute(
                "SELECT key, conf FROM conf WHERE token = ? AND atime >= ?",
                (token, self._clock() - self._ttl),
            )
            .fetchone()
        )
        if row is None:
            return None
        return row[0], _decode_conf(row[1])

    def touch(self, token: int) -> None:
        """Renew a live token's access time (an expired one stays expired)."""
        now = self._clock()
        self._fetch(
            "UPDATE conf SET atime = ? WHERE token = ? AND atime >= ?",
            (now, token, now - self._ttl),
        )

    # -- the rest

    def size(self) -> int:
        """The number of live tokens."""
        row = (
            self._db()
            .execute("SELECT count(*) FROM conf WHERE atime >= ?", (self._clock() - self._ttl,))
            .fetchone()
        )
        return int(row[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers

    def _db(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            raise RuntimeError("a SqliteBackend must be opened in the process that uses it")
        return self._conn

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> Any:
        """One statement outside a transaction: its first row, or None."""
        db = self._db()
        return _retry_busy(lambda: db.execute(sql, params).fetchone())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the file's write lock is taken up front, so
        another process's concurrent issue() waits instead of racing."""
        db = self._db()
        _retry_busy(lambda: db.execute("BEGIN IMMEDIATE"))
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _allocate(db: sqlite3.Connection) -> int:
        """The next token not held by a row; advances the shared counter."""
        token = int(db.execute("SELECT next_token FROM meta").fetchone()[0])
        while db.execute("SELECT 1 FROM conf WHERE token = ?", (token,)).fetchone():
            token = _after(token)
        db.execute("UPDATE meta SET next_token = ?", (_after(token),))
        return token

    def _evict(self, db: sqlite3.Connection, keep: int) -> None:
        """Delete the least recently used rows beyond ``max_entries``."""
        (rows,) = db.execute("SELECT rows FROM meta").fetchone()
        excess = int(rows) - self._max
        if excess > 0:
            self.evicted += db.execute(
                "DELETE FROM conf WHERE token IN "
                "(SELECT token FROM conf WHERE token != ? ORDER BY atime LIMIT ?)",
                (keep, excess),
            ).rowcount

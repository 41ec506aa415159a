"""A worker's part in the pool: balanced accept and connection hand-over.

APISIX keeps its connections to the runner open for minutes (a keepalive pool
per nginx worker), so whichever worker accepts a connection serves it for
that long. Left to the kernel, a burst of connections lands on whichever
worker wakes first. Here a connection belongs to the pool instead:

* **Balanced accept.** A worker watches the listening socket only while it
  holds no more connections than any other serving worker (the counts are in
  the shared :class:`~runner.server.pool.WorkerTable`), and accepts one
  connection per wake-up. A worker above the fewest stops watching, so it
  never spins on a readable socket it will not accept from; the worker whose
  accept lifts the minimum pokes the others to look again.
* **Hand-over.** A connection that must leave (the worker retires on reload or
  ``max_requests``, or holds more than its share after a respawn or a change
  of ``workers``) is passed, open, to the least-loaded serving worker through
  its mailbox (SCM_RIGHTS), at an idle point only (see
  :meth:`Connection.pause_for_handover`). APISIX never sees it close.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Any

from runner.server.conn import Connection, ServerState
from runner.server.pool import Mailbox, Peer, SlotState, WorkerTable

log = logging.getLogger("runner.worker")

# accept() errors that say "not now" rather than "this socket is broken"; the
# worker stops watching and looks again at the next rebalancing round.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Housekeeping rounds (0.25 s each) a waiting connection may go unaccepted
# before a worker that is not the least loaded takes it (see rescue).
RESCUE_ROUNDS = 2


class Balancer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: socket.socket,
        table: WorkerTable,
        slot: int,
        directory: str,
        state: ServerState,
        factory: Callable[[], Any],
    ) -> None:
        self._loop = loop
        self._listen = listen
        self._table = table
        self._slot = slot
        self._state = state
        self._factory = factory
        self._mailbox = Mailbox(directory, os.getpid())
        self._armed = False  # watching the listening socket
        self._open = False
        self._pending = 0  # taken (accepted or handed over), not yet connection_made
        self._starved = 0  # housekeeping rounds that found connections waiting unaccepted
        self.handed_over = 0
        state.on_count = self._count_changed

    # -- life cycle

    def start(self) -> None:
        """The worker serves: take connections from now on."""
        self._open = True
        self._loop.add_reader(self._mailbox.sock.fileno(), self._on_mail)
        self._publish()
        self._table.set_state(self._slot, SlotState.SERVING)
        self.recheck()

    def leave(self) -> None:
        """Accept nothing more; from now on :meth:`rebalance` hands every
        connection over."""
        self._table.set_state(self._slot, SlotState.LEAVING)
        self.recheck()

    def close(self) -> None:
        self._open = False
        self.recheck()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._mailbox.sock.fileno())
        # Descriptors still queued in the mailbox close with it: only a worker
        # killed between a hand-over and its next loop turn loses any.
        self._drain_mail()
        self._mailbox.close()
        self._table.set_state(self._slot, SlotState.LEAVING)

    @property
    def leaving(self) -> bool:
        return self._table.state(self._slot) != SlotState.SERVING

    @property
    def count(self) -> int:
        return len(self._state.connections) + self._pending

    # -- accept

    def _others(self) -> list[Peer]:
        return [p for p in self._table.serving() if p.slot != self._slot]

    def _eligible(self, others: list[Peer] | None = None) -> bool:
        """Open, serving, and holding no more connections than any other."""
        if not self._open or self.leaving:
            return False
        mine = self.count
        return all(p.connections >= mine for p in (self._others() if others is None else others))

    def recheck(self) -> None:
        """Watch the listening socket exactly while this worker may accept."""
        want = self._eligible()
        if want and not self._armed:
            self._loop.add_reader(self._listen.fileno(), self._on_listen)
        elif not want and self._armed:
            self._loop.remove_reader(self._listen.fileno())
        self._armed = want

    def rescue(self) -> None:
        """Housekeeping: if connections have waited in the listening socket for
        two rounds while this worker held back, the worker whose turn it is
        may be stuck (a plugin holding its loop until the watchdog acts), so
        take one anyway: balance must never make APISIX wait to connect."""
        if self._armed or not self._open or self.leaving:
            self._starved = 0
            return
        ready, _, _ = select.select([self._listen], [], [], 0)
        self._starved = self._starved + 1 if ready else 0
        if self._starved >= RESCUE_ROUNDS:
            self._starved = 0
            with contextlib.suppress(BlockingIOError, InterruptedError):
                self._take(self._listen.accept()[0])

    def _on_listen(self) -> None:
        others = self._others()
        if not self._eligible(others):
            self.recheck()  # another worker holds fewer now: stop watching
            return
        before = self.count
        try:
            sock, _ = self._listen.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            if exc.errno not in _TRANSIENT:
                raise
            log.warning("cannot accept a connection: %s; retrying shortly", exc)
            self._loop.remove_reader(self._listen.fileno())
            self._armed = False
            return
        self._take(sock)
        if others and min(p.connections for p in others) > before:
            for peer in others:  # the minimum rose: they may accept again
                self._mailbox.poke(peer.pid)
        self.recheck()

    def _take(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._pending += 1
        self._publish()
        self._loop.create_task(self._attach(sock))

    async def _attach(self, sock: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, sock)
        except OSError as exc:
            log.warning("could not serve a connection: %s", exc)
            sock.close()
        finally:
            self._pending -= 1
            self._publish()

    def _count_changed(self) -> None:
        self._publish()
        if self._open:
            self.recheck()

    def _publish(self) -> None:
        self._table.set_connections(self._slot, self.count)

    # -- hand-over

    def _on_mail(self) -> None:
        self._drain_mail(take=True)
        self.recheck()

    def _drain_mail(self, take: bool = False) -> None:
        while (message := self._mailbox.receive()) is not None:
            fds, _poke = message
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if take and sock.type == socket.SOCK_STREAM:
                    self._take(sock)
                else:
                    sock.close()

    def handover(self, conn: Connection, peer: Peer) -> bool:
        """Pass one connection to another worker, if it is at an idle point."""
        fd = conn.pause_for_handover()
        if fd is None:
            return False
        if not self._mailbox.send_connection(peer.pid, fd):
            conn.resume_after_handover()
            return False
        conn.close()  # our descriptor only: the connection lives on in the peer
        self.handed_over += 1
        return True

    def rebalance(self) -> int:
        """Hand connections over to the least-loaded serving workers: all of
        them when leaving, else what this worker holds above its fair share.
        Returns how many moved."""
        peers = self._others()
        if not peers:
            return 0
        counts = {p.slot: p.connections for p in peers}
        mine, leaving = self.count, self.leaving
        moved = 0
        for conn in list(self._state.connections):
            target = min(peers, key=lambda p: counts[p.slot])
            if not leaving and mine - moved <= counts[target.slot] + 1:
                break  # within one of the fewest: balanced
            if self.handover(conn, target):
                counts[target.slot] += 1
                moved += 1
        return moved

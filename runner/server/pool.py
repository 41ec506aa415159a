"""The workers' shared table: who serves, and how many connections each holds.

The supervisor maps it (anonymous shared memory) before the first fork, so
every worker, and every worker it forks later, sees the same bytes. The
supervisor claims a slot for each worker it forks (with its pid), marks a
worker it retires as leaving and frees the slot when the worker exits; each
worker writes only its own slot: its connection count, and whether it serves.
Readers take the numbers as advice: an 8-byte aligned store is atomic on the
CPUs we run on, and a count read a moment late costs at most one connection
of imbalance, which the next rebalancing round repairs.

The first ``FIELDS`` int64s are a header holding the number of slots ever
used, so that readers scan only those. Then each slot (``FIELDS`` int64s)::

    +-----+-------+-------------+
    | pid | state | connections |
    +-----+-------+-------------+
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import socket
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

SLOTS = 1024  # workers alive at once, old generations included
FIELDS = 3
_PID, _STATE, _CONNS = range(FIELDS)


class SlotState(IntEnum):
    FREE = 0
    BOOTING = 1  # forked, not yet serving
    SERVING = 2  # accepts new connections and takes handed-over ones
    LEAVING = 3  # serves what it holds, accepts nothing, hands its connections on


class Peer(NamedTuple):
    slot: int
    pid: int
    connections: int


class Seat(NamedTuple):
    """A worker's place in the pool: the shared table, its slot, and the
    supervisor's private directory where the workers' mailboxes live."""

    table: WorkerTable
    slot: int
    directory: str


class PoolFull(RuntimeError):
    """More workers alive at once than the table has slots."""


class WorkerTable:
    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, (SLOTS + 1) * FIELDS * 8)  # MAP_SHARED | MAP_ANONYMOUS
        # Slot n starts at q[(n + 1) * FIELDS]; q[0] is the number of slots used.
        self._q = memoryview(self._mem).cast("q")

    @staticmethod
    def _base(slot: int) -> int:
        return (slot + 1) * FIELDS

    # -- the supervisor's side

    def claim(self) -> int:
        """A free slot for a worker about to be forked."""
        q = self._q
        for slot in range(SLOTS):
            base = self._base(slot)
            if slot >= q[0] or q[base + _STATE] == SlotState.FREE:
                q[base + _PID] = 0
                q[base + _CONNS] = 0
                q[base + _STATE] = SlotState.BOOTING
                q[0] = max(q[0], slot + 1)
                return slot
        raise PoolFull(f"more than {SLOTS} worker processes alive at once")

    def release(self, slot: int) -> None:
        """The worker exited: its connections went with it."""
        base = self._base(slot)
        self._q[base + _STATE] = SlotState.FREE
        self._q[base + _CONNS] = 0
        self._q[base + _PID] = 0

    # -- either side

    def set_pid(self, slot: int, pid: int) -> None:
        self._q[self._base(slot) + _PID] = pid

    def set_state(self, slot: int, state: SlotState) -> None:
        self._q[self._base(slot) + _STATE] = state

    def state(self, slot: int) -> SlotState:
        return SlotState(self._q[self._base(slot) + _STATE])

    def set_connections(self, slot: int, count: int) -> None:
        self._q[self._base(slot) + _CONNS] = count

    def connections(self, slot: int) -> int:
        return self._q[self._base(slot) + _CONNS]

    def serving(self) -> list[Peer]:
        """Every serving worker, with its connection count."""
        return self._peers(lambda state: state == SlotState.SERVING)

    def alive(self) -> list[Peer]:
        """Every worker with a pid, whatever its state."""
        return self._peers(lambda state: state != SlotState.FREE)

    def _peers(self, wanted: Callable[[int], bool]) -> list[Peer]:
        q = self._q
        found = []
        for slot in range(q[0]):
            base = self._base(slot)
            if wanted(q[base + _STATE]) and q[base + _PID]:
                found.append(Peer(slot, q[base + _PID], q[base + _CONNS]))
        return found


# sun_path holds 108 bytes with the terminating NUL; pids go up to 2**22.
_MAX_SOCKET_PATH = 107


def check_mailbox_dir(directory: str) -> None:
    """Fail at start-up, naming the fix, if mailbox paths would not fit."""
    longest = len(os.fsencode(handover_path(directory, 2**22)))
    if longest > _MAX_SOCKET_PATH:
        raise OSError(
            f"the runner's temporary directory {directory} is too long for Unix socket "
            f"paths ({longest} > {_MAX_SOCKET_PATH} bytes); set TMPDIR to a shorter one"
        )


def handover_path(directory: str, pid: int) -> str:
    """Where a worker takes handed-over connections: in the supervisor's
    private (0700) directory, so no other user can send it a descriptor."""
    return os.path.join(directory, f"handover-{pid}.sock")


class Mailbox:
    """A worker's datagram socket for the pool's messages: a connection handed
    over (its descriptor, SCM_RIGHTS) or a poke to look at the table again.

    Sending never blocks; a full or vanished mailbox is reported as False and
    the sender keeps its connection."""

    CONNECTION = b"c"
    POKE = b"p"

    def __init__(self, directory: str, pid: int | None = None) -> None:
        self.directory = directory
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.path: str | None = None
        if pid is not None:  # a worker's own mailbox; the supervisor's only sends
            self.path = handover_path(directory, pid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # left by a killed worker whose pid came back
            self.sock.bind(self.path)

    def send_connection(self, pid: int, fd: int) -> bool:
        try:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            # sendmsg, not socket.send_fds: that one drops the address.
            self.sock.sendmsg([self.CONNECTION], rights, 0, handover_path(self.directory, pid))
        except OSError:
            return False
        return True

    def poke(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(self.POKE, handover_path(self.directory, pid))

    def receive(self) -> tuple[list[int], bool] | None:
        """(descriptors received, whether it was a poke) of one message, or
        None when nothing is waiting."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 8)
        except (BlockingIOError, InterruptedError):
            return None
        return list(fds), data == self.POKE

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

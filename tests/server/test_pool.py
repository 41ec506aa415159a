"""The pool's shared table and the workers' mailboxes, without a runner."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from runner.server.pool import (
    SLOTS,
    Mailbox,
    Peer,
    PoolFull,
    SlotState,
    WorkerTable,
    check_mailbox_dir,
)


def test_slots_are_claimed_published_and_freed() -> None:
    table = WorkerTable()
    a, b = table.claim(), table.claim()
    assert a != b
    assert table.serving() == []  # booting workers take no connections
    table.set_pid(a, 101)
    table.set_pid(b, 102)
    table.set_state(a, SlotState.SERVING)
    table.set_state(b, SlotState.SERVING)
    table.set_connections(b, 7)
    assert table.serving() == [Peer(a, 101, 0), Peer(b, 102, 7)]
    table.set_state(a, SlotState.LEAVING)
    assert table.serving() == [Peer(b, 102, 7)]
    assert {p.pid for p in table.alive()} == {101, 102}
    table.release(b)
    assert table.serving() == [] and table.claim() == b  # reused, counts reset
    assert table.connections(b) == 0


def test_a_full_table_says_so() -> None:
    table = WorkerTable()
    for _ in range(SLOTS):
        table.claim()
    with pytest.raises(PoolFull, match=str(SLOTS)):
        table.claim()


def test_children_share_the_table() -> None:
    table = WorkerTable()
    slot = table.claim()
    pid = os.fork()
    if pid == 0:  # the child writes, as a worker does
        table.set_pid(slot, os.getpid())
        table.set_connections(slot, 42)
        table.set_state(slot, SlotState.SERVING)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.serving() == [Peer(slot, pid, 42)]


def test_a_mailbox_carries_a_live_connection(tmp_path: Path) -> None:
    inbox = Mailbox(str(tmp_path), pid=os.getpid())
    outbox = Mailbox(str(tmp_path))
    ours, theirs = socket.socketpair()
    try:
        assert inbox.receive() is None
        assert outbox.send_connection(os.getpid(), ours.fileno())
        ours.close()  # the sender's copy goes; the connection lives on
        message = inbox.receive()
        assert message is not None
        (fd,), poke = message
        assert not poke
        with socket.socket(fileno=fd) as taken:
            theirs.sendall(b"ping")
            assert taken.recv(4) == b"ping"
        outbox.poke(os.getpid())
        assert inbox.receive() == ([], True)
    finally:
        theirs.close()
        inbox.close()
        outbox.close()
    assert not Path(inbox.path or "").exists()


def test_a_missing_mailbox_refuses_the_connection(tmp_path: Path) -> None:
    outbox = Mailbox(str(tmp_path))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not outbox.send_connection(123456, ours.fileno())
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"  # still ours, still open
    outbox.close()


def test_a_too_long_temporary_directory_is_named(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(OSError, match="set TMPDIR to a shorter one") as err:
        check_mailbox_dir(str(deep))
    assert str(deep) in str(err.value)
    check_mailbox_dir("/tmp/apisix-runner-abcdefgh")  # the usual one fits

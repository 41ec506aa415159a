"""The listening socket: never taken from a live runner, its directory made
when it can be, and a path that no longer leads to it noticed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.server.listener import Listener, SocketInUse


def short_dir(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path may be too long.
    d = Path("/tmp") / f"ar-l-{os.getpid()}-{tmp_path.name[-12:]}"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    d = short_dir(tmp_path)
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    d.rmdir()


def test_a_live_socket_is_not_taken_over(sock_dir: Path) -> None:
    path = str(sock_dir / "r.sock")
    first = Listener(path, 0o766, 16)
    first.bind()
    try:
        with pytest.raises(SocketInUse) as err:
            Listener(path, 0o766, 16).bind()
        message = str(err.value)
        assert path in message and f"pid {os.getpid()}" in message
        assert first.still_ours()  # the first runner still owns the path
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        first.close()
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    path = str(sock_dir / "r.sock")
    gone = socket.socket(socket.AF_UNIX)
    gone.bind(path)
    gone.close()  # the file stays, nothing accepts on it
    listener = Listener(path, 0o766, 16)
    listener.bind()
    try:
        assert listener.still_ours()
    finally:
        listener.close()


def test_the_socket_directory_is_made_or_named(sock_dir: Path) -> None:
    path = sock_dir / "run" / "apisix-runner" / "r.sock"
    listener = Listener(str(path), 0o766, 16)
    listener.bind()
    listener.close()
    assert path.parent.is_dir()

    blocker = sock_dir / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"socket directory {blocker}/sub does not exist"):
        Listener(str(blocker / "sub" / "r.sock"), 0o766, 16).bind()


def test_a_removed_or_replaced_path_is_noticed(sock_dir: Path) -> None:
    path = str(sock_dir / "r.sock")
    listener = Listener(path, 0o766, 16)
    listener.bind()
    try:
        os.unlink(path)
        assert not listener.still_ours()
        other = socket.socket(socket.AF_UNIX)
        other.bind(path)  # another process's socket at the same path
        assert not listener.still_ours()
        other.close()
    finally:
        listener.close()
    assert os.path.exists(path)  # not ours: left in place
    os.unlink(path)

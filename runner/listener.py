"""The listening Unix socket: bound once, removed on exit only if still ours.

APISIX may start a new runner on the same path while the old one is still
exiting (``apisix reload``, PROTOCOL.md §6.9), so the old runner must not
unlink the new one's socket: we remember the inode we bound and compare.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat

log = logging.getLogger("runner.listener")


class Listener:
    def __init__(self, path: str, mode: int, backlog: int) -> None:
        self.path = path
        self.mode = mode
        self.backlog = backlog
        self.sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    def bind(self) -> socket.socket:
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # chmod after bind: the socket's mode decides who may connect.
            os.chmod(self.path, self.mode)
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            raise
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket; refusing to replace it")
        log.info("replacing stale socket file %s", self.path)
        os.unlink(self.path)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
            else:
                log.info("socket %s belongs to a newer runner; left in place", self.path)

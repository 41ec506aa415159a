"""The listening Unix socket: bound once, removed on exit only if still ours.

APISIX may start a new runner on the same path while the old one is still
exiting (``apisix reload``, docs/protocol.md §10.2), so the old runner must not
unlink the new one's socket: we remember the inode we bound and compare.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import socket
import stat

log = logging.getLogger("runner.listener")


def _uid(owner: str | None) -> int:
    if owner is None:
        return -1
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise OSError(f"socket.owner: no user named {owner!r}") from None


def _gid(group: str | None) -> int:
    if group is None:
        return -1
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(f"socket.group: no group named {group!r}") from None


class SocketInUse(OSError):
    """Another process accepts connections on the socket path."""


def _accepts(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # a file left by a runner that is gone
    except OSError:
        return True  # e.g. EAGAIN (a full backlog) or EACCES: someone is there
    finally:
        probe.close()
    return True


def _holders(file_inode: int) -> list[int]:
    """Pids that hold the listening socket bound at a path, found through
    /proc (best effort: other users' processes are not readable)."""
    sockets = set()
    with contextlib.suppress(OSError), open("/proc/net/unix") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and int(fields[3], 16) & 0x10000:  # listening
                with contextlib.suppress(OSError):
                    if os.stat(fields[7]).st_ino == file_inode:
                        sockets.add(f"socket:[{fields[6]}]")
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in fds):
                pids.append(int(pid))
    return sorted(pids)


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat_line = f.read()
    except OSError:
        return 0
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return int(stat_line.rpartition(")")[2].split()[1])


def _apisix_reload(holders: list[int]) -> bool:
    """Whether the live socket belongs to the runner of the APISIX generation
    being replaced. On ``apisix reload`` the new privileged agent spawns this
    runner on the same path before the old agent stops its own; both agents
    are children of the one nginx master. So: started by APISIX (only its spawn
    sets APISIX_CONF_EXPIRE_TIME), the other runner's parent is another process
    than ours, and the two parents share their parent. Anything else, such as a
    second runner started by hand, must not take a live socket."""
    if not os.environ.get("APISIX_CONF_EXPIRE_TIME"):
        return False
    parent = os.getppid()
    master = _ppid(parent)
    for pid in holders:
        their_parent = _ppid(pid)
        if their_parent in holders:
            continue  # a worker of that runner; its supervisor decides
        if their_parent != parent and master > 1 and _ppid(their_parent) == master:
            return True
    return False


class Listener:
    def __init__(
        self,
        path: str,
        mode: int,
        backlog: int,
        owner: str | None = None,
        group: str | None = None,
    ) -> None:
        self.path = path
        self.mode = mode
        self.backlog = backlog
        self.uid = _uid(owner)
        self.gid = _gid(group)
        self.sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None

    def bind(self) -> socket.socket:
        self._make_parent()
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            sock.bind(self.path)
            bound = True
            # chmod/chown after bind: the socket's mode and owner decide who
            # may connect; both are checked before any worker serves.
            os.chmod(self.path, self.mode)
            if self.uid != -1 or self.gid != -1:
                os.chown(self.path, self.uid, self.gid)
            self._check()
            sock.listen(self.backlog)
        except OSError:
            sock.close()
            if bound:  # ours, and unusable: leave no socket file behind
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def _check(self) -> None:
        st = os.stat(self.path)
        mode = stat.S_IMODE(st.st_mode)
        if mode != self.mode:
            raise OSError(
                f"socket {self.path} has mode {mode:04o}, not the configured {self.mode:04o}"
            )
        if self.uid not in (-1, st.st_uid) or self.gid not in (-1, st.st_gid):
            raise OSError(
                f"socket {self.path} is owned by {st.st_uid}:{st.st_gid}, "
                f"not the configured {self.uid}:{self.gid}"
            )

    def _make_parent(self) -> None:
        parent = os.path.dirname(self.path) or "."
        if os.path.isdir(parent):
            return
        try:
            os.makedirs(parent, mode=0o755)
        except OSError as exc:
            raise OSError(
                f"socket directory {parent} does not exist and cannot be created "
                f"({exc.strerror}); create it, writable by the runner's user"
            ) from None
        log.info("created the socket directory %s", parent)

    def _remove_stale(self) -> None:
        """Remove a socket file nobody serves; refuse to take a live one over."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket; refusing to replace it")
        if _accepts(self.path):
            holders = _holders(st.st_ino)
            if not _apisix_reload(holders):
                named = ", ".join(f"pid {pid}" for pid in holders[:3]) or "another process"
                raise SocketInUse(
                    f"{self.path} is served by {named}: another runner is running on this "
                    "path; stop it first, or give this one another socket path"
                )
            log.info("taking %s over from the runner APISIX is replacing (pid %s)",
                     self.path, holders[0])  # fmt: skip
        else:
            log.info("replacing stale socket file %s (nothing accepts on it)", self.path)
        os.unlink(self.path)

    def still_ours(self) -> bool:
        """Whether the path still leads to the socket we bound (not removed,
        not replaced by another runner's)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.still_ours():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        elif os.path.exists(self.path):
            log.info("socket %s belongs to a newer runner; left in place", self.path)

"""A route's last Rewrite frame, answered again while its calls change the same.

Most rewrites a route makes are the same on every call: header-rewrite sets
the headers of its config, an auth plugin strips the same credentials. The
chain still runs for every call; what is spared is writing the same Rewrite
again (~2,000 instructions for three headers): when a call's header and arg
changes are the same as the last frame's, in the same order, its reply is
that frame with the call's own id.

"The same" is decided on exact types only (dicts, lists, strs; see
``same_changes_py``), never on an ``__eq__`` of a plugin's making, and the memo
keeps its own copy of the changes it was built from (``kept``). A route whose
rewrites differ call after call stops being remembered after ``GIVE_UP``
misses in a row, so it pays the comparison and the copy only that many times;
a frame over ``KEEP_MAX`` bytes is never kept.

The compiled build compares and copies in C (``_textvec.c``); the pure build
runs the Python twins below, which return the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .chelpers import c_function
from .fb import Changes
from .messages import build_req_call_rewrite, rewrite_id_at

TEXTVEC_MODULE: Final = "runner.proto._textvec"
GIVE_UP: Final = 16  # misses in a row after which a route's rewrites are not remembered
# The largest frame kept: a worker holds one per route it has cached (conf_cache
# entries), so a route that sets a large header is not remembered.
KEEP_MAX: Final = 4096


Kept = tuple[object, ...]  # name, values, name, values...: see kept()


def kept(changes: Changes) -> Kept:
    """The memo's own copy of a change map, flat and immutable: the request's
    lists could be changed after its reply, and a tuple is read in C by index."""
    out: list[object] = []
    for name, values in changes.items():
        out.append(name)
        out.append(None if values is None else tuple(values))
    return tuple(out)


def same_changes_py(changes: object, entries: Kept) -> bool:
    """Whether a change map writes the entries kept (``_textvec.same_changes``):
    an exact dict with the same str names in the same order, each with the same
    values; one object is the same as itself (a str's text cannot change)."""
    if type(changes) is not dict or 2 * len(changes) != len(entries):
        return False
    for i, (name, values) in enumerate(changes.items()):
        if not (_same_str(name, entries[2 * i]) and _same_values(values, entries[2 * i + 1])):
            return False
    return True


def _same_str(a: object, b: object) -> bool:
    return a is b or (type(a) is str and type(b) is str and a == b)


def _same_values(values: object, kept: object) -> bool:
    if values is None or kept is None:
        return values is kept
    if type(values) is not list or type(kept) is not tuple or len(values) != len(kept):
        return False
    for i, x in enumerate(values):
        y = kept[i]
        if x is None or y is None:
            if x is not y:
                return False
        elif not _same_str(x, y):
            return False
    return True


def reuse_py(
    frame: bytes,
    at: int,
    req_id: int,
    headers: Changes,
    kept_headers: Kept,
    args: Changes,
    kept_args: Kept,
) -> bytes | None:
    """``_textvec.reuse``: ``frame`` with ``req_id`` written at ``at`` where
    ``headers`` and ``args`` write the same entries as the kept copies it was
    built from; otherwise None."""
    if at < 0 or at > len(frame) - 4 or not 0 <= req_id <= 0xFFFFFFFF:
        raise ValueError("reuse(): the id's place or value is out of range")
    if not (same_changes_py(headers, kept_headers) and same_changes_py(args, kept_args)):
        return None
    return frame[:at] + req_id.to_bytes(4, "little") + frame[at + 4 :]


_REUSE: Final[Callable[[bytes, int, int, Changes, Kept, Changes, Kept], bytes | None]] = (
    c_function(TEXTVEC_MODULE, "reuse") or reuse_py
)


_NO_PAIRS: Final[list[tuple[str, str | None]]] = []  # no response headers (never changed)


class _Last:
    """One remembered frame and what it was built from (replaced whole, never
    changed: a reader holds one consistent set)."""

    __slots__ = ("args", "frame", "headers", "id_at")

    def __init__(self, frame: bytes, id_at: int, headers: Kept, args: Kept) -> None:
        self.frame: Final = frame
        self.id_at: Final = id_at
        self.headers: Final = headers
        self.args: Final = args


class ReplyMemo:
    """One route's last header-and-arg Rewrite (a Chain holds one)."""

    __slots__ = ("_last", "_misses")

    def __init__(self) -> None:
        self._last: _Last | None = None
        self._misses = 0

    def rewrite(self, req_id: int, headers: Changes, args: Changes) -> bytes:
        """``build_req_call_rewrite(req_id, None, headers, args, [], None)``:
        the last frame with this id, where these changes are its own."""
        last = self._last
        if last is not None:
            again = _REUSE(last.frame, last.id_at, req_id, headers, last.headers, args, last.args)
            if again is not None:
                self._misses = 0
                return again
        frame = build_req_call_rewrite(req_id, None, headers, args, _NO_PAIRS, None)
        misses = self._misses
        if misses < GIVE_UP:  # after that, nothing is kept, compared or copied
            misses += 1
            self._misses = misses
            if misses < GIVE_UP and len(frame) <= KEEP_MAX:
                self._last = _Last(frame, rewrite_id_at(headers, args), kept(headers), kept(args))
            else:
                self._last = None
        return frame

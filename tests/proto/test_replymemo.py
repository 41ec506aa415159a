"""A route's last Rewrite, answered again (runner.proto.replymemo): every
reply is byte for byte what a fresh build writes, however the changes go."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from runner.proto.chelpers import c_function
from runner.proto.fb import Changes
from runner.proto.messages import build_req_call_rewrite, rewrite_id_at
from runner.proto.replymemo import (
    GIVE_UP,
    KEEP_MAX,
    ReplyMemo,
    kept,
    reuse_py,
    same_changes_py,
)

_C_REUSE: Callable[..., Any] | None = c_function("runner.proto._textvec", "reuse")


class Str(str):
    """A str of a plugin's making: equal to every str."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def fresh(req_id: int, headers: Changes, args: Changes) -> bytes:
    return build_req_call_rewrite(req_id, None, headers, args, [], None)


def _maps(rng: random.Random) -> tuple[Changes, Changes]:
    """Two change maps, often the same, else different in one way or another."""
    names = ["x-a", "x-b", "x-c", "é-d"]
    values: list[str | None] = ["1", "2", "", "ü", None, Str("s")]  # Str: one object

    def one() -> Changes:
        changes: Changes = {}
        for name in rng.sample(names, rng.randrange(len(names) + 1)):
            if rng.random() < 0.2:
                changes[name] = None
            else:
                changes[name] = [rng.choice(values) for _ in range(rng.randrange(1, 3))]
        return changes

    a = one()
    kind = rng.randrange(6)
    if kind == 0:
        b = one()
    elif kind == 1:  # the same entries, each list a copy
        b = {k: None if v is None else list(v) for k, v in a.items()}
    elif kind == 2:  # the same entries in reverse order
        b = dict(reversed(list(a.items())))
    elif kind == 3 and a:  # one value made a subclass that claims equality
        key = next(iter(a))
        b = dict(a)
        b[key] = [Str("anything")]
    elif kind == 4:  # equal text, not a list
        b = {k: None if v is None else tuple(v) for k, v in a.items()}  # type: ignore[misc]
    else:
        b = dict(a)
    return a, b


@pytest.mark.skipif(_C_REUSE is None, reason="the pure build has no C memo (the twin runs)")
def test_the_c_reuse_answers_as_the_twin() -> None:
    assert _C_REUSE is not None
    rng = random.Random(11)
    for _ in range(3000):
        kept_headers, headers = _maps(rng)  # the kept ones are what a memo kept: valid
        kept_args, args = _maps(rng)
        frame = fresh(5, kept_headers, kept_args) if kept_headers or kept_args else b"\0" * 40
        req_id = rng.choice([0, 1, 77, 0xFFFFFFFF])
        at = rewrite_id_at(kept_headers, kept_args)
        argv = (frame, at, req_id, headers, kept(kept_headers), args, kept(kept_args))
        assert _C_REUSE(*argv) == reuse_py(*argv), argv
    frame = b"abcdefgh"
    for bad in ((b"abc", 0, 1), (frame, 5, 1), (frame, -1, 1), (frame, 0, 1 << 32)):
        for fn in (_C_REUSE, reuse_py):
            with pytest.raises((ValueError, OverflowError)):
                fn(*bad, {}, (), {}, ())


def test_same_changes_is_exact_about_order_types_and_values() -> None:
    a = kept({"x-a": ["1"], "x-b": None})
    assert a == ("x-a", ("1",), "x-b", None)
    assert same_changes_py({"x-a": ["1"], "x-b": None}, a)
    assert not same_changes_py({"x-b": None, "x-a": ["1"]}, a)  # order: another frame
    assert not same_changes_py({"x-a": ["1"], "x-b": []}, a)
    assert not same_changes_py({"x-a": [Str("2")], "x-b": None}, a)
    assert not same_changes_py({Str("x-a"): ["1"], "x-b": None}, a)
    assert not same_changes_py({"x-a": ["1", None], "x-b": None}, a)
    assert not same_changes_py({"x-a": ("1",), "x-b": None}, a)
    odd = Str("odd")  # one object is the same as itself, whatever its type
    assert same_changes_py({odd: [odd]}, kept({odd: [odd]}))


def writable(changes: Changes) -> bool:
    return all(v is None or type(v) is list for v in changes.values())


def test_every_reply_is_what_a_fresh_build_writes() -> None:
    rng = random.Random(3)
    memo = ReplyMemo()
    for req_id in range(4000):
        headers, other = _maps(rng)
        args = other if rng.random() < 0.5 and writable(other) else headers
        if not (headers or args):
            continue
        if rng.random() < 0.5:  # a run of the same changes, as a static route makes
            for k in range(3):
                again = {n: None if v is None else list(v) for n, v in headers.items()}
                assert memo.rewrite(req_id + k, again, args) == fresh(req_id + k, again, args)
        assert memo.rewrite(req_id, headers, args) == fresh(req_id, headers, args)


def test_the_memo_keeps_its_own_copy_of_the_changes() -> None:
    memo = ReplyMemo()
    values: list[str | None] = ["1"]
    headers: Changes = {"x-a": values}
    assert memo.rewrite(1, headers, {}) == fresh(1, headers, {})
    values[0] = "2"  # a plugin that kept the request changes it after its reply
    assert memo.rewrite(2, headers, {}) == fresh(2, headers, {})
    assert fresh(2, headers, {}) != fresh(2, {"x-a": ["1"]}, {})


def test_a_route_whose_rewrites_always_differ_stops_being_remembered() -> None:
    memo = ReplyMemo()
    for i in range(GIVE_UP + 5):
        headers: Changes = {"x-request-id": [str(i)]}
        assert memo.rewrite(i, headers, {}) == fresh(i, headers, {})
    assert memo._last is None  # nothing kept, nothing compared
    # A route whose changes repeat is remembered again after a miss.
    steady = ReplyMemo()
    for i in range(3 * GIVE_UP):
        headers = {"x-a": ["1"]} if i % 2 else {"x-a": [str(i)]}
        steady.rewrite(i, headers, {})
    assert steady._last is None  # alternating: never the same twice in a row
    steady = ReplyMemo()
    for i in range(3 * GIVE_UP):
        steady.rewrite(i, {"x-a": ["1"]}, {})
    assert steady._last is not None


def test_the_same_changes_in_another_order_are_another_frame() -> None:
    memo = ReplyMemo()
    first: Changes = {"x-a": ["1"], "x-b": None}
    turned: Changes = {"x-b": None, "x-a": ["1"]}
    assert memo.rewrite(1, first, {}) == fresh(1, first, {})
    assert memo.rewrite(2, turned, {}) == fresh(2, turned, {}) != fresh(2, first, {})
    assert memo.rewrite(3, {}, turned) == fresh(3, {}, turned)  # the same, as args


def test_a_large_frame_is_not_kept() -> None:
    memo = ReplyMemo()
    big: Changes = {"x-big": ["v" * KEEP_MAX]}
    assert memo.rewrite(1, big, {}) == fresh(1, big, {})
    assert memo._last is None  # one per cached route: a worker would hold them all
    small: Changes = {"x-a": ["1"]}
    memo.rewrite(2, small, {})
    assert memo._last is not None
    assert memo.rewrite(3, big, {}) == fresh(3, big, {})
    assert memo._last is None

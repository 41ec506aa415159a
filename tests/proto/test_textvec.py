"""The text vector writers and the Rewrite builder: the C ones of the
compiled build (runner/proto/_textvec.c) write exactly the bytes of their
Python twins, which the pure build runs, and decode to what was given."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from runner import hotpath
from runner.proto import fb, messages
from runner.proto.chelpers import c_function
from runner.proto.fb import Changes
from runner.testing.frames import Rewrite, parse_req_call_resp

_ALPHABET = ["a", "B", "é", "😀", "\udcff", "-", " ", "", ":"]  # \udcff: a byte that was not UTF-8


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 9)))


def _pairs(rng: random.Random) -> list[tuple[str, str | None]]:
    return [
        (_text(rng), None if rng.random() < 0.3 else _text(rng)) for _ in range(rng.randrange(4))
    ]


def _changes(rng: random.Random) -> Changes:
    changes: Changes = {}
    for _ in range(rng.randrange(4)):
        n = rng.randrange(1, 4)
        changes[_text(rng)] = (
            None
            if rng.random() < 0.3
            else [None if rng.random() < 0.2 else _text(rng) for _ in range(n)]
        )
    return changes


def _field(rng: random.Random) -> list[tuple[str, str | None]] | Changes:
    return _pairs(rng) if rng.random() < 0.5 else _changes(rng)


def test_the_c_writers_are_installed_where_the_build_promises() -> None:
    compiled = hotpath.build() == "compiled"
    assert (fb.text_vector is not fb.text_vector_py) == compiled
    assert (fb.changes_vector is not fb.changes_vector_py) == compiled
    assert (messages._REWRITE_FRAME_C is not None) == compiled
    assert (messages._STOP_FRAME_C is not None) == compiled


def _c(name: str) -> Callable[..., Any]:
    found = c_function(fb.TEXTVEC_MODULE, name)
    if found is None:
        pytest.skip("the pure build has no C writers (their Python twins are tested below)")
    return found  # type: ignore[no-any-return]


def test_c_text_vector_writes_what_the_python_twin_writes() -> None:
    c = _c("text_vector")
    rng = random.Random(1)
    for _ in range(3000):
        pairs = _pairs(rng)
        start = 4 * rng.randrange(100)
        vtables = 4 * rng.randrange(start // 4 + 1)
        assert c(pairs, start, vtables) == fb.text_vector_py(pairs, start, vtables), pairs


def test_c_changes_vector_writes_what_the_python_twin_writes() -> None:
    c = _c("changes_vector")
    rng = random.Random(2)
    for _ in range(3000):
        changes, join = _changes(rng), rng.random() < 0.5
        start = 4 * rng.randrange(100)
        vtables = 4 * rng.randrange(start // 4 + 1)
        expected = fb.changes_vector_py(changes, join, start, vtables)
        assert c(changes, join, start, vtables) == expected, (changes, join)


def test_c_rewrite_frame_writes_what_the_python_builder_writes() -> None:
    _c("rewrite_frame")
    rng = random.Random(3)
    for _ in range(3000):
        call = (
            rng.randrange(2**32),
            None if rng.random() < 0.5 else "/" + _text(rng),
            _field(rng),
            _field(rng),
            _pairs(rng),
            None if rng.random() < 0.5 else bytes(rng.randrange(40)),
        )
        assert messages.build_req_call_rewrite(*call) == messages.build_req_call_rewrite_py(*call)


def test_c_stop_frame_writes_what_the_python_builder_writes() -> None:
    _c("stop_frame")
    rng = random.Random(4)
    sizes = [0, 1, 3, 4, 5, 4095, 4096, 4097, 70000]
    for _ in range(3000):
        req_id = rng.choice([0, 1, 2**31 - 1, 2**31, 2**32 - 1, rng.randrange(2**32)])
        status = rng.choice([0, 200, 403, 0x7FFF, 0x8000, 0xFFFF, rng.randrange(0x10000)])
        body = bytes(rng.randrange(256) for _ in range(rng.choice(sizes[:6]) + rng.randrange(3)))
        expected = messages.build_req_call_stop_py(req_id, status, [], body)
        assert messages.build_req_call_stop(req_id, status, [], body) == expected
    for size in sizes:
        body = bytes(range(256)) * (size // 256) + bytes(size % 256)
        expected = messages.build_req_call_stop_py(7, 200, [], body)
        assert messages.build_req_call_stop(7, 200, [], body) == expected


def test_c_stop_frame_refuses_fields_out_of_range() -> None:
    c = _c("stop_frame")
    bare, id_at, status_at = messages._STOP_BARE, messages._ID_AT, messages._STOP_STATUS_AT
    assert (
        c(bare, id_at, status_at, 5, 200, b"x")[4:]
        == messages.build_req_call_stop_py(5, 200, [], b"x")[4:]
    )
    for req_id, status in [(2**32, 200), (1, 0x10000), (1, -1)]:
        with pytest.raises((ValueError, OverflowError)):
            c(bare, id_at, status_at, req_id, status, b"")
    for place in [(len(bare), status_at), (id_at, len(bare)), (0, status_at)]:
        with pytest.raises(ValueError):
            c(bare, *place, 1, 200, b"")
    with pytest.raises(TypeError):
        c(bytearray(bare), id_at, status_at, 1, 200, b"")
    with pytest.raises(TypeError):
        c(bare, id_at, status_at, 1, 200, "text")


def test_a_stop_over_the_frame_limit_is_refused_by_both_builders() -> None:
    body = bytes(messages._STOP_BARE_BODY_MAX + 1)
    for build in (messages.build_req_call_stop, messages.build_req_call_stop_py):
        with pytest.raises(messages.FrameTooLarge):
            build(1, 200, [], body)
    fits = bytes(messages._STOP_BARE_BODY_MAX)
    assert len(messages.build_req_call_stop(1, 200, [], fits)) == messages.MAX_PAYLOAD + 4


@pytest.mark.parametrize(
    "bad",
    [[(1, "a")], [("a", 2)], [("a",)], ["ab"], [("a", "b", "c")]],
    ids=["int name", "int value", "one item", "not a tuple", "three items"],
)
def test_c_writers_refuse_what_is_not_a_pair_of_str(bad: list[Any]) -> None:
    c = _c("text_vector")
    with pytest.raises(TypeError):
        c(bad, 0, 0)
    with pytest.raises(TypeError):
        messages.build_req_call_rewrite(1, None, bad, [], [], None)


def test_c_changes_refuse_values_that_are_not_lists_of_str() -> None:
    c = _c("changes_vector")
    for bad in ({"a": "b"}, {"a": [1]}, {1: ["a"]}):
        with pytest.raises(TypeError):
            c(bad, True, 0, 0)


@pytest.mark.parametrize("builder", ["build_req_call_rewrite", "build_req_call_rewrite_py"])
def test_change_maps_decode_as_their_entries(builder: str) -> None:
    build = getattr(messages, builder)
    headers: Changes = {"x-a": ["1", None, "2"], "x-gone": None, "x-empty": [None]}
    args: Changes = {"q": ["1", None], "drop": None}
    frame = build(9, "/p\udcff", headers, args, [("set-cookie", "c")], b"body")
    # Read back with the flatbuffers library's generated code, not ours.
    result = parse_req_call_resp(frame[4:], [])
    got = result.action
    assert isinstance(got, Rewrite) and result.id == 9
    assert got.headers == [("x-a", "1, 2"), ("x-gone", None), ("x-empty", "")]
    assert got.args == [("q", "1"), ("q", ""), ("drop", None)]
    assert got.resp_headers == [("set-cookie", "c")]
    assert got.path == "/p\udcff" and got.body == b"body"
    assert fb.change_entries(headers, True) == got.headers


def test_a_rewrite_over_the_frame_limit_is_refused_by_both_builders() -> None:
    body = bytes(16 * 1024 * 1024)
    for build in (messages.build_req_call_rewrite, messages.build_req_call_rewrite_py):
        with pytest.raises(messages.FrameTooLarge):
            build(1, None, [("a", "b")], [], [], body)

from __future__ import annotations

import pytest

from runner.api.multidict import Args, Headers


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    h = Headers([("x-req", "a"), ("X-Req", "b"), ("host", "h")])
    assert h["X-REQ"] == "a"
    assert h.get_all("x-req") == ["a", "b"]
    assert "HOST" in h and len(h) == 2
    assert not h.changed


def test_only_changes_are_reported() -> None:
    h = Headers([("a", "1"), ("b", "2"), ("c", "3")])
    h["A"] = "9"
    del h["b"]
    h.add("c", "4")
    assert h.rewrite_entries() == [("a", "9"), ("b", None), ("c", "3, 4")]


def test_writes_before_reading_do_not_decode() -> None:
    decoded = []

    def source() -> list[tuple[str, str | None]]:
        decoded.append(1)
        return [("keep", "1"), ("gone", "2")]

    h = Headers(source=source)
    h["new"] = "v"
    h.discard("gone")
    assert decoded == []
    assert h.rewrite_entries() == [("new", "v"), ("gone", None)]
    assert dict(h.items()) == {"keep": "1", "new": "v"}  # overrides applied on decode
    assert decoded == [1]


def test_del_of_missing_name_raises_but_discard_does_not() -> None:
    h = Headers([])
    with pytest.raises(KeyError):
        del h["x"]
    h.discard("x")
    assert h.rewrite_entries() == [("x", None)]


def test_args_keep_case_and_valueless_args() -> None:
    a = Args([("xx", "y"), ("xx", "z"), ("y", ""), ("z", None), ("Z", "big")])
    assert a.get_all("xx") == ["y", "z"] and a["z"] is None and a["Z"] == "big"
    a["xx"] = "w"
    a.add("xx", "v")
    a.discard("y")
    assert a.rewrite_entries() == [("xx", "w"), ("xx", "v"), ("y", None)]


def test_names_made_up_per_request_do_not_grow_the_lowered_name_cache() -> None:
    from runner.api import multidict

    h = Headers()
    h["X-Kept"] = "1"
    assert multidict._LOWER.get("X-Kept") == "x-kept"
    for i in range(multidict._LOWER_MAX + 100):
        h[f"X-Made-Up-{i}"] = "v"
    assert len(multidict._LOWER) <= multidict._LOWER_MAX
    long_name = "X-" + "L" * 100
    h[long_name] = "v"
    assert long_name not in multidict._LOWER
    assert h[long_name.lower()] == "v" and h["x-made-up-4100"] == "v"

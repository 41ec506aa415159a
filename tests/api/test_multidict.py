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


class Source:
    """A request's headers and args, decoded when first asked for."""

    def __init__(
        self, headers: list[tuple[str, str | None]], args: tuple[tuple[str, str | None], ...] = ()
    ) -> None:
        self._headers, self._args = headers, list(args)
        self.decoded: list[str] = []

    @property
    def headers(self) -> list[tuple[str, str | None]]:
        self.decoded.append("headers")
        return self._headers

    @property
    def args(self) -> list[tuple[str, str | None]]:
        self.decoded.append("args")
        return self._args


def test_writes_before_reading_do_not_decode() -> None:
    source = Source([("keep", "1"), ("gone", "2")])
    decoded = source.decoded
    h = Headers(source=source)
    h["new"] = "v"
    h.discard("gone")
    assert decoded == []
    assert h.rewrite_entries() == [("new", "v"), ("gone", None)]
    assert dict(h.items()) == {"keep": "1", "new": "v"}  # overrides applied on decode
    assert decoded == ["headers"]


def test_update_sets_each_name_as_item_assignment_does() -> None:
    class KeysOnly:
        """Not a Mapping, but has keys() and []: update reads it like one."""

        def keys(self) -> list[str]:
            return ["K"]

        def __getitem__(self, name: str) -> str:
            return name.lower()

    source = Source([("a", "1"), ("b", "2"), ("b", "3")])
    h = Headers(source=source)
    h.update({"B": "9", "X-New": "n"})
    assert source.decoded == []  # writes only, as m[name] = v
    h.update([("c", "4"), ("C", "5")], d="6")
    h.update(KeysOnly())
    h.update()
    expected = [("b", "9"), ("x-new", "n"), ("c", "5"), ("d", "6"), ("k", "k")]
    assert h.rewrite_entries() == expected
    # Names as first given by a write (before decoding), as with h[name] = v.
    shown = [("a", "1"), ("B", "9"), ("X-New", "n"), ("c", "5"), ("d", "6"), ("K", "k")]
    assert list(h.multi_items()) == shown
    assert h.writes == 6
    # Not pairs: the compiled build raises TypeError, the pure one ValueError.
    with pytest.raises((TypeError, ValueError)):
        h.update([("just-a-name",)])  # type: ignore[list-item]


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


def test_a_name_shows_as_first_given_by_a_write_or_the_originals() -> None:
    originals = [("x-low", "1"), ("X-Mixed", "2")]
    h = Headers(source=Source(originals))
    h["X-New"] = "a"  # a new key: its name is the write's
    h["x-new"] = "b"  # the same key again: the first name stays
    h["X-LOW"] = "c"  # written before decoding; the originals name it "x-low"...
    h["x-mixed"] = "d"  # ...and this write, first, names "x-mixed" as its key
    assert sorted(h) == ["X-LOW", "X-New", "x-mixed"]
    assert dict(h.multi_items()) == {"X-LOW": "c", "x-mixed": "d", "X-New": "b"}
    # After decoding: a key the originals named keeps that name.
    after = Headers(originals)
    after["X-LOW"] = "e"
    after["x-mixed"] = "f"
    after["Brand-New"] = "g"
    assert list(after) == ["x-low", "X-Mixed", "Brand-New"]
    assert after.rewrite_entries() == [("x-low", "e"), ("x-mixed", "f"), ("brand-new", "g")]
    # Before decoding, a removal names a key too, and a lower-case first write keeps it so.
    early = Headers(source=Source([("x-old", "1")]))
    early["x-a"] = "1"
    early["X-A"] = "2"
    early.discard("X-B")
    early["x-b"] = "3"
    early["X-Old"] = "4"
    assert list(early) == ["X-Old", "x-a", "X-B"]  # written before decoding: named first
    assert early.rewrite_entries() == [("x-a", "2"), ("x-b", "3"), ("x-old", "4")]


def test_changes_keep_the_order_of_first_change_across_decoding() -> None:
    h = Headers(source=Source([("a", "1"), ("b", "2")]))
    h["c"] = "3"
    h.discard("a")
    assert h["b"] == "2"  # decodes: the changes so far are applied
    h["a"] = "4"  # a removed key set again keeps its first place
    h.add("c", "5")
    del h["b"]
    assert h.rewrite_entries() == [("c", "3, 5"), ("a", "4"), ("b", None)]
    assert list(h.multi_items()) == [("c", "3"), ("c", "5"), ("a", "4")]
    assert h.writes == 5 and h.changed
    source = Source([("h", "x")], (("q", "1"),))
    a = Args(source=source)
    a.add("q", "2")  # add decodes first, then appends to the originals
    assert a.rewrite_entries() == [("q", "1"), ("q", "2")]
    assert a.get_all("q") == ["1", "2"] and source.decoded == ["args"]

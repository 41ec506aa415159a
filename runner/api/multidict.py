"""Multi-valued mappings for headers and args that remember what changed.

Only changed names go back to APISIX (a Rewrite re-sets each header it names,
so echoing unchanged ones would be wasted work and can alter multi-valued
headers). Reading never marks anything changed.

The original entries are decoded lazily: a plugin that only *sets* or
*discards* names never pays for decoding the ~10 headers of the request.
Writes made before the first read are kept as overrides and applied when (if
ever) the originals are decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Final, Protocol, cast

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

from runner.proto.fb import Changes, change_entries

Pairs = Iterable[tuple[str, str | None]]
Values = list[str | None]


class PairSource(Protocol):
    """Where a request's headers and args are decoded from (a ReqCallView)."""

    @property
    def headers(self) -> Pairs: ...
    @property
    def args(self) -> Pairs: ...


# Names lower-cased, by the name as a plugin gives it: plugins set the same
# few headers on every call, and a cached key is neither allocated nor hashed
# again (a str keeps its hash). Bounded in count and length, so names made up
# per request are lowered as before but not kept.
_LOWER: Final[dict[str, str]] = {}
_LOWER_MAX: Final = 4096
_LOWER_LEN: Final = 64


def _lower(name: str) -> str:
    key = _LOWER.get(name)
    if key is None:
        key = name.lower()
        if key == name:
            key = name  # the same object: callers tell "already lower-case" by identity
        if len(_LOWER) < _LOWER_MAX and len(name) <= _LOWER_LEN:
            _LOWER[name] = key
    return key


class MultiDict(MutableMapping[str, str | None]):
    """An ordered multi-valued mapping. ``m[name]`` is the first value,
    ``m.get_all(name)`` every value, ``m[name] = v`` replaces them all,
    ``m.add(name, v)`` appends, ``del m[name]`` removes them all (KeyError if
    absent) and ``m.discard(name)`` removes them whether present or not."""

    # Few objects per instance: a plugin that sets two headers makes one dict
    # and two lists, where a dict per role (names, changes, overrides) cost
    # their allocation, a hash insert each and their freeing on every call.
    __slots__ = ("_changed", "_given_early", "_names", "_source", "_values", "writes")
    _fold_case = False

    def __init__(self, pairs: Pairs = (), source: PairSource | None = None) -> None:
        """``pairs``: the entries; or ``source``: a request whose entries
        (its ``headers`` for Headers, its ``args`` for Args) are decoded when
        first read. A source object, not a closure: that would be two more
        objects made and freed per request."""
        # The changes so far, in the order of each key's first change: the
        # key's values now, or None once removed. Before the originals are
        # decoded, these are all there is; they are applied when they are.
        self._changed: Changes = {}
        # A key's name as first given, only where that differs from the key
        # (a header a plugin names "X-Id"): most names are their own key.
        self._names: dict[str, str] | None = None
        # Before decoding, those names are only listed (first writes of a key
        # whose name differs from it), and made into _names when decoded: a
        # write-only plugin never reads them, and a dict per request cost it
        # ~500 instructions a write.
        self._given_early: list[str] | None = None
        self._source = source
        self._values: dict[str, Values] | None = None  # the originals, changes applied
        self.writes = 0  # changes so far: metrics tell which plugin rewrote by it
        if source is None:
            self._values = {}
            self._fill(pairs)

    def _pairs_of(self, source: PairSource) -> Pairs:
        """The entries of ``source`` this mapping is for."""
        raise NotImplementedError

    def _key(self, name: str) -> str:
        return _lower(name) if self._fold_case else name

    def _name(self, key: str) -> str:
        names = self._names
        return key if names is None else names.get(key, key)

    def _given(self, key: str, name: str) -> None:
        """A write names ``key`` ``name`` (which differs from it): the name to
        show, unless the key was named before (by a write or the originals)."""
        if self._values is None:
            # Not decoded: listed if it is the key's first write, and named when decoded.
            if key not in self._changed:
                early = self._given_early
                if early is None:
                    self._given_early = [name]
                else:
                    early.append(name)
            return
        names = self._names
        if names is None:
            names = self._names = {}
        elif key in names:
            return
        values = self._values
        if key not in self._changed and (values is None or key not in values):
            names[key] = name

    def _fill(self, pairs: Pairs) -> None:
        values_of = self._values
        assert values_of is not None
        fold = self._fold_case
        changed = self._changed
        for name, value in pairs:
            key = name.lower() if fold else name
            values = values_of.get(key)
            if values is None:
                values_of[key] = [value]
                # Keys a write named first keep that write's name.
                if key != name and key not in changed:
                    names = self._names
                    if names is None:
                        names = self._names = {}
                    names.setdefault(key, name)
            else:
                values.append(value)

    def _all(self) -> dict[str, Values]:
        values_of = self._values
        if values_of is None:
            values_of = self._values = {}
            early = self._given_early
            if early is not None:  # writes before decoding named their keys first
                names = self._names = {}
                for name in early:
                    names[self._key(name)] = name
            source = self._source
            assert source is not None
            self._fill(self._pairs_of(source))
            for key, values in self._changed.items():
                if values is None:
                    values_of.pop(key, None)
                else:
                    values_of[key] = values
        return values_of

    def _write(self, name: str, values: Values | None) -> None:
        key = self._key(name)
        if key is not name and key != name:
            self._given(key, name)
        self._changed[key] = values
        self.writes += 1
        values_of = self._values
        if values_of is None:
            return
        if values is None:
            values_of.pop(key, None)
        else:
            values_of[key] = values

    def __getitem__(self, name: str) -> str | None:
        return self._all()[self._key(name)][0]

    def __setitem__(self, name: str, value: str | None) -> None:
        # _write, inlined: setting a header is what most plugins do on every
        # call, and two Python calls cost more than the rest of it.
        key = _lower(name) if self._fold_case else name
        if key is not name and key != name:
            self._given(key, name)
        values = [value]
        self._changed[key] = values
        self.writes += 1
        values_of = self._values
        if values_of is not None:
            values_of[key] = values

    def update(
        self,
        other: SupportsKeysAndGetItem[str, str | None] | Iterable[tuple[str, str | None]] = (),
        /,
        **more: str | None,
    ) -> None:
        """``m[name] = value`` for each entry of a mapping (or of (name, value)
        pairs), then for each keyword. MutableMapping's own is interpreted
        code: compiled, a plugin that sets headers from its config in one
        call pays for no loop of its own."""
        if isinstance(other, dict):
            for name, value in other.items():
                self.__setitem__(name, value)
        elif hasattr(other, "keys"):
            mapping = cast("SupportsKeysAndGetItem[str, str | None]", other)
            for name in mapping.keys():  # noqa: SIM118 (keys() is what the protocol has)
                self.__setitem__(name, mapping[name])
        else:
            for name, value in other:
                self.__setitem__(name, value)
        for name, value in more.items():
            self.__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._write(name, None)

    def discard(self, name: str) -> None:
        """Remove a name, present or not (and tell APISIX to remove it)."""
        self._write(name, None)

    def __iter__(self) -> Iterator[str]:
        return (self._name(key) for key in self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._all()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.multi_items())!r})"

    def get_all(self, name: str) -> Values:
        return list(self._all().get(self._key(name), ()))

    def add(self, name: str, value: str | None) -> None:
        values = self._all().get(self._key(name))
        self._write(name, [value] if values is None else [*values, value])

    def multi_items(self) -> Iterator[tuple[str, str | None]]:
        """Every (name, value) pair, a multi-valued name once per value."""
        for key, values in self._all().items():
            name = self._name(key)
            for value in values:
                yield name, value

    @property
    def changed(self) -> bool:
        return bool(self._changed)

    def changed_keys(self) -> list[str]:
        return list(self._changed)

    def changes(self) -> Changes:
        """The changes themselves (read-only): each changed key's values now,
        or None once removed, in the order of first change. The Rewrite
        builder writes them as they are (``runner.proto.fb.changes_vector``)."""
        return self._changed


@mypyc_attr(free_list_len=1)
class Headers(MultiDict):
    """HTTP headers: names are case-insensitive (APISIX sends them lower-cased)."""

    __slots__ = ()
    _fold_case = True

    def _pairs_of(self, source: PairSource) -> Pairs:
        return source.headers

    def rewrite_entries(self) -> list[tuple[str, str | None]]:
        """Changes as Rewrite entries. A Rewrite header entry *replaces* the
        header, so several values are joined with ", " (RFC 9110 §5.3); a
        name without a value deletes the header."""
        return change_entries(self._changed, True)


@mypyc_attr(free_list_len=1)
class Args(MultiDict):
    """Query args: case-sensitive; a value of None is an arg given without ``=``."""

    __slots__ = ()

    def _pairs_of(self, source: PairSource) -> Pairs:
        return source.args

    def rewrite_entries(self) -> list[tuple[str, str | None]]:
        """Changes as Rewrite entries: APISIX replaces an arg with its first
        entry and appends later ones; an entry without a value deletes it."""
        return change_entries(self._changed, False)

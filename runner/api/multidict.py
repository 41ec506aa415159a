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

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Final

Pairs = Iterable[tuple[str, str | None]]
Values = list[str | None]

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
        if len(_LOWER) < _LOWER_MAX and len(name) <= _LOWER_LEN:
            _LOWER[name] = key
    return key


class MultiDict(MutableMapping[str, str | None]):
    """An ordered multi-valued mapping. ``m[name]`` is the first value,
    ``m.get_all(name)`` every value, ``m[name] = v`` replaces them all,
    ``m.add(name, v)`` appends, ``del m[name]`` removes them all (KeyError if
    absent) and ``m.discard(name)`` removes them whether present or not."""

    __slots__ = ("_changed", "_names", "_overrides", "_source", "_values", "writes")
    _fold_case = False

    def __init__(self, pairs: Pairs = (), source: Callable[[], Pairs] | None = None) -> None:
        self._names: dict[str, str] = {}  # key -> name as first given
        self._changed: dict[str, None] = {}  # ordered set of changed keys
        self._overrides: dict[str, Values | None] = {}  # writes before decoding
        self._source = source
        self._values: dict[str, Values] | None = None
        self.writes = 0  # changes so far: metrics tell which plugin rewrote by it
        if source is None:
            self._values = {}
            self._fill(pairs)

    def _key(self, name: str) -> str:
        return _lower(name) if self._fold_case else name

    def _fill(self, pairs: Pairs) -> None:
        values_of = self._values
        assert values_of is not None
        names = self._names
        fold = self._fold_case
        for name, value in pairs:
            key = name.lower() if fold else name
            values = values_of.get(key)
            if values is None:
                values_of[key] = [value]
                names.setdefault(key, name)
            else:
                values.append(value)

    def _all(self) -> dict[str, Values]:
        values_of = self._values
        if values_of is None:
            values_of = self._values = {}
            assert self._source is not None
            self._fill(self._source())
            for key, values in self._overrides.items():
                if values is None:
                    values_of.pop(key, None)
                else:
                    values_of[key] = values
            self._overrides.clear()
        return values_of

    def _write(self, name: str, values: Values | None) -> None:
        key = self._key(name)
        self._names.setdefault(key, name)
        self._changed[key] = None
        self.writes += 1
        if self._values is None:
            self._overrides[key] = values
        elif values is None:
            self._values.pop(key, None)
        else:
            self._values[key] = values

    def __getitem__(self, name: str) -> str | None:
        return self._all()[self._key(name)][0]

    def __setitem__(self, name: str, value: str | None) -> None:
        # _write, inlined: setting a header is what most plugins do on every
        # call, and two Python calls cost more than the rest of it.
        key = _lower(name) if self._fold_case else name
        names = self._names
        if key not in names:
            names[key] = name
        self._changed[key] = None
        self.writes += 1
        if self._values is None:
            self._overrides[key] = [value]
        else:
            self._values[key] = [value]

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._write(name, None)

    def discard(self, name: str) -> None:
        """Remove a name, present or not (and tell APISIX to remove it)."""
        self._write(name, None)

    def __iter__(self) -> Iterator[str]:
        names = self._names
        return (names[key] for key in self._all())

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
        names = self._names
        for key, values in self._all().items():
            name = names[key]
            for value in values:
                yield name, value

    @property
    def changed(self) -> bool:
        return bool(self._changed)

    def changed_keys(self) -> list[str]:
        return list(self._changed)

    def _current(self, key: str) -> Values | None:
        if self._values is None:
            return self._overrides.get(key)
        return self._values.get(key)


class Headers(MultiDict):
    """HTTP headers: names are case-insensitive (APISIX sends them lower-cased)."""

    __slots__ = ()
    _fold_case = True

    def rewrite_entries(self) -> list[tuple[str, str | None]]:
        """Changes as Rewrite entries. A Rewrite header entry *replaces* the
        header, so several values are joined with ", " (RFC 9110 §5.3); a
        name without a value deletes the header."""
        out: list[tuple[str, str | None]] = []
        append = out.append
        current = self._overrides if self._values is None else self._values  # _current()
        for key in self._changed:
            values = current.get(key)
            if values is None:
                append((key, None))
            elif len(values) == 1:  # the usual case, without a join
                value = values[0]
                append((key, "" if value is None else value))
            else:
                append((key, ", ".join(v for v in values if v is not None)))
        return out


class Args(MultiDict):
    """Query args: case-sensitive; a value of None is an arg given without ``=``."""

    __slots__ = ()

    def rewrite_entries(self) -> list[tuple[str, str | None]]:
        """Changes as Rewrite entries: APISIX replaces an arg with its first
        entry and appends later ones; an entry without a value deletes it."""
        out: list[tuple[str, str | None]] = []
        current = self._overrides if self._values is None else self._values  # _current()
        for key in self._changed:
            values = current.get(key)
            if values is None:
                out.append((key, None))
            else:
                # An arg without a value cannot be expressed in a Rewrite (no value
                # means delete); the nearest is an empty value (`?z=`).
                out += [(key, "" if v is None else v) for v in values]
        return out

"""What the compatibility layers share: the step from their plugin objects
onto this runner's :class:`~runner.api.http.Request` and
:class:`~runner.api.http.Response`.

A plain ``Plugin`` never passes through here: the layers wrap only classes
written for another API, so they cost native plugins nothing.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from runner.api.multidict import MultiDict
from runner.api.plugin import Plugin

_P = TypeVar("_P", bound=Plugin)


def text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def as_bytes(value: str | bytes) -> bytes:
    """A body the plugin set: str as UTF-8, undecodable bytes kept (surrogateescape)."""
    return value if isinstance(value, bytes) else text(value).encode("utf-8", "surrogateescape")


def body_text(raw: bytes) -> str:
    """A body as the old APIs gave it: str, with bytes that are not UTF-8 kept as
    surrogate escapes, so handing it back through :func:`as_bytes` is lossless."""
    return raw.decode("utf-8", "surrogateescape")


def first_values(m: MultiDict) -> dict[str, str]:
    """One value per name, as the other APIs see headers and args: the first. A
    value-less arg reads as ""."""
    out: dict[str, str] = {}
    for name, value in m.multi_items():
        if name not in out:
            out[name] = "" if value is None else value
    return out


def apply_mapping(
    target: MultiDict,
    wanted: Mapping[Any, Any],
    before: Mapping[Any, Any],
    remove_missing: bool = True,
) -> None:
    """Make ``target`` hold ``wanted`` where it differs from ``before`` (what the
    plugin was shown): changed and new names are set and, with
    ``remove_missing``, names left out are deleted; untouched ones are never
    sent, so multi-valued headers survive."""
    for key, value in wanted.items():
        if value is not None and before.get(key, _MISSING) != value:
            target[text(key)] = text(value)
    if remove_missing:
        for key in before:
            if key not in wanted:
                target.discard(text(key))


_MISSING = object()


def _names_in(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, str):
            yield const  # getattr(request, "get_var") counts too
        elif isinstance(const, types.CodeType):
            yield from _names_in(const)


def source_mentions(cls: type[Any], names: frozenset[str]) -> bool:
    """Whether the source file of ``cls`` uses any of ``names`` (attributes,
    globals or string constants); True when it cannot be read, the safe
    answer. Not cached: a reload (SIGHUP) may have changed the file."""
    module = sys.modules.get(cls.__module__)
    filename = getattr(module, "__file__", None)
    if not filename:
        return True
    try:
        code = compile(Path(filename).read_bytes(), filename, "exec")
    except (OSError, SyntaxError, ValueError):
        return True
    return not names.isdisjoint(_names_in(code))


def classes_defined_in(module: types.ModuleType) -> Iterator[type[Any]]:
    """The classes a plugin module defines itself (not those it imports)."""
    for obj in list(vars(module).values()):
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            yield obj


def derives_from(cls: type[Any], base_name: str, base_module: str) -> bool:
    """Whether ``cls`` subclasses the class named ``base_name`` of ``base_module``,
    told by name rather than identity, so a real old runner's class counts too."""
    return any(b.__name__ == base_name and b.__module__ == base_module for b in cls.__mro__[1:])


def plugin_class(
    base: type[_P], prefix: str, wrapped: type[Any], name: str, **attrs: Any
) -> type[_P]:
    """A :class:`Plugin` subclass of ``base`` named ``name`` that runs ``wrapped``
    (an attribute of ``attrs``), called ``<prefix><its class>`` and shown as
    coming from ``wrapped``'s module."""
    attrs.update(name=name, __module__=wrapped.__module__)
    return cast(type[_P], type(f"{prefix}{wrapped.__name__}", (base,), attrs))

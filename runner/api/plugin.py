"""The Plugin base class and config decoding.

A plugin is a class with a ``name``, an optional ``Config`` type and
``filter`` (request phase) and/or ``response_filter`` (post-resp phase);
either may be ``async def``. One instance per worker process serves every
route; per-route settings arrive as the decoded ``conf`` argument.

Discovery (finding and importing plugin files) is in :mod:`runner.api.discovery`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import msgspec.inspect as mi

if TYPE_CHECKING:
    from runner.api.http import Request, Response, UpstreamResponse

log = logging.getLogger("runner.plugins")


class PluginError(Exception):
    """A plugin that cannot be loaded; start-up stops with this message."""


class ConfError(ValueError):
    """A plugin config that its plugin rejects (PrepareConf fails)."""


class Plugin:
    """Base class of runner plugins.

    ``Config``: a ``msgspec.Struct`` (or any type msgspec decodes from JSON,
    e.g. ``dict[str, str]``); the route's config string is decoded into it once,
    at PrepareConf. Without a ``Config`` the plugin gets the raw string. A key
    that no Struct field has (``{"kes": ...}``) rejects the config, in nested
    Structs too, as with ``forbid_unknown_fields=True``; set
    ``allow_unknown_fields = True`` on the plugin to ignore such keys instead.

    ``filter(conf, request, response)``: runs in the request phase. Change the
    request to rewrite it; give ``response`` a status or body to stop it (the
    rest of the chain is skipped); the return value is not used.

    ``response_filter(conf, response)``: runs in the post-resp phase.

    ``startup()`` / ``shutdown()`` (sync or async): once per worker, after the
    fork, to open and close connection pools.

    ``release_conf(conf)`` (optional): called with a route's decoded config
    when the worker drops it (evicted from its cache, expired, or replaced by
    an equal one), for a config that holds resources of its own.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[Any] = None
    # Ignore config keys no Struct field has (msgspec's default) instead of
    # rejecting the config.
    allow_unknown_fields: ClassVar[bool] = False

    def parse_conf(self, raw: str) -> Any:
        """Decode one route's config. Override for custom parsing; raise
        ``ConfError`` (or ValueError) with a message naming the bad field."""
        config = self.Config
        if config is None or config is str:
            return raw
        raw = raw.strip() or "{}"
        try:
            if not self.allow_unknown_fields and _has_open_structs(config):
                unknown = list(_unknown_fields(msgspec.json.decode(raw), mi.type_info(config)))
                if unknown:
                    raise ConfError(_unknown_message(self.name, unknown))
            return msgspec.json.decode(raw, type=config)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise ConfError(str(exc)) from None

    def startup(self) -> Any:
        return None

    def shutdown(self) -> Any:
        return None

    # Declared for type checkers and docs; a plugin defines at least one.
    if TYPE_CHECKING:

        def filter(self, conf: Any, request: Request, response: Response) -> Any: ...

        def response_filter(self, conf: Any, response: UpstreamResponse) -> Any: ...


async def run_hooks(plugins: Mapping[str, Plugin], hook: str) -> None:
    """Run every plugin's ``startup`` or ``shutdown`` (sync or async) once.

    A failing startup is fatal (the worker cannot serve those plugins); a
    failing shutdown is logged and the others still run."""
    for name, plugin in plugins.items():
        try:
            result = getattr(plugin, hook)()
            if inspect.isawaitable(result):
                await result
        except Exception:
            if hook == "startup":
                raise
            log.exception("plugin %r: %s failed", name, hook)


# --------------------------------------------------------------------------- strict configs
#
# msgspec ignores unknown keys unless a Struct class says forbid_unknown_fields,
# and that flag is fixed when the class is made: a plugin author's plain
# ``class Config(msgspec.Struct)`` cannot be given it. So the config is decoded
# once without a type, its keys are checked against the fields of the Struct
# types they land in, and then it is decoded into the Config. At PrepareConf
# only, and only for Configs that have an open Struct somewhere.


# The msgspec types a JSON array decodes into, one item type for all items.
_ARRAYS = (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)


def _has_open_structs(config: Any) -> bool:
    """Whether a Struct in ``config`` would ignore a key (once per Config type)."""
    try:
        return _open_config(config)
    except TypeError:  # not hashable, or not a type msgspec knows: msgspec will say
        return False


@functools.lru_cache(maxsize=256)  # bounded: each reload brings new Config classes
def _open_config(config: Any) -> bool:
    return any(_open_structs(mi.type_info(config), set()))


def _open_structs(t: mi.Type, seen: set[type]) -> Iterator[bool]:
    """True for every Struct reachable from ``t`` that would ignore a key."""
    if isinstance(t, mi.Metadata):
        yield from _open_structs(t.type, seen)
    elif isinstance(t, mi.StructType):
        if t.cls in seen:
            return
        seen.add(t.cls)
        yield not (t.forbid_unknown_fields or t.array_like)
        for field in t.fields:
            yield from _open_structs(field.type, seen)
    elif isinstance(t, _ARRAYS):
        yield from _open_structs(t.item_type, seen)
    elif isinstance(t, mi.TupleType):
        for item in t.item_types:
            yield from _open_structs(item, seen)
    elif isinstance(t, mi.DictType):
        yield from _open_structs(t.value_type, seen)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            yield from _open_structs(member, seen)


def _unknown_fields(
    value: Any, t: mi.Type, path: str = "$"
) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(path, unknown key, the keys known there) for each key of ``value``
    that the Struct it decodes into has no field for."""
    if isinstance(t, mi.Metadata):
        yield from _unknown_fields(value, t.type, path)
    elif isinstance(t, mi.StructType):
        if not isinstance(value, dict) or t.array_like:
            return  # msgspec reports the wrong type itself
        fields = {f.encode_name: f.type for f in t.fields}
        for key, item in value.items():
            field_type = fields.get(key)
            if field_type is not None:
                yield from _unknown_fields(item, field_type, f"{path}.{key}")
            elif not t.forbid_unknown_fields and key != t.tag_field:
                yield path, key, tuple(fields)
    elif isinstance(value, list):
        if isinstance(t, _ARRAYS):
            for i, item in enumerate(value):
                yield from _unknown_fields(item, t.item_type, f"{path}[{i}]")
        elif isinstance(t, mi.TupleType):
            for i, (item, item_type) in enumerate(zip(value, t.item_types, strict=False)):
                yield from _unknown_fields(item, item_type, f"{path}[{i}]")
        elif isinstance(t, mi.UnionType):
            arrays = [m for m in t.types if isinstance(m, (*_ARRAYS, mi.TupleType))]
            if len(arrays) == 1:
                yield from _unknown_fields(value, arrays[0], path)
    elif isinstance(value, dict):
        if isinstance(t, mi.DictType):
            for item in value.values():  # keys stay out of messages, as in msgspec's paths
                yield from _unknown_fields(item, t.value_type, f"{path}[...]")
        elif isinstance(t, mi.UnionType):
            member = _object_member(value, t)
            if member is not None:
                yield from _unknown_fields(value, member, path)


def _object_member(value: dict[str, Any], t: mi.UnionType) -> mi.Type | None:
    """The member of a union an object decodes into: a tagged Struct by its
    tag, else the only member that takes objects."""
    members = [m.type if isinstance(m, mi.Metadata) else m for m in t.types]
    objects = [m for m in members if isinstance(m, (mi.StructType, mi.DictType))
               and not getattr(m, "array_like", False)]  # fmt: skip
    for m in objects:
        tag_field = m.tag_field if isinstance(m, mi.StructType) else None
        if tag_field is not None and value.get(tag_field) == getattr(m, "tag", None):
            return m
    return objects[0] if len(objects) == 1 else None


def _unknown_message(plugin: str, unknown: list[tuple[str, str, tuple[str, ...]]]) -> str:
    path, key, known = unknown[0]
    keys = ", ".join(f"`{k}` at `{p}`" for p, k, _ in unknown)
    close = difflib.get_close_matches(key, known, 1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return (
        f"plugin {plugin!r} has no config field{'s' if len(unknown) > 1 else ''} {keys} "
        f"({hint}known at `{path}`: {', '.join(known) or 'none'})"
    )


def has_filter(plugin: Plugin) -> bool:
    return callable(getattr(plugin, "filter", None))


def has_response_filter(plugin: Plugin) -> bool:
    return callable(getattr(plugin, "response_filter", None))


def is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)

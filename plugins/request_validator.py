"""request-validator: reject request bodies that are not JSON or break a JSON Schema.

Route config (``schema`` required)::

    {"schema": {"type": "object", "required": ["email"],
                "properties": {"email": {"type": "string", "format": "email"}}},
     "methods": ["POST", "PUT", "PATCH"],      # the default
     "max_body_bytes": 1048576,                # larger: 413 before parsing
     "max_depth": 64,                          # deeper nesting: 400
     "reject_duplicate_keys": false}           # {"a": 1, "a": 2}: 400

The schema is JSON Schema Draft 2020-12 with format checking; it is checked
and compiled once, at PrepareConf. Requests of other methods pass without
the body being fetched. A body that is not JSON gets 400
``{"error": "Invalid JSON format"}``; one that breaks the schema gets 400
``{"error": "Schema validation failed", "message": ..., "path": "$.email"}``.

A client cannot make validation expensive: the body is bounded before it is
parsed (``Content-Length`` first, then the bytes), nesting is bounded before
the schema is applied, ``uniqueItems`` is checked in linear time (jsonschema's
own check is quadratic for objects: 6,000 small objects took 23 s), at most
``MAX_ERRORS`` errors are walked, and bodies over ``INLINE_BYTES`` are
validated in a worker thread so the event loop keeps serving other requests.
Parsed JSON takes up to ~35x the body's size in memory (``[{}, {}, ...]``), so
``max_body_bytes`` bounds a request's memory at about 35 MiB by default.

jsonschema is imported on the first PrepareConf that uses this plugin, not at
start-up: every worker imports every bundled plugin and most never use this
one (see ``_import_jsonschema`` for what the import costs).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple

import msgspec
import orjson

from runner import ConfError, Plugin, Request, Response
from runner.proto import METHODS  # the methods APISIX can send (A6.Method)

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

DEFAULT_METHODS: Final = ("POST", "PUT", "PATCH")
# Errors looked at to pick the most relevant one (a 1,000,000-item array can
# have a million): the first ones already name the problem.
MAX_ERRORS: Final = 32
# Bodies larger than this are validated off the event loop.
INLINE_BYTES: Final = 16 * 1024
# jsonschema messages repr the offending value, which may be most of a 16 MiB body.
MAX_MESSAGE: Final = 1000
_IRI_FORMATS: Final = {"iri": "iri", "iri-reference": "iri_reference"}

_JSON_HEADERS: Final = {"Content-Type": "application/json"}
_INVALID_JSON: Final = orjson.dumps({"error": "Invalid JSON format"})
_TOO_LARGE: Final = orjson.dumps({"error": "Body too large"})
_TOO_DEEP: Final = orjson.dumps({"error": "Body nested too deeply"})
_DUPLICATE: Final = orjson.dumps({"error": "Duplicate key in a JSON object"})


class RequestValidatorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    schema: dict[str, Any] | bool
    methods: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_METHODS))
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=16 * 1024 * 1024)] = 1024 * 1024
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=512)] = 64
    reject_duplicate_keys: bool = False

    def __post_init__(self) -> None:
        if not self.methods:
            raise msgspec.ValidationError("methods: must not be empty (omit it for the default)")
        unknown = sorted({m.upper() for m in self.methods}.difference(METHODS))
        if unknown:
            raise msgspec.ValidationError(f"methods: unknown HTTP method(s) {unknown}")


class Validation(NamedTuple):
    """A route's compiled schema and limits; what ``filter`` gets."""

    validator: Validator
    methods: frozenset[str]
    max_body_bytes: int
    max_depth: int
    reject_duplicate_keys: bool


def _import_jsonschema() -> None:
    """Import jsonschema, on first use only.

    jsonschema costs ~60 ms and ~12 MiB per worker, plus ~0.7 s and ~15 MiB
    more for rfc3987_syntax, which builds an Earley parser at import time for
    the "iri" and "iri-reference" formats alone. That one is kept out of the
    import (jsonschema skips a format whose library is missing) and loaded
    only for a schema that uses those formats (``_add_iri_formats``): a worker
    stalls for 60 ms, not 0.8 s, on its first validator route.
    """
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        return
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # makes the import fail
    try:
        import jsonschema  # noqa: F401
    finally:
        del sys.modules["rfc3987_syntax"]


def _uses_formats(schema: Any, formats: dict[str, str]) -> bool:
    if isinstance(schema, dict):
        if schema.get("format") in formats:
            return True
        schema = list(schema.values())
    return isinstance(schema, list) and any(_uses_formats(s, formats) for s in schema)


def _add_iri_formats(checker: Any) -> None:
    """Register the iri formats as jsonschema itself would with rfc3987_syntax."""
    from rfc3987_syntax import is_valid_syntax  # type: ignore[import-untyped]

    def rule_checker(rule: str) -> Any:
        return lambda instance: not isinstance(instance, str) or is_valid_syntax(rule, instance)

    for fmt, rule in _IRI_FORMATS.items():
        checker.checks(fmt, raises=ValueError)(rule_checker(rule))


def _compile(schema: dict[str, Any] | bool) -> Validator:
    _import_jsonschema()
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)  # raises its best_match error
    except SchemaError as exc:
        raise ConfError(f"schema: {exc.message} (at {exc.json_path})") from None
    checker = Draft202012Validator.FORMAT_CHECKER
    if "iri" not in checker.checkers and _uses_formats(schema, _IRI_FORMATS):
        _add_iri_formats(checker)
    validator: Validator = _linear_unique(Draft202012Validator)(schema, format_checker=checker)
    return validator


def _canonical(value: Any) -> Any:
    """A hashable form in which JSON-equal values are equal (1 == 1.0, key
    order ignored, true != 1), for a linear-time uniqueItems."""
    if isinstance(value, dict):
        return ("o", tuple(sorted((k, _canonical(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("a", tuple(_canonical(v) for v in value))
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, float) and value.is_integer():
        return ("n", int(value))
    if isinstance(value, int | float):
        return ("n", value)
    return ("s", value)


def _linear_unique(base: Any) -> Any:
    from jsonschema import validators
    from jsonschema.exceptions import ValidationError

    def unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Any:
        if not (unique and validator.is_type(instance, "array")):
            return
        seen: set[Any] = set()
        for item in instance:
            key = _canonical(item)
            if key in seen:
                yield ValidationError(f"{_short(instance)} has non-unique elements")
                return
            seen.add(key)

    extend: Any = validators.extend  # untyped in jsonschema
    return extend(base, {"uniqueItems": unique_items})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _too_deep(instance: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iteratively: a deep body
    must not overflow our own stack either)."""
    stack = [(instance, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))
    return False


def _has_duplicate_keys(body: bytes) -> bool:
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise _Duplicate
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except _Duplicate:
        return True
    except (ValueError, RecursionError):
        return False  # orjson parsed it; the limits above judge the rest
    return False


class _Duplicate(Exception):
    pass


def _violation(validator: Validator, instance: Any) -> bytes | None:
    """The 400 body for the most relevant schema error, None if valid."""
    from jsonschema.exceptions import best_match  # imported by _compile: a dict lookup

    error = best_match(itertools.islice(validator.iter_errors(instance), MAX_ERRORS))
    if error is None:
        return None
    message = error.message
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return orjson.dumps(
        {"error": "Schema validation failed", "message": message, "path": error.json_path}
    )


class RequestValidator(Plugin):
    name = "request-validator"
    Config = RequestValidatorConfig

    def parse_conf(self, raw: str) -> Validation:
        conf: RequestValidatorConfig = super().parse_conf(raw)
        methods = frozenset(m.upper() for m in conf.methods)
        return Validation(
            _compile(conf.schema), methods,
            conf.max_body_bytes, conf.max_depth, conf.reject_duplicate_keys,
        )  # fmt: skip

    async def filter(self, conf: Validation, request: Request, response: Response) -> None:
        if request.method not in conf.methods:
            return  # the body is never asked for
        if _declared_length(request) > conf.max_body_bytes:
            response.stop(413, _TOO_LARGE, _JSON_HEADERS)  # not even fetched
            return
        body = await request.body()
        if len(body) > conf.max_body_bytes:
            response.stop(413, _TOO_LARGE, _JSON_HEADERS)
            return
        if len(body) <= INLINE_BYTES:
            answer = _check(conf, body)
        else:  # parsing and validating a big body must not hold the event loop
            answer = await asyncio.to_thread(_check, conf, body)
        if answer is not None:
            response.stop(400, answer, _JSON_HEADERS)


def _declared_length(request: Request) -> int:
    value = request.headers.get("content-length") or ""
    return int(value) if value.isdigit() else 0


def _check(conf: Validation, body: bytes) -> bytes | None:
    """The 400 body for ``body``, None if it passes."""
    try:
        instance = orjson.loads(body)  # orjson refuses nesting deeper than 1024
    except orjson.JSONDecodeError:
        return _INVALID_JSON
    if _too_deep(instance, conf.max_depth):
        return _TOO_DEEP
    if conf.reject_duplicate_keys and _has_duplicate_keys(body):
        return _DUPLICATE
    try:
        return _violation(conf.validator, instance)
    except RecursionError:  # a recursive $ref deeper than the stack: the client's input
        return _TOO_DEEP

"""request-validator: reject request bodies that are not JSON or break a JSON Schema.

Route config (``schema`` required)::

    {"schema": {"type": "object", "required": ["email"],
                "properties": {"email": {"type": "string", "format": "email"}}},
     "methods": ["POST", "PUT", "PATCH"]}      # the default

The schema is JSON Schema Draft 2020-12 with format checking; it is checked
and compiled once, at PrepareConf. Requests of other methods pass without
the body being fetched. A body that is not JSON gets 400
``{"error": "Invalid JSON format"}``; one that breaks the schema gets 400
``{"error": "Schema validation failed", "message": ..., "path": "$.email"}``.

jsonschema is imported on the first PrepareConf that uses this plugin, not at
start-up: every worker imports every bundled plugin and most never use this
one (see ``_import_jsonschema`` for what the import costs).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec
import orjson

from runner import ConfError, Plugin, Request, Response
from runner.proto import METHODS  # the methods APISIX can send (A6.Method)

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

DEFAULT_METHODS: Final = ("POST", "PUT", "PATCH")
# jsonschema messages repr the offending value, which may be most of a 16 MiB body.
MAX_MESSAGE: Final = 1000
_IRI_FORMATS: Final = {"iri": "iri", "iri-reference": "iri_reference"}

_JSON_HEADERS: Final = {"Content-Type": "application/json"}
_INVALID_JSON: Final = orjson.dumps({"error": "Invalid JSON format"})


class RequestValidatorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    schema: dict[str, Any] | bool
    methods: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_METHODS))

    def __post_init__(self) -> None:
        if not self.methods:
            raise msgspec.ValidationError("methods: must not be empty (omit it for the default)")
        unknown = sorted({m.upper() for m in self.methods}.difference(METHODS))
        if unknown:
            raise msgspec.ValidationError(f"methods: unknown HTTP method(s) {unknown}")


class Validation(NamedTuple):
    """A route's compiled schema; what ``filter`` gets."""

    validator: Validator
    methods: frozenset[str]


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
    return Draft202012Validator(schema, format_checker=checker)


def _violation(validator: Validator, instance: Any) -> bytes | None:
    """The 400 body for the most relevant schema error, None if valid."""
    from jsonschema.exceptions import best_match  # imported by _compile: a dict lookup

    error = best_match(validator.iter_errors(instance))
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
        return Validation(_compile(conf.schema), methods)

    async def filter(self, conf: Validation, request: Request, response: Response) -> None:
        if request.method not in conf.methods:
            return  # the body is never asked for
        try:
            instance = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            response.stop(400, _INVALID_JSON, _JSON_HEADERS)
            return
        body = _violation(conf.validator, instance)
        if body is not None:
            response.stop(400, body, _JSON_HEADERS)

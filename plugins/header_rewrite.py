"""header-rewrite: set and remove headers of the request sent upstream.

Route config, both keys optional::

    {"add_headers": {"X-Api-Version": "2", "X-Tenant": "acme"},   # replaces any value
     "remove_headers": ["X-Debug", "Cookie"]}

Names are case-insensitive. The filter only writes, so the request's own
headers are never decoded: this is the cheapest kind of plugin the runner has.
"""

from __future__ import annotations

import re

import msgspec

from runner import Plugin, Request, Response

# RFC 9110 §5.6.2 token; anything else cannot be a header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters (HTAB allowed) would split or corrupt the header block.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_names(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not _TOKEN.fullmatch(name):
            raise msgspec.ValidationError(f"{field}: {name!r} is not a valid header name")
        if name.lower() in seen:
            raise msgspec.ValidationError(f"{field}: {name!r} is given twice (names ignore case)")
        seen.add(name.lower())


class HeaderRewriteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    add_headers: dict[str, str] = msgspec.field(default_factory=dict)
    remove_headers: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _check_names("add_headers", list(self.add_headers))
        _check_names("remove_headers", self.remove_headers)
        for name, value in self.add_headers.items():
            if _BAD_VALUE.search(value):
                raise msgspec.ValidationError(
                    f"add_headers: the value of {name!r} holds a control character"
                )
        # Both would leave the result up to the order of application.
        both = {n.lower() for n in self.add_headers} & {n.lower() for n in self.remove_headers}
        if both:
            raise msgspec.ValidationError(
                f"remove_headers: {sorted(both)} also in add_headers; keep one"
            )
        # Lower-cased once here, as the request's header map keys them: a name
        # that is its own key costs a write no spelling to remember, every call.
        # (APISIX and HTTP compare header names without case.)
        lowered = {name.lower(): value for name, value in self.add_headers.items()}
        msgspec.structs.force_setattr(self, "add_headers", lowered)
        removed = [name.lower() for name in self.remove_headers]
        msgspec.structs.force_setattr(self, "remove_headers", removed)


class HeaderRewrite(Plugin):
    name = "header-rewrite"
    Config = HeaderRewriteConfig

    def filter(self, conf: HeaderRewriteConfig, request: Request, response: Response) -> None:
        headers = request.headers
        # discard() and item assignment record changes without decoding the
        # request's headers (runner.api.multidict keeps them as overrides).
        for name in conf.remove_headers:
            headers.discard(name)
        headers.update(conf.add_headers)

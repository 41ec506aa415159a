"""What plugins see: lazy request views and change-tracking responses.

A :class:`Request` decodes a field of the HTTPReqCall only when the plugin
first reads it, and records changes; the dispatcher turns the changes into a
Rewrite (or nothing). A :class:`Response` is the response the client will get:
giving it a status or a body stops the request (Stop); headers set on it
without a status ride along with a proxied request (``Rewrite.resp_headers``).
:class:`UpstreamResponse` is the upstream's answer in the post-resp phase.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol

from mypy_extensions import mypyc_attr

from runner.api.multidict import Args, Headers
from runner.proto import InfoType, ReqCallView
from runner.proto.fb import Changes, encoded

# Asks APISIX for one piece of ExtraInfo: (InfoType, var name) -> raw result.
Ask = Callable[[int, str | None], Awaitable[bytes | None]]


class RequestSource(Protocol):
    """The fields of an HTTPReqCall (runner.proto.ReqCallView satisfies it)."""

    @property
    def id(self) -> int: ...
    @property
    def src_ip(self) -> bytes: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def args(self) -> list[tuple[str, str | None]]: ...
    @property
    def headers(self) -> list[tuple[str, str | None]]: ...
    @property
    def header_count(self) -> int: ...


#: APISIX's client reads the request headers with ngx.req.get_headers(), which
#: returns at most this many and drops the rest silently (docs/protocol.md §5.2).
HEADER_CAP: Final = 100


def _ip_text(packed: bytes) -> str:
    if len(packed) in (4, 16):
        return str(ipaddress.ip_address(packed))
    return ""


_NO_CHANGES: Final[Changes] = {}  # shared, never written to
_VAR: Final = int(InfoType.VAR)  # an enum member costs an attribute lookup per use


def var_text(raw: bytes | None) -> str | None:
    """A variable's value as APISIX sent it: UTF-8, where not, each bad byte as U+FFFD."""
    if raw is None:
        return None
    try:
        # Strict first: compiled, it is the UTF-8 decoder's fast path; a
        # decode with an error handler goes through the codec registry.
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


async def _cached_var(cache: dict[str, str | None], ask: Ask, name: str) -> str | None:
    if name in cache:
        return cache[name]
    value = var_text(await ask(_VAR, name))
    cache[name] = value
    return value


@mypyc_attr(free_list_len=1)
class Request:
    """The client's request as APISIX forwards it to the runner.

    Read ``method``, ``path``, ``args``, ``headers``, ``src_ip``; change
    ``path``, ``args``, ``headers`` or call :meth:`set_body` and only the
    changes go upstream. ``await var(name)`` and ``await body()`` ask APISIX
    (one round trip each, cached for the rest of the request).
    """

    __slots__ = (
        "_args", "_ask", "_body", "_headers", "_new_body", "_new_path", "_path", "_src",
        "_var_name", "_var_value", "_vars", "conf_token", "id",
    )  # fmt: skip

    def __init__(self, source: RequestSource, ask: Ask, conf_token: int = 0) -> None:
        self._src = source
        self._ask = ask
        # The same read twice, on purpose: compiled, the first is a native
        # read of a ReqCallView's field; the second, of any other source (a
        # test's), goes through the protocol (a lookup by name).
        if isinstance(source, ReqCallView):
            self.id = source.id
        else:
            self.id = source.id
        self.conf_token = conf_token
        self._headers: Headers | None = None
        self._args: Args | None = None
        self._path: str | None = None
        self._new_path: str | None = None
        # The first variable asked, in two fields; the others in a dict.
        # Most plugins ask one: a dict made for it per call would cost more
        # than the lookup it saves.
        self._var_name: str | None = None
        self._var_value: str | None = None
        self._vars: dict[str, str | None] | None = None
        self._body: bytes | None = None
        self._new_body: bytes | None = None

    @property
    def method(self) -> str:
        return self._src.method

    @property
    def src_ip(self) -> str:
        """The client address as text (IPv4 or IPv6)."""
        return _ip_text(self._src.src_ip)

    @property
    def remote_addr(self) -> str:
        """The same as ``src_ip`` (nginx's name for it). A property of its own,
        not ``remote_addr = src_ip``: mypyc cannot alias a property."""
        return _ip_text(self._src.src_ip)

    @property
    def path(self) -> str:
        """The path without the query string (decoded, as nginx's ``$uri``)."""
        if self._new_path is not None:
            return self._new_path
        if self._path is None:
            src = self._src
            if isinstance(src, ReqCallView):  # a native read when compiled (see __init__)
                self._path = src.path
            else:
                self._path = src.path
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if not value.startswith("/"):
            raise ValueError(f"a path starts with '/', got {value!r}")
        if "?" in value:
            # APISIX escapes '?' in the path (docs/protocol.md §5.4): set args instead.
            raise ValueError("put the query in request.args, not in the path")
        self._new_path = value

    @property
    def headers(self) -> Headers:
        """Case-insensitive, multi-valued; changes go upstream."""
        if self._headers is None:
            self._headers = Headers(source=self._src)
        return self._headers

    @property
    def headers_truncated(self) -> bool:
        """Whether APISIX may have dropped some of the client's headers: it
        passes at most 100 and says nothing about the rest, while nginx still
        forwards them all upstream. A plugin that must see every header
        (stripping client-sent identity headers, a deny list) refuses such a
        request instead of trusting it."""
        return self._src.header_count >= HEADER_CAP

    @property
    def args(self) -> Args:
        """Query args, multi-valued; ``None`` is an arg without ``=``."""
        if self._args is None:
            self._args = Args(source=self._src)
        return self._args

    # var() and body() are plain methods that return a coroutine, awaited
    # the same way: compiled, an `async def` method is a function object
    # that the plugin's `request.var` binds anew on every call (a bound
    # method made and freed per call); a plain method is called unbound.

    def var(self, name: str) -> Coroutine[Any, Any, str | None]:
        """An nginx/APISIX variable (``remote_addr``, ``route_id``, ...); None
        if unset. Awaited: ``await request.var("remote_addr")``."""
        return self._var(name)

    async def _var(self, name: str) -> str | None:
        # _cached_var written out: a coroutine less on the way to every answer.
        if name == self._var_name:
            return self._var_value
        cache = self._vars
        if cache is not None and name in cache:
            return cache[name]
        value = var_text(await self._ask(_VAR, name))
        # Read again after the await: calls of var() running at the same
        # time (gather) may have kept their answers meanwhile.
        if self._var_name is None:
            self._var_name, self._var_value = name, value
        elif name != self._var_name:  # not asked twice at once (two awaits of one name)
            cache = self._vars
            if cache is None:
                cache = self._vars = {}
            cache[name] = value
        return value

    def body(self) -> Coroutine[Any, Any, bytes]:
        """The request body (b"" when there is none), fetched once. Awaited:
        ``await request.body()``."""
        return self._read_body()

    async def _read_body(self) -> bytes:
        if self._new_body is not None:
            return self._new_body
        if self._body is None:
            self._body = await self._ask(InfoType.REQ_BODY, None) or b""
        return self._body

    def set_body(self, body: bytes | str) -> None:
        """Replace the body sent upstream (APISIX >= 3.6; it cannot be emptied)."""
        self._new_body = encoded(body) if isinstance(body, str) else bytes(body)

    # -- what the dispatcher reads back

    @property
    def new_path(self) -> str | None:
        return self._new_path

    @property
    def new_body(self) -> bytes | None:
        return self._new_body

    def change_count(self, response: Response) -> int:
        """How many changes plugins made so far (request and client-response
        headers); metrics compare it around each plugin to count rewrites."""
        n = (self._new_path is not None) + (self._new_body is not None)
        if self._headers is not None:
            n += self._headers.writes
        if self._args is not None:
            n += self._args.writes
        h = response._headers
        return n if h is None else n + h.writes

    def upstream_changes(self) -> tuple[str | None, Changes, Changes, bytes | None]:
        """(new path, header changes, arg changes, new body): what a Rewrite
        carries, in one call (the dispatcher builds every reply from it).
        The change maps are the multi-dicts' own (``MultiDict.changes``):
        read them, never change them."""
        h, a = self._headers, self._args
        return (
            self._new_path,
            _NO_CHANGES if h is None else h.changes(),
            _NO_CHANGES if a is None else a.changes(),
            self._new_body,
        )


@mypyc_attr(free_list_len=1, acyclic=True)
class Response:
    """The response the client gets. Setting ``status`` or ``body`` stops the
    request here (the upstream and the rest of the chain are skipped).
    Headers set without a status are added to the upstream's response."""

    __slots__ = ("_body", "_headers", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self._headers: Headers | None = None
        self._body: bytes | None = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers()
        return self._headers

    @property
    def body(self) -> bytes | None:
        return self._body

    @body.setter
    def body(self, value: bytes | str | None) -> None:
        self._body = encoded(value) if isinstance(value, str) else value

    # The old runner and the guide spell it status_code.
    @property
    def status_code(self) -> int | None:
        return self.status

    @status_code.setter
    def status_code(self, value: int | None) -> None:
        self.status = value

    def stop(
        self,
        status: int = 200,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the client now."""
        self.status = status
        self._body = encoded(body) if isinstance(body, str) else body  # the body setter
        if headers:
            for name, value in headers.items():
                self.headers[name] = value

    @property
    def stopped(self) -> bool:
        return self.status is not None or self._body is not None

    def header_items(self) -> list[tuple[str, str | None]]:
        h = self._headers
        if h is None:  # the usual case, decided without calling len(h)
            return []
        return list(h.multi_items())


@mypyc_attr(free_list_len=1)
class UpstreamResponse:
    """The upstream's response in the post-resp phase (``ext-plugin-post-resp``).

    Change ``status``, ``headers`` or call :meth:`set_body`; the upstream's
    other headers are kept (the runner sends APISIX the complete merged set).
    """

    __slots__ = (
        "_ask",
        "_body",
        "_headers",
        "_new_body",
        "_pairs",
        "_vars",
        "id",
        "status",
        "upstream_status",
    )

    def __init__(
        self, req_id: int, status: int, headers: list[tuple[str, str | None]], ask: Ask
    ) -> None:
        self.id = req_id
        self.upstream_status = status
        self.status = status
        self._pairs = headers
        self._headers: Headers | None = None
        self._ask = ask
        self._body: bytes | None = None
        self._new_body: bytes | None = None
        self._vars: dict[str, str | None] = {}

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self._pairs)
        return self._headers

    def var(self, name: str) -> Coroutine[Any, Any, str | None]:
        """An nginx/APISIX variable; None if unset. Cached for this response.
        Awaited, as Request.var (a plain method, for the same reason)."""
        return _cached_var(self._vars, self._ask, name)

    def body(self) -> Coroutine[Any, Any, bytes]:
        """The upstream body (APISIX reads it all; b"" when empty). Awaited."""
        return self._read_body()

    async def _read_body(self) -> bytes:
        if self._new_body is not None:
            return self._new_body
        if self._body is None:
            self._body = await self._ask(InfoType.RESP_BODY, None) or b""
        return self._body

    def set_body(self, body: bytes | str) -> None:
        self._new_body = encoded(body) if isinstance(body, str) else bytes(body)

    @property
    def new_body(self) -> bytes | None:
        return self._new_body

    @property
    def changed(self) -> bool:
        h = self._headers
        return (
            self.status != self.upstream_status
            or self._new_body is not None
            or (h is not None and h.changed)
        )

    def all_headers(self) -> list[tuple[str, str | None]]:
        """The headers to send on, without those the upstream named in its
        ``Connection`` header: they were for its hop only (RFC 9110 §7.6.1)."""
        h = self._headers
        pairs = list(h.multi_items()) if h is not None else list(self._pairs)
        hop = {
            token.strip().lower()
            for name, value in pairs
            if value and name.lower() == "connection"
            for token in value.split(",")
        }
        return [(n, v) for n, v in pairs if n.lower() not in hop] if hop else pairs

"""jwt-auth: let a request through only with a valid JWT, and hand its claims upstream.

Route config (``secret`` and ``algorithm`` required)::

    {"secret": "<HMAC secret, or the PEM public key for RS*/PS*/ES*/EdDSA>",
     "algorithm": "HS256",
     "header": "Authorization",        # where the "Bearer <token>" is
     "claims_to_headers": true,        # claims go upstream as X-JWT-<claim>
     "leeway": 0, "audience": null, "issuer": null,
     "truncated_headers_status": 431}  # 100+ request headers: some unseen (400..499)

The key is prepared once, at PrepareConf; a bad key, a key too short for its
algorithm, a private key, or an unknown algorithm (``none`` included) fail
the route. A request without a usable token gets 401 with a short JSON reason.
Client-sent ``X-JWT-*`` headers never reach the upstream, whatever their case
or ``_`` spelling (``X_JWT_Role``: nginx passes underscores, and many upstream
frameworks read them as dashes). APISIX passes the runner at most 100 request
headers and drops the rest unseen while nginx still forwards them, so a
request that arrives with 100 or more is refused (``truncated_headers_status``,
431 by default) rather than let a claim header past the strip. Neither the key
nor the token is ever written to a log or an error message.

PyJWT (which imports ``cryptography``, ~20 MiB of resident memory and ~45 ms)
is imported on the first PrepareConf that uses this plugin, not at start-up:
every worker imports every bundled plugin, most never use this one.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson

from runner import ConfError, Headers, Plugin, Request, Response

log = logging.getLogger("runner.plugins.jwt-auth")

# Every algorithm PyJWT verifies, except "none" (it would accept any token).
AlgorithmName = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512", "EdDSA",
]  # fmt: skip

CLAIM_PREFIX: Final = "X-JWT-"
_CLAIM_PREFIX_LOWER: Final = CLAIM_PREFIX.lower()
# A claim name that is not an RFC 9110 token cannot be a header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters (HTAB allowed) in a header value would corrupt the header block.
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class JwtAuthConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    secret: str
    algorithm: AlgorithmName
    header: str = "Authorization"
    claims_to_headers: bool = True
    leeway: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    audience: str | list[str] | None = None
    issuer: str | list[str] | None = None
    truncated_headers_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 431

    def __repr__(self) -> str:  # the secret stays out of any traceback or log
        return f"JwtAuthConfig(algorithm={self.algorithm!r}, header={self.header!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class JwtRoute:
    """A route's config with its key prepared; what ``filter`` gets."""

    key: Any = dataclasses.field(repr=False)
    algorithms: list[str]
    header: str
    claims_to_headers: bool
    leeway: float
    audience: str | list[str] | None
    issuer: str | list[str] | None
    truncated_headers_status: int


def _prepare_key(algorithm: str, secret: str) -> Any:
    """The verification key of ``algorithm``; every message is ours, never the
    library's, so that no part of the key can end up in the log."""
    from jwt.algorithms import get_default_algorithms  # lazy: see the module docstring

    if not secret:
        raise ConfError("secret: must not be empty")
    alg = get_default_algorithms()[algorithm]
    try:
        key = alg.prepare_key(secret)
    except Exception:
        kind = "secret" if algorithm.startswith("HS") else "PEM public key"
        raise ConfError(f"secret: not a valid {kind} for {algorithm}") from None
    if hasattr(key, "private_bytes"):
        raise ConfError(f"secret: {algorithm} needs the PEM public key, not a private key")
    weakness = alg.check_key_length(key)  # PyJWT's text names lengths only
    if weakness:
        why = (
            "; a shorter HMAC secret can be guessed faster than the hash can be broken, "
            "so tokens signed with it could be forged (generate one: openssl rand -base64 48)"
            if algorithm.startswith("HS")
            else ""
        )
        raise ConfError(f"secret: {weakness}{why}")
    return key


def _route(conf: JwtAuthConfig) -> JwtRoute:
    return JwtRoute(
        key=_prepare_key(conf.algorithm, conf.secret),
        # One algorithm only: a token cannot pick another (the HS/RS confusion).
        algorithms=[conf.algorithm],
        header=conf.header,
        claims_to_headers=conf.claims_to_headers,
        leeway=conf.leeway,
        audience=conf.audience,
        issuer=conf.issuer,
        truncated_headers_status=conf.truncated_headers_status,
    )


def _body(error: str, reason: str | None = None) -> bytes:
    return orjson.dumps({"error": error} if reason is None else {"error": error, "reason": reason})


# PyJWT exception class name -> the reason the client is told (first match in
# the exception's MRO, so subclasses are looked up before their bases).
_REASONS: Final = {
    "ExpiredSignatureError": "token expired",
    "ImmatureSignatureError": "token not yet valid",
    "InvalidSignatureError": "signature verification failed",
    "InvalidAlgorithmError": "algorithm not allowed",
    "InvalidAudienceError": "invalid audience",
    "InvalidIssuerError": "invalid issuer",
    "InvalidIssuedAtError": "invalid iat claim",
    "MissingRequiredClaimError": "missing required claim",
    "DecodeError": "malformed token",
}
_MALFORMED: Final = "malformed bearer token"
_INVALID: Final = {
    r: _body("invalid token", r) for r in (*_REASONS.values(), "invalid token", _MALFORMED)
}
_MISSING: Final = _body("missing token")
_TRUNCATED: Final = _body(
    "too many headers",
    "100 or more request headers: the gateway passes the first 100 only, so the "
    "others could not be checked",
)
_CHALLENGE: Final = "Bearer"
_CHALLENGE_INVALID: Final = 'Bearer error="invalid_token"'


def _reason(exc: Exception) -> str:
    for cls in type(exc).__mro__:
        reason = _REASONS.get(cls.__name__)
        if reason is not None:
            return reason
    return "invalid token"


def _decode(conf: JwtRoute, token: str) -> dict[str, Any] | str:
    """The token's claims, or the reason it is refused."""
    import jwt  # imported by parse_conf already: a dict lookup

    try:
        return jwt.decode(
            token, conf.key, algorithms=conf.algorithms, leeway=conf.leeway,
            audience=conf.audience, issuer=conf.issuer,
        )  # fmt: skip
    except jwt.PyJWTError as exc:
        return _reason(exc)


def _deny(response: Response, body: bytes, challenge: str) -> None:
    headers = {"Content-Type": "application/json", "WWW-Authenticate": challenge}
    response.stop(401, body, headers)


def _bearer_token(value: str) -> str | None:
    """The token of ``Bearer <token>`` (scheme case-insensitive), else None."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _strip_spoofed(headers: Headers) -> None:
    # Only this plugin may set X-JWT-*: the upstream trusts them. X_JWT_Role is
    # the same header to CGI, PHP, Django and many other upstreams.
    for name in [n for n in headers if n.lower().replace("_", "-").startswith(_CLAIM_PREFIX_LOWER)]:
        headers.discard(name)


def _claim_headers(claims: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(header, value) per claim; non-string values (and strings holding
    control characters) are JSON-encoded."""
    for name, value in claims.items():
        if not _TOKEN.fullmatch(name):
            continue
        if not isinstance(value, str) or _CTL.search(value):
            # msgspec, not orjson: a claim may be an integer beyond 64 bits.
            value = msgspec.json.encode(value).decode()
        yield CLAIM_PREFIX + name, value


class JwtAuth(Plugin):
    name = "jwt-auth"
    Config = JwtAuthConfig

    def parse_conf(self, raw: str) -> JwtRoute:
        conf: JwtAuthConfig = super().parse_conf(raw)
        return _route(conf)

    def filter(self, conf: JwtRoute, request: Request, response: Response) -> None:
        if request.headers_truncated:  # a spoofed claim header may be among the unseen
            response.stop(
                conf.truncated_headers_status, _TRUNCATED, {"Content-Type": "application/json"}
            )
            return
        headers = request.headers
        _strip_spoofed(headers)
        value = headers.get(conf.header)
        if not value:
            _deny(response, _MISSING, _CHALLENGE)
            return
        token = _bearer_token(value)
        claims = _MALFORMED if token is None else _decode(conf, token)
        if isinstance(claims, str):  # the token's own content is never logged
            log.debug("request %d: JWT rejected: %s", request.id, claims)
            _deny(response, _INVALID[claims], _CHALLENGE_INVALID)
        elif conf.claims_to_headers:
            for name, text in _claim_headers(claims):
                headers[name] = text

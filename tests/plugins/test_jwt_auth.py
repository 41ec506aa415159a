"""jwt-auth: unit level (PluginTester) and against a real runner logging at DEBUG."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from runner import ConfError
from runner.bundled_plugins.jwt_auth import JwtAuth, JwtAuthConfig
from runner.testing import HTTPRequest, Rewrite, RunnerError, Stop, apply_rewrite
from runner.testing.plugintest import PluginTester
from runner.testing.pytest_plugin import RunnerFactory

NAME = "jwt-auth"
SECRET = "unit-test-hmac-secret-" + "0123456789abcdef" * 3  # HS512 wants >= 64 bytes
HS256 = {"secret": SECRET, "algorithm": "HS256"}


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return raw.decode()


def pem_private(key: rsa.RSAPrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return raw.decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RS256 = {"secret": pem_public(RSA_KEY), "algorithm": "RS256"}


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def request_with(value: str | None, header: str = "authorization", **kw: Any) -> HTTPRequest:
    headers = [("host", "example.com")] + ([] if value is None else [(header, value)])
    return HTTPRequest(path="/api", headers=headers + kw.pop("headers", []), **kw)


def bearer(claims: dict[str, Any], **kw: Any) -> HTTPRequest:
    return request_with(f"Bearer {token(claims, **kw)}")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def tester() -> Iterator[PluginTester]:
    with PluginTester(JwtAuth) as t:
        yield t


def upstream_headers(
    tester: PluginTester, conf: dict[str, Any], req: HTTPRequest
) -> dict[str, str]:
    result = tester.call([(NAME, conf)], req)
    assert isinstance(result.action, Rewrite), result.action
    assert result.extra_info == []
    return dict(apply_rewrite(req, result.action).headers)


def rejection(tester: PluginTester, conf: dict[str, Any], req: HTTPRequest) -> dict[str, Any]:
    """The 401's JSON body, after checking the status and headers every 401 has."""
    result = tester.call([(NAME, conf)], req)
    stop = result.action
    assert isinstance(stop, Stop), stop
    assert stop.status == 401
    headers = dict(stop.headers)
    assert headers["Content-Type"] == "application/json"
    assert (headers["WWW-Authenticate"] or "").startswith("Bearer")
    body: dict[str, Any] = json.loads(stop.body)
    return body


def reason_of(tester: PluginTester, conf: dict[str, Any], req: HTTPRequest) -> str:
    body = rejection(tester, conf, req)
    assert body["error"] == "invalid token"
    reason: str = body["reason"]
    return reason


# ----------------------------------------------------------------------- valid tokens


def test_valid_token_passes_with_claims_as_headers(tester: PluginTester) -> None:
    exp = int(time.time()) + 60
    claims = {"sub": "alice", "exp": exp, "admin": True, "roles": ["a", "b"], "org": {"id": 7}}
    headers = upstream_headers(tester, HS256, bearer(claims))
    assert headers["x-jwt-sub"] == "alice"
    assert headers["x-jwt-exp"] == str(exp)
    assert headers["x-jwt-admin"] == "true"
    assert json.loads(headers["x-jwt-roles"]) == ["a", "b"]
    assert json.loads(headers["x-jwt-org"]) == {"id": 7}
    assert headers["authorization"].startswith("Bearer ")  # the upstream still gets it


def test_claims_that_cannot_be_header_values_are_encoded_or_skipped(tester: PluginTester) -> None:
    claims = {"sub": "a\r\nx-injected: 1", "big": 2**70, "bad name": "x", "nul": None}
    headers = upstream_headers(tester, HS256, bearer(claims))
    assert headers["x-jwt-sub"] == '"a\\r\\nx-injected: 1"'
    assert headers["x-jwt-big"] == str(2**70)
    assert headers["x-jwt-nul"] == "null"
    assert "x-injected" not in headers
    assert not any(" " in name for name in headers)


def test_spoofed_jwt_headers_are_stripped(tester: PluginTester) -> None:
    spoofed = [("X-JWT-Sub", "root"), ("x-jwt-admin", "true"), ("x-jwtish", "kept")]
    req = request_with(f"Bearer {token({'sub': 'alice'})}", headers=spoofed)
    headers = upstream_headers(tester, HS256, req)
    assert headers["x-jwt-sub"] == "alice"
    assert "x-jwt-admin" not in headers
    assert headers["x-jwtish"] == "kept"


def test_without_claims_to_headers_spoofed_headers_still_go(tester: PluginTester) -> None:
    conf = {**HS256, "claims_to_headers": False}
    req = request_with(f"Bearer {token({'sub': 'alice'})}", headers=[("x-jwt-sub", "root")])
    headers = upstream_headers(tester, conf, req)
    assert not any(name.startswith("x-jwt-") for name in headers)
    assert tester.call([(NAME, conf)], bearer({"sub": "alice"})).action is None


def test_rs256_with_a_generated_key_pair(tester: PluginTester) -> None:
    req = bearer({"sub": "bob"}, key=RSA_KEY, algorithm="RS256")
    assert upstream_headers(tester, RS256, req)["x-jwt-sub"] == "bob"
    forged = bearer({"sub": "bob"}, key=OTHER_RSA_KEY, algorithm="RS256")
    assert reason_of(tester, RS256, forged) == "signature verification failed"


def test_es256(tester: PluginTester) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    conf = {"secret": pem_public(key), "algorithm": "ES256"}
    req = bearer({"sub": "carol"}, key=key, algorithm="ES256")
    assert upstream_headers(tester, conf, req)["x-jwt-sub"] == "carol"


def test_custom_header_and_lower_case_scheme(tester: PluginTester) -> None:
    conf = {**HS256, "header": "X-Token"}
    req = request_with(f"bearer {token({'sub': 'dan'})}", header="x-token")
    assert upstream_headers(tester, conf, req)["x-jwt-sub"] == "dan"
    body = rejection(tester, conf, bearer({"sub": "dan"}))  # Authorization is not looked at
    assert body == {"error": "missing token"}


def test_leeway_audience_and_issuer(tester: PluginTester) -> None:
    conf = {**HS256, "leeway": 30, "audience": "api", "issuer": "https://idp"}
    claims = {"exp": int(time.time()) - 5, "aud": "api", "iss": "https://idp"}
    assert upstream_headers(tester, conf, bearer(claims))["x-jwt-aud"] == "api"
    assert reason_of(tester, conf, bearer({**claims, "aud": "other"})) == "invalid audience"
    assert reason_of(tester, conf, bearer({**claims, "iss": "evil"})) == "invalid issuer"
    no_aud = {"iss": "https://idp"}
    assert reason_of(tester, conf, bearer(no_aud)) == "missing required claim"


# ----------------------------------------------------------------------- rejections


def test_expired_token(tester: PluginTester) -> None:
    req = bearer({"sub": "alice", "exp": int(time.time()) - 10})
    result = tester.call([(NAME, HS256)], req)
    assert isinstance(result.action, Stop)
    assert json.loads(result.action.body) == {"error": "invalid token", "reason": "token expired"}
    assert ("WWW-Authenticate", 'Bearer error="invalid_token"') in result.action.headers


def test_not_yet_valid_token(tester: PluginTester) -> None:
    req = bearer({"nbf": int(time.time()) + 600})
    assert reason_of(tester, HS256, req) == "token not yet valid"


def test_wrong_signature(tester: PluginTester) -> None:
    req = bearer({"sub": "alice"}, key="another-secret-of-at-least-32-bytes!")
    assert reason_of(tester, HS256, req) == "signature verification failed"


def test_wrong_algorithm(tester: PluginTester) -> None:
    req = bearer({"sub": "alice"}, algorithm="HS512")
    assert reason_of(tester, HS256, req) == "algorithm not allowed"


def test_alg_none_is_refused(tester: PluginTester) -> None:
    unsigned = b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(b'{"sub":"root"}') + "."
    assert reason_of(tester, HS256, request_with(f"Bearer {unsigned}")) == "algorithm not allowed"


def test_hs256_signed_with_the_public_key_is_refused(tester: PluginTester) -> None:
    """The classic key confusion: the RS256 public key used as an HMAC secret."""
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(b'{"sub":"root"}')
    mac = hmac.new(RS256["secret"].encode(), signing_input.encode(), hashlib.sha256).digest()
    req = request_with(f"Bearer {signing_input}.{b64url(mac)}")
    assert reason_of(tester, RS256, req) == "algorithm not allowed"


def test_missing_token(tester: PluginTester) -> None:
    result = tester.call([(NAME, HS256)], request_with(None))
    assert isinstance(result.action, Stop)
    assert json.loads(result.action.body) == {"error": "missing token"}
    assert ("WWW-Authenticate", "Bearer") in result.action.headers
    assert rejection(tester, HS256, request_with("")) == {"error": "missing token"}


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "eyJhbGciOi.x.y", "Token x"]
)
def test_malformed_bearer(tester: PluginTester, value: str) -> None:
    assert reason_of(tester, HS256, request_with(value)) == "malformed bearer token"


@pytest.mark.parametrize("value", ["Bearer not-a-jwt", "Bearer a.b.c", "Bearer ...."])
def test_garbage_token(tester: PluginTester, value: str) -> None:
    assert reason_of(tester, HS256, request_with(value)) == "malformed token"


# ----------------------------------------------------------------------- bad configs

SHORT_RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)
BAD_CONFIGS = [
    ({"algorithm": "HS256"}, "secret"),
    ({"secret": SECRET}, "algorithm"),
    ({"secret": SECRET, "algorithm": "none"}, "algorithm"),
    ({"secret": SECRET, "algorithm": "HS999"}, "algorithm"),
    ({"secret": "", "algorithm": "HS256"}, "secret: must not be empty"),
    ({"secret": "short-secret", "algorithm": "HS256"}, "secret: The HMAC key is 12 bytes"),
    ({"secret": RS256["secret"], "algorithm": "HS256"}, "secret: not a valid secret for HS256"),
    ({"secret": "not a pem", "algorithm": "RS256"}, "secret: not a valid PEM public key"),
    ({"secret": pem_private(RSA_KEY), "algorithm": "RS256"}, "not a private key"),
    ({"secret": pem_public(SHORT_RSA), "algorithm": "RS256"}, "secret: The RSA key is 1024 bits"),
    ({"secret": RS256["secret"], "algorithm": "ES256"}, "secret: not a valid PEM public key"),
    ({**HS256, "leeway": -1}, "leeway"),
    ({**HS256, "header": 5}, "header"),
    ({**HS256, "audiences": "api"}, "audiences"),
]


@pytest.mark.parametrize(("conf", "message"), BAD_CONFIGS)
def test_bad_config_fails_without_showing_the_key(
    tester: PluginTester, conf: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfError, match=message) as caught:
        tester.prepare([(NAME, conf)])
    secret = conf.get("secret")
    if secret:
        assert not key_material_in(str(caught.value), secret)


def key_material_in(text: str, secret: str) -> bool:
    """Whether any piece of the secret (a PEM's body lines included) is in ``text``."""
    pieces = [line for line in secret.splitlines() if len(line) > 8 and "-----" not in line]
    return any(piece in text for piece in [secret, *pieces])


def test_conf_repr_hides_the_key(tester: PluginTester) -> None:
    chain = tester.prepare([(NAME, HS256)])
    assert SECRET not in repr(chain)
    assert SECRET not in repr(msgspec.json.decode(json.dumps(HS256), type=JwtAuthConfig))


def test_pyjwt_is_imported_on_first_use_only() -> None:
    script = (
        "import sys\n"
        "from runner.bundled_plugins.jwt_auth import JwtAuth\n"
        "print('jwt' in sys.modules, 'cryptography' in sys.modules)\n"
        f"JwtAuth().parse_conf({json.dumps(json.dumps(HS256))})\n"
        "print('jwt' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


# ----------------------------------------------------------------------- real runner


def test_real_runner_never_logs_the_key_or_the_token(runner_factory: RunnerFactory) -> None:
    running = runner_factory(config={"logging": {"level": "DEBUG"}})
    good = token({"sub": "alice", "exp": int(time.time()) + 60})
    forged = token({"sub": "mallory"}, key="forged-secret-that-is-32-bytes-long!!")
    private_pem = pem_private(OTHER_RSA_KEY)

    async def scenario() -> None:
        async with await running.client() as apisix:
            tok = await apisix.prepare_conf([(NAME, json.dumps(HS256))])
            ok = await apisix.call(tok, request_with(f"Bearer {good}"))
            assert isinstance(ok.action, Rewrite)
            assert ("x-jwt-sub", "alice") in ok.action.headers
            bad = await apisix.call(tok, request_with(f"Bearer {forged}"))
            assert isinstance(bad.action, Stop) and bad.action.status == 401
            for conf in (
                {"secret": private_pem, "algorithm": "RS256"},
                {"secret": SECRET, "algorithm": "RS256"},
                {"secret": SECRET, "algorithm": "none"},
                {"secret": SECRET[:20], "algorithm": "HS256"},
            ):
                with pytest.raises(RunnerError):
                    await apisix.prepare_conf([(NAME, json.dumps(conf))])

    asyncio.run(asyncio.wait_for(scenario(), 20))
    log = running.log_text()
    # The log did get the interesting lines, so their content is what is checked.
    assert "JWT rejected: signature verification failed" in log
    assert log.count("rejected: conf[0] plugin 'jwt-auth': secret") == 3
    for secret in (SECRET, SECRET[:20], private_pem, good, forged):
        assert not key_material_in(log, secret)

"""The 100-header cap, through nginx and an ext-plugin client that reads the
headers as APISIX does (ngx.req.get_headers(), 100 at most, the rest dropped
unseen while nginx forwards them all): no claim header gets past jwt-auth."""

from __future__ import annotations

import jwt

from bench.gateway import rig

from .conftest import JWT_SECRET, request

TOKEN = jwt.encode({"sub": "alice", "role": "user"}, JWT_SECRET, algorithm="HS256")
AUTH = [("Authorization", f"Bearer {TOKEN}")]


def test_a_claim_header_after_the_hundredth_is_refused(gateway: rig.Rig) -> None:
    padding = [(f"X-Pad-{n}", "x") for n in range(98)]
    reply = request(gateway, "/jwt", headers=[*AUTH, *padding, ("X-JWT-Role", "admin")])
    assert reply.status == 431, (reply.status, reply.body)
    assert b"too many headers" in reply.body


def test_a_valid_token_with_few_headers_passes_with_its_claims(gateway: rig.Rig) -> None:
    echo = request(gateway, "/jwt", headers=[*AUTH, ("X-JWT-Role", "admin")]).echo()
    assert echo["header_map"]["x-jwt-role"] == ["user"]  # the token's claim, not the client's
    assert echo["header_map"]["x-jwt-sub"] == ["alice"]


def test_underscore_spellings_of_claim_headers_are_stripped(gateway: rig.Rig) -> None:
    spoofed = [("X_JWT_Role", "admin"), ("x-jwt_admin", "1"), ("X_Jwt_Sub", "mallory")]
    echo = request(gateway, "/jwt", headers=[*AUTH, *spoofed]).echo()
    names = {name.lower() for name, _ in echo["headers"]}
    assert not names & {"x_jwt_role", "x-jwt_admin", "x_jwt_sub"}, names
    assert echo["header_map"]["x-jwt-sub"] == ["alice"]

"""A provider served by gunicorn, secured by a real OAuth2 server (oidc-provider on loopback), in both modes.

Tokens come from the server's client-credentials grant; the provider checks them as JWTs against the
issuer's JWKS (RFC 9068) or as opaque tokens by RFC 7662 introspection.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.oidc.fixture import (
    CALLER,
    HELLO_SCOPE,
    JWT_RESOURCE,
    OPAQUE_RESOURCE,
    OTHER_CALLER,
    OTHER_SCOPE,
    RESOURCE_SERVER,
    SHORT_LIVED,
)

from .support import APTK, Api


def urn(client_id: str) -> str:
    return f"urn:globus:auth:identity:{client_id}"


@pytest.fixture(scope="module")
def jwt_mode(start_server_module, oidc_server):
    return start_server_module(env={
        "APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": oidc_server.issuer, "APTK_AUTH_AUDIENCE": JWT_RESOURCE,
        "APTK_AUTH_LEEWAY": "1",  # clock-skew allowance, short so that expiry is seen within the test
    })


@pytest.fixture(scope="module")
def opaque_mode(start_server_module, oidc_server):
    return start_server_module(env={
        "APTK_AUTH": "introspection",
        "APTK_AUTH_ISSUER": oidc_server.issuer,
        "APTK_AUTH_AUDIENCE": OPAQUE_RESOURCE,
        "APTK_AUTH_CLIENT_ID": oidc_server.client_id(RESOURCE_SERVER),
        "APTK_AUTH_CLIENT_SECRET": oidc_server.client_secret(RESOURCE_SERVER),
    })


@pytest.fixture(scope="module")
def start_server_module(tmp_path_factory):
    from .support import Server

    servers = []

    def start(env):
        base = tmp_path_factory.mktemp("aptk-oauth")
        server = Server(base / "data", base, workers=2, env=env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def rejected(response, fragment: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "UnauthorizedRequest"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert fragment in response.json()["description"], response.json()["description"]


def forge(header: dict, claims: dict, sign) -> str:
    def b64(data: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    signing_input = b64(header) + b"." + b64(claims)
    return (signing_input + b"." + base64.urlsafe_b64encode(sign(signing_input)).rstrip(b"=")).decode()


class TestJWT:
    def test_valid_token_runs_and_identity_and_groups_reach_authorization(self, jwt_mode, oidc_server):
        caller, other = oidc_server.client(CALLER), oidc_server.client(OTHER_CALLER)
        me = Api(jwt_mode.hello, oidc_server.token(CALLER, JWT_RESOURCE))
        them = Api(jwt_mode.hello, oidc_server.token(OTHER_CALLER, JWT_RESOURCE))
        action = me.run({"echo_string": "hi"}, monitor_by=[f"urn:globus:groups:id:{other.groups[0]}"]).json()
        assert action["creator_id"] == urn(caller.client_id)
        assert them.get(f"/{action['action_id']}/status").status_code == 200  # via its group
        assert them.post(f"/{action['action_id']}/cancel").status_code == 403  # monitor, not manage
        managed = me.run({"echo_string": "hi"}, manage_by=[urn(other.client_id)]).json()
        them.wait_for(managed["action_id"], ["SUCCEEDED"], timeout=10)
        assert them.post(f"/{managed['action_id']}/release").status_code == 200

    def test_missing_and_malformed_headers(self, jwt_mode):
        rejected(Api(jwt_mode.hello, None).get("/actions"), "Missing")
        rejected(Api(jwt_mode.hello, None).get("/actions", headers={"Authorization": "Token abc"}), "Malformed")

    def test_expired_token(self, jwt_mode, oidc_server):
        token = oidc_server.token(SHORT_LIVED, JWT_RESOURCE)
        assert Api(jwt_mode.hello, token).get("/actions").status_code == 200
        time.sleep(3.5)  # lifetime 2 s + leeway 1 s
        rejected(Api(jwt_mode.hello, token).get("/actions"), "expired")

    def test_token_for_another_audience(self, jwt_mode, oidc_server):
        rejected(Api(jwt_mode.hello, oidc_server.token(CALLER, OPAQUE_RESOURCE)).get("/actions"), "")

    def test_token_without_the_scope(self, jwt_mode, oidc_server):
        token = oidc_server.token(CALLER, JWT_RESOURCE, scope=OTHER_SCOPE)
        response = Api(jwt_mode.hello, token).get("/actions")
        rejected(response, "scope")
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]

    def test_tampered_signature(self, jwt_mode, oidc_server):
        header, payload, signature = oidc_server.token(CALLER, JWT_RESOURCE).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = oidc_server.client_id(OTHER_CALLER)
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        rejected(Api(jwt_mode.hello, f"{header}.{payload}.{signature}").get("/actions"), "not valid")

    def test_alg_none(self, jwt_mode, oidc_server):
        claims = jwt.decode(oidc_server.token(CALLER, JWT_RESOURCE), options={"verify_signature": False})
        header = {"alg": "none", "typ": "at+jwt"}
        token = forge(header, claims, lambda data: b"")
        rejected(Api(jwt_mode.hello, token).get("/actions"), "'none'")

    def test_hs256_signed_with_the_public_key(self, jwt_mode, oidc_server):
        import hashlib
        import hmac

        real = oidc_server.token(CALLER, JWT_RESOURCE)
        kid = jwt.get_unverified_header(real)["kid"]
        claims = jwt.decode(real, options={"verify_signature": False})
        public = jwt.PyJWKClient(oidc_server.jwks_uri).get_signing_key(kid).key
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        token = forge({"alg": "HS256", "typ": "at+jwt", "kid": kid}, claims,
                      lambda data: hmac.new(pem, data, hashlib.sha256).digest())
        rejected(Api(jwt_mode.hello, token).get("/actions"), "'HS256'")

    def test_token_from_another_issuer(self, jwt_mode, other_oidc_server):
        rejected(Api(jwt_mode.hello, other_oidc_server.token(CALLER, JWT_RESOURCE)).get("/actions"), "")

    def test_token_signed_by_an_unknown_key(self, jwt_mode, oidc_server):
        claims = jwt.decode(oidc_server.token(CALLER, JWT_RESOURCE), options={"verify_signature": False})
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "unknown", "typ": "at+jwt"})
        rejected(Api(jwt_mode.hello, token).get("/actions"), "not signed by a key of the issuer")

    def test_aptk_token_fetches_a_client_credentials_token(self, jwt_mode, oidc_server):
        caller = oidc_server.client(CALLER)
        result = subprocess.run(
            [APTK, "token", "--client-id", caller.client_id, "--issuer", oidc_server.issuer,
             "--scope", HELLO_SCOPE, "--resource", JWT_RESOURCE],
            env={"APTK_CLIENT_SECRET": caller.client_secret, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert Api(jwt_mode.hello, result.stdout.strip()).run({"echo_string": "x"}).status_code == 202


class TestOpaque:
    def test_valid_token_runs_with_identity_and_groups(self, opaque_mode, oidc_server):
        other = oidc_server.client(OTHER_CALLER)
        me = Api(opaque_mode.hello, oidc_server.token(CALLER, OPAQUE_RESOURCE))
        them = Api(opaque_mode.hello, oidc_server.token(OTHER_CALLER, OPAQUE_RESOURCE))
        action = me.run({"echo_string": "hi"}, manage_by=[f"urn:globus:groups:id:{other.groups[1]}"]).json()
        assert action["creator_id"] == urn(oidc_server.client_id(CALLER))
        assert them.post(f"/{action['action_id']}/cancel").status_code in (200, 409)

    def test_inactive_token(self, opaque_mode, oidc_server):
        token = oidc_server.token(CALLER, OPAQUE_RESOURCE)
        oidc_server.revoke(token, client=CALLER)
        rejected(Api(opaque_mode.hello, token).get("/actions"), "not active")

    def test_expired_token(self, opaque_mode, oidc_server):
        token = oidc_server.token(SHORT_LIVED, OPAQUE_RESOURCE)
        time.sleep(2.5)
        rejected(Api(opaque_mode.hello, token).get("/actions"), "not active")

    def test_token_for_another_audience(self, opaque_mode, oidc_server):
        rejected(Api(opaque_mode.hello, oidc_server.token(CALLER, None)).get("/actions"), "another audience")

    def test_token_without_the_scope(self, opaque_mode, oidc_server):
        rejected(Api(opaque_mode.hello, oidc_server.token(CALLER, OPAQUE_RESOURCE, scope=OTHER_SCOPE)).get("/actions"),
                 "scope")

    def test_garbage_token(self, opaque_mode):
        rejected(Api(opaque_mode.hello, "not-a-token").get("/actions"), "not active")

    def test_secret_never_reaches_the_log(self, opaque_mode, oidc_server):
        Api(opaque_mode.hello, "not-a-token").get("/actions")
        assert oidc_server.client_secret(RESOURCE_SERVER) not in opaque_mode.stderr()


def test_authorization_server_down_is_a_503_not_a_500(start_server_module, oidc_server):
    from .support import free_port

    server = start_server_module(env={
        "APTK_AUTH": "introspection", "APTK_AUTH_INTROSPECTION_URL": f"http://127.0.0.1:{free_port()}/introspect",
        "APTK_AUTH_CLIENT_ID": "x", "APTK_AUTH_CLIENT_SECRET": "y", "APTK_AUTH_TIMEOUT": "1",
    })
    started = time.monotonic()
    response = Api(server.hello, "some-token").get("/actions")
    assert response.status_code == 503
    assert response.json()["code"] == "ServiceUnavailable"
    assert time.monotonic() - started < 3


def test_groups_from_the_token_reach_runnable_by(oidc_server, tmp_path):
    from toolkit import ActionProvider
    from toolkit.auth import JWTVerifier
    from toolkit.testing import TestClient
    from toolkit.server import create_app

    group = oidc_server.client(CALLER).groups[0]
    provider = ActionProvider(title="Members only", input_schema={"type": "object"}, synchronous=True,
                              globus_auth_scope=HELLO_SCOPE, runnable_by=[f"urn:globus:groups:id:{group}"])
    provider.run(lambda body, ctx: {"ok": True})
    verifier = JWTVerifier(issuer=oidc_server.issuer, audience=JWT_RESOURCE)
    app = create_app({"APTK_DATA_DIR": str(tmp_path)}, providers=[("/members", provider)], verifier=verifier)
    member = TestClient(app, "/members", oidc_server.token(CALLER, JWT_RESOURCE))
    stranger = TestClient(app, "/members", oidc_server.token(OTHER_CALLER, JWT_RESOURCE))
    assert member.run({})["details"] == {"ok": True}
    with pytest.raises(Exception) as caught:
        stranger.run({})
    assert caught.value.status == 403

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


def insufficient_scope(response) -> None:
    """RFC 6750 section 3.1: 403, error insufficient_scope, naming the scope; the description says how to get it."""
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "ForbiddenRequest"
    assert response.headers["WWW-Authenticate"].startswith(
        f'Bearer error="insufficient_scope", scope="{HELLO_SCOPE}"'
    )
    assert f"aptk token --scope {HELLO_SCOPE}" in response.json()["description"]


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
        # RFC 6750 section 3.1: a request that tried no bearer token gets a bare challenge, no error code.
        missing = Api(jwt_mode.hello, None).get("/actions")
        rejected(missing, "Missing")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        other_scheme = Api(jwt_mode.hello, None).get("/actions", headers={"Authorization": "Basic YTpi"})
        rejected(other_scheme, "another scheme")
        assert other_scheme.headers["WWW-Authenticate"] == "Bearer"
        malformed = Api(jwt_mode.hello, None).get("/actions", headers={"Authorization": "Bearer a b"})
        rejected(malformed, "Malformed")
        assert malformed.headers["WWW-Authenticate"].startswith('Bearer error="invalid_request"')

    def test_expired_token(self, jwt_mode, oidc_server):
        token = oidc_server.token(SHORT_LIVED, JWT_RESOURCE)
        assert Api(jwt_mode.hello, token).get("/actions").status_code == 200
        time.sleep(3.5)  # lifetime 2 s + leeway 1 s
        rejected(Api(jwt_mode.hello, token).get("/actions"), "expired")

    def test_token_for_another_audience(self, jwt_mode, oidc_server):
        rejected(Api(jwt_mode.hello, oidc_server.token(CALLER, OPAQUE_RESOURCE)).get("/actions"), "")

    def test_token_without_the_scope(self, jwt_mode, oidc_server):
        token = oidc_server.token(CALLER, JWT_RESOURCE, scope=OTHER_SCOPE)
        insufficient_scope(Api(jwt_mode.hello, token).get("/actions"))

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
        insufficient_scope(Api(opaque_mode.hello, oidc_server.token(CALLER, OPAQUE_RESOURCE, scope=OTHER_SCOPE))
                           .get("/actions"))

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


# --- revocation: how long an introspection answer is trusted ---------------------------------------------------


def opaque_env(oidc_server, **extra):
    return {
        "APTK_AUTH": "introspection", "APTK_AUTH_ISSUER": oidc_server.issuer, "APTK_AUTH_AUDIENCE": OPAQUE_RESOURCE,
        "APTK_AUTH_CLIENT_ID": oidc_server.client_id(RESOURCE_SERVER),
        "APTK_AUTH_CLIENT_SECRET": oidc_server.client_secret(RESOURCE_SERVER), **extra,
    }


def refused_everywhere_after(api: Api, cache_seconds: float, slack: float = 1.5) -> None:
    """Call for ``cache_seconds + slack`` after a revocation (a revoked token may be accepted meanwhile), then
    check that every worker refuses it: each call is a new connection, so calls land on any worker."""
    started = time.monotonic()
    while time.monotonic() - started < cache_seconds + slack:
        assert api.get("/actions").status_code in {200, 401}
        time.sleep(0.2)
    for _ in range(8):
        rejected(api.get("/actions"), "not active")


def test_a_revoked_token_is_refused_within_aptk_auth_cache_seconds(start_server_module, oidc_server):
    server = start_server_module(env=opaque_env(oidc_server, APTK_AUTH_CACHE_SECONDS="2"))
    token = oidc_server.token(CALLER, OPAQUE_RESOURCE)
    api = Api(server.hello, token)
    assert {api.get("/actions").status_code for _ in range(6)} == {200}  # the answer is cached by some workers
    oidc_server.revoke(token, client=CALLER)
    refused_everywhere_after(api, cache_seconds=2)


@pytest.mark.slow
def test_a_revoked_token_is_refused_within_the_default_cache_time(opaque_mode, oidc_server):
    from toolkit.auth.introspection import DEFAULT_CACHE_SECONDS

    token = oidc_server.token(CALLER, OPAQUE_RESOURCE)
    api = Api(opaque_mode.hello, token)
    assert {api.get("/actions").status_code for _ in range(6)} == {200}
    oidc_server.revoke(token, client=CALLER)
    refused_everywhere_after(api, cache_seconds=DEFAULT_CACHE_SECONDS)


# --- garbage tokens must not take an introspection-mode provider down ------------------------------------------

GARBAGE = "eyJhbGciOiJub25lIn0.e30."  # JWT-shaped: some authorization servers answer 400 unsupported_token_type


def test_garbage_tokens_the_authorization_server_refuses_never_take_the_provider_down(start_server_module):
    """Two attackers send garbage tokens, which the authorization server answers with a 4xx, while good callers
    (a fresh token each request, so nothing is cached) keep asking: every good request is served."""
    import collections
    import threading
    import uuid

    from tests.toolkit.auth_servers import Recorder, http_server

    def introspect(request):
        token = request["form"]["token"]
        if token.startswith("eyJ"):
            return 400, {"error": "unsupported_token_type"}
        if token.startswith("unparsable-"):
            return 401, {"error": "invalid_token"}
        if token.startswith("good-"):
            return 200, {"active": True, "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, token)),
                         "scope": HELLO_SCOPE, "exp": int(time.time()) + 600}
        return 200, {"active": False}

    recorder = Recorder()
    recorder.answer("POST", "/introspect", introspect)
    with http_server(recorder) as url:
        server = start_server_module(env={
            "APTK_AUTH": "introspection", "APTK_AUTH_INTROSPECTION_URL": f"{url}/introspect",
            "APTK_AUTH_CLIENT_ID": "provider", "APTK_AUTH_CLIENT_SECRET": "provider-secret",
        })
        stop = time.monotonic() + 4
        seen = {"garbage": collections.Counter(), "good": collections.Counter()}

        def attack(prefix):
            n = 0
            while time.monotonic() < stop:
                n += 1
                token = GARBAGE if prefix == "eyJ" else f"unparsable-{n}"
                seen["garbage"][Api(server.hello, token).get("/actions").status_code] += 1
                time.sleep(0.25)

        def good():
            while time.monotonic() < stop:
                seen["good"][Api(server.hello, f"good-{uuid.uuid4()}").get("/actions").status_code] += 1
                time.sleep(0.05)

        threads = [threading.Thread(target=attack, args=(p,)) for p in ("eyJ", "unparsable")]
        threads.append(threading.Thread(target=good))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert set(seen["garbage"]) == {401}, seen
    assert set(seen["good"]) == {200} and seen["good"][200] >= 10, seen


# --- principals: callers whose ids are not UUIDs ---------------------------------------------------------------

FLOWS_CLIENT = "flows-client"  # a client id that is not a UUID
BATCH_RUNNER = "Batch.Runner"  # a client whose introspection answers carry no `sub`
LAB_GROUP = "/lab/members"  # a group name that is not a UUID


@pytest.fixture(scope="module")
def named(start_server_module):
    """An authorization server whose clients have names, not UUIDs; providers in both token modes."""
    from tests.oidc.fixture import start_oidc_server

    clients = [
        {"name": RESOURCE_SERVER, "client_id": "a4c8e2f6-9b1d-4f3a-8c5e-0b2d4f6a8c04",
         "client_secret": "resource-server-secret-2e6a8c4f", "introspect": True, "grant_types": []},
        {"name": CALLER, "client_id": "5d3c6a62-6f1c-4a3e-9d0b-2f4f7c1e8a01", "client_secret": "caller-secret-9f1b7c3e"},
        {"name": "flows", "client_id": FLOWS_CLIENT, "client_secret": "flows-secret-3c5e7a9b", "groups": [LAB_GROUP]},
        {"name": "batch", "client_id": BATCH_RUNNER, "client_secret": "batch-secret-8d6f4b2a", "omit_sub": True},
    ]
    oidc = start_oidc_server({"clients": clients})
    try:
        servers = {
            "jwt": start_server_module(env={"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": oidc.issuer,
                                            "APTK_AUTH_AUDIENCE": JWT_RESOURCE}),
            "introspection": start_server_module(env=opaque_env(oidc)),
        }
        yield oidc, servers
    finally:
        oidc.stop()


@pytest.mark.parametrize("mode", ["jwt", "introspection"])
def test_a_client_whose_id_is_not_a_uuid_can_be_granted_rights(named, mode):
    oidc, servers = named
    resource = JWT_RESOURCE if mode == "jwt" else OPAQUE_RESOURCE
    flows = Api(servers[mode].hello, oidc.token("flows", resource))
    caller = Api(servers[mode].hello, oidc.token(CALLER, resource))

    own = flows.run({"echo_string": "mine"})
    assert own.status_code == 202, own.text
    assert own.json()["creator_id"] == f"urn:aptk:subject:{FLOWS_CLIENT}"

    private = caller.run({"echo_string": "private"}).json()
    assert flows.get(f"/{private['action_id']}/status").status_code == 403

    watched = caller.run({"echo_string": "watched", "sleep_time": 30},
                         monitor_by=[f"urn:aptk:subject:{FLOWS_CLIENT}"]).json()
    assert watched["monitor_by"] == [f"urn:aptk:subject:{FLOWS_CLIENT}"]
    assert flows.get(f"/{watched['action_id']}/status").status_code == 200
    assert flows.post(f"/{watched['action_id']}/cancel").status_code == 403  # monitor, not manage
    assert caller.post(f"/{watched['action_id']}/cancel").status_code == 200

    managed = caller.run({"echo_string": "managed"}, manage_by=[f"urn:aptk:group:{LAB_GROUP}"]).json()
    flows.wait_for(managed["action_id"], ["SUCCEEDED"], timeout=10)
    assert flows.post(f"/{managed['action_id']}/release").status_code == 200


def test_an_introspection_answer_without_sub_names_the_client(named):
    oidc, servers = named
    token = oidc.token("batch", OPAQUE_RESOURCE)
    assert "sub" not in oidc.introspect(token) and oidc.introspect(token)["client_id"] == BATCH_RUNNER
    batch = Api(servers["introspection"].hello, token)
    caller = Api(servers["introspection"].hello, oidc.token(CALLER, OPAQUE_RESOURCE))

    own = batch.run({"echo_string": "mine"})
    assert own.status_code == 202, own.text
    assert own.json()["creator_id"] == f"urn:aptk:subject:{BATCH_RUNNER}"
    shared = caller.run({"echo_string": "shared"}, monitor_by=[f"urn:aptk:subject:{BATCH_RUNNER}"]).json()
    assert batch.get(f"/{shared['action_id']}/status").status_code == 200


def test_principals_are_normalised_or_refused_over_the_wire(shared_server, people):
    from .conftest import IDS

    alice, bob = Api(shared_server.hello, people.alice.token), Api(shared_server.hello, people.bob.token)
    shouted = f"URN:GLOBUS:AUTH:IDENTITY:{IDS['bob'].upper()}"
    action = alice.run({"echo_string": "hi"}, monitor_by=[shouted]).json()
    assert action["monitor_by"] == [people.bob.urn]
    assert bob.get(f"/{action['action_id']}/status").status_code == 200
    for never_matches, fragment in [(f"{people.bob.urn}\n", "nothing else"),
                                    ("urn:globus:auth:identity:flows-client", "needs a UUID"),
                                    ("urn:aptk:subject:Lab Members", "percent-encode ' '")]:
        response = alice.run({"echo_string": "hi"}, monitor_by=[never_matches])
        assert response.status_code == 400, response.text
        assert fragment in response.json()["description"] and "monitor_by.0" in response.json()["description"]


# --- dev tokens: the errors a new author meets say what to do --------------------------------------------------


def test_a_dev_token_signed_with_another_data_dirs_key_says_so(shared_server, tmp_path):
    from toolkit.auth import load_or_create_dev_key

    elsewhere = tmp_path / "another-data-dir"
    load_or_create_dev_key(elsewhere)  # as `aptk serve --data-dir another-data-dir` once did
    token = subprocess.run(
        [APTK, "token", "--data-dir", str(elsewhere), "--identity", "6a3b4d5e-0000-4000-8000-000000000001"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    response = Api(shared_server.hello, token).get("/actions")
    rejected(response, "signed by another key")
    assert "--data-dir" in response.json()["description"]


def test_a_dev_token_without_the_scope_says_how_to_get_one(shared_server, people):
    response = Api(shared_server.hello, people.alice_without_scope).get("/actions")
    insufficient_scope(response)
    assert "--identity" in response.json()["description"]

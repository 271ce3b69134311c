"""IntrospectionVerifier and GlobusAuthVerifier against introspection endpoints served over HTTP."""

import base64
import json
import logging
import time
import uuid
from pathlib import Path

import pytest

from tests.toolkit.auth_servers import Recorder, closed_port_url, http_server
from toolkit.auth import GlobusAuthVerifier, IntrospectionVerifier
from toolkit.errors import ServiceUnavailable, UnauthorizedRequest

RECORDED = Path(__file__).parent / "recorded"
SECRET = "s3cr3t-client-value"


def recorded(name):
    return json.loads((RECORDED / name).read_text())


def basic(request):
    header = request["headers"].get("Authorization", "")
    return base64.b64decode(header.removeprefix("Basic ")).decode() if header.startswith("Basic ") else None


class AuthorizationServer:
    def __init__(self, recorder, url):
        self.recorder, self.url = recorder, url
        self.tokens = {}
        recorder.answer("POST", "/introspect", self._introspect)

    def _introspect(self, request):
        if basic(request) != f"provider:{SECRET}":
            return 401, {"error": "invalid_client"}
        return 200, self.tokens.get(request["form"].get("token"), {"active": False})

    def issue(self, **claims):
        token = uuid.uuid4().hex
        self.tokens[token] = {"active": True, "sub": str(uuid.uuid4()), "scope": "urn:aptk:scope:hello",
                              "aud": ["https://provider"], "exp": int(time.time()) + 600, **claims}
        return token


@pytest.fixture
def server():
    recorder = Recorder()
    with http_server(recorder) as url:
        yield AuthorizationServer(recorder, url)


@pytest.fixture
def verifier(server):
    return IntrospectionVerifier(client_id="provider", client_secret=SECRET,
                                 introspection_endpoint=f"{server.url}/introspect", audience="https://provider")


def test_active_token_gives_identity_groups_and_scope(server, verifier):
    group = str(uuid.uuid4())
    token = server.issue(groups=[group])
    identity = verifier.verify(token)
    assert identity.id == f"urn:globus:auth:identity:{server.tokens[token]['sub']}"
    assert f"urn:globus:groups:id:{group}" in identity.principals
    assert identity.scopes == {"urn:aptk:scope:hello"}


def test_answers_are_cached_by_token(server, verifier):
    token = server.issue()
    for _ in range(5):
        verifier.verify(token)
    assert server.recorder.count("/introspect") == 1


def test_cache_never_outlives_the_token(server):
    clock = [time.time()]
    verifier = IntrospectionVerifier(client_id="provider", client_secret=SECRET,
                                     introspection_endpoint=f"{server.url}/introspect", clock=lambda: clock[0])
    token = server.issue(exp=int(clock[0]) + 60)
    verifier.verify(token)
    server.tokens[token]["active"] = False  # revoked; the cache may still answer until exp
    clock[0] += 61
    with pytest.raises(UnauthorizedRequest):
        verifier.verify(token)
    assert server.recorder.count("/introspect") == 2


def test_inactive_answers_are_cached_briefly(server):
    clock = [time.time()]
    verifier = IntrospectionVerifier(client_id="provider", client_secret=SECRET, inactive_cache_seconds=10,
                                     introspection_endpoint=f"{server.url}/introspect", clock=lambda: clock[0])
    for _ in range(3):
        with pytest.raises(UnauthorizedRequest, match="not active"):
            verifier.verify("unknown-token")
    assert server.recorder.count("/introspect") == 1
    clock[0] += 11
    with pytest.raises(UnauthorizedRequest):
        verifier.verify("unknown-token")
    assert server.recorder.count("/introspect") == 2


def test_cache_is_bounded(server):
    verifier = IntrospectionVerifier(client_id="provider", client_secret=SECRET, cache_size=3,
                                     introspection_endpoint=f"{server.url}/introspect")
    tokens = [server.issue() for _ in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert len(verifier._cache) == 3


@pytest.mark.parametrize(
    "claims, message",
    [({"aud": ["https://other"]}, "another audience"), ({"exp": int(time.time()) - 10}, "expired")],
)
def test_claims_are_checked(server, verifier, claims, message):
    with pytest.raises(UnauthorizedRequest, match=message):
        verifier.verify(server.issue(**claims))


def test_refused_client_credentials_are_a_503_and_the_secret_never_shows(server, caplog):
    caplog.set_level(logging.DEBUG)
    verifier = IntrospectionVerifier(client_id="provider", client_secret="wrong-secret-value",
                                     introspection_endpoint=f"{server.url}/introspect")
    with pytest.raises(ServiceUnavailable) as caught:
        verifier.verify(server.issue())
    assert "client credentials" in caught.value.description
    assert "wrong-secret-value" not in caught.value.description + caplog.text + repr(verifier)


def test_unreachable_server_is_a_fast_503():
    verifier = IntrospectionVerifier(client_id="provider", client_secret=SECRET,
                                     introspection_endpoint=f"{closed_port_url()}/introspect", timeout=1)
    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(ServiceUnavailable):
            verifier.verify("some-token")
    assert time.monotonic() - started < 2


def test_endpoint_is_discovered_from_the_issuer(server):
    server.recorder.answer("GET", "/.well-known/openid-configuration",
                           lambda r: (200, {"issuer": server.url, "introspection_endpoint": f"{server.url}/introspect"}))
    verifier = IntrospectionVerifier(client_id="provider", client_secret=SECRET, issuer=server.url)
    assert server.recorder.calls == []  # nothing fetched at construction
    assert verifier.verify(server.issue(iss=server.url)).scopes == {"urn:aptk:scope:hello"}


class TestGlobusAuth:
    @pytest.fixture
    def globus(self):
        recorder = Recorder()
        state = {"introspect": recorded("globus_introspect.json")}

        def introspect(request):
            if basic(request) != f"5e8b1c5a-2f4a-4b7e-9a34-2d1f7e6c9b10:{SECRET}":
                return 401, {"error": "invalid_client"}
            assert request["form"]["include"] == "identity_set"
            return 200, state["introspect"] if request["form"]["token"] == "user-token" else {"active": False}

        def token(request):
            assert request["form"]["grant_type"] == "urn:globus:auth:grant_type:dependent_token"
            return 200, recorded("globus_dependent_tokens.json")

        def groups(request):
            assert request["headers"]["Authorization"] == "Bearer AgDependentGroupsTokenValue"
            return 200, recorded("globus_my_groups.json")

        recorder.answer("POST", "/v2/oauth2/token/introspect", introspect)
        recorder.answer("POST", "/v2/oauth2/token", token)
        recorder.answer("GET", "/v2/groups/my_groups", groups)
        with http_server(recorder) as url:
            verifier = GlobusAuthVerifier(client_id="5e8b1c5a-2f4a-4b7e-9a34-2d1f7e6c9b10", client_secret=SECRET,
                                          auth_url=url, groups_url=url)
            yield verifier, recorder

    def test_identity_set_and_groups_become_principals(self, globus):
        verifier, _ = globus
        identity = verifier.verify("user-token")
        assert identity.id == "urn:globus:auth:identity:b3db7e59-a6f1-4947-95c2-59d6b7a70f8c"
        assert {
            "urn:globus:auth:identity:e1b8a0f2-76c1-4f0b-b3c2-8c2f6d2a9e41",
            "urn:globus:groups:id:c4a5d6e7-1b2c-4d3e-8f90-a1b2c3d4e5f6",
            "urn:globus:groups:id:0f1e2d3c-4b5a-4968-8776-655443322110",
            "all_authenticated_users",
        } <= identity.principals
        assert identity.username == "ada@example.org"

    def test_dependent_tokens_are_cached_until_they_expire(self, globus):
        verifier, recorder = globus
        verifier.verify("user-token")
        tokens = verifier.dependent_tokens("user-token")
        assert tokens["transfer.api.globus.org"]["access_token"] == "AgDependentTransferTokenValue"
        verifier.dependent_tokens("user-token")
        assert recorder.count("/v2/oauth2/token") == 1

    def test_token_for_another_resource_server_is_refused(self, globus):
        verifier, _ = globus
        verifier.audience = {"someone-else"}
        with pytest.raises(UnauthorizedRequest, match="another audience"):
            verifier.verify("user-token")

    def test_inactive_token_is_refused(self, globus):
        verifier, _ = globus
        with pytest.raises(UnauthorizedRequest, match="not active"):
            verifier.verify("stale-token")


# --- what counts as an outage ----------------------------------------------------------------------------------

GARBAGE = "eyJhbGciOiJub25lIn0.e30."


@pytest.mark.parametrize(
    "status, body",
    [
        (400, {"error": "unsupported_token_type"}),  # what some servers say to a JWT-shaped garbage token
        (400, {"error": "invalid_request", "error_description": "malformed token"}),
        (401, {"error": "invalid_token"}),
        (401, None),  # a 401 about the token, without a JSON body
        (403, {"error": "access_denied"}),
        (413, None),
    ],
)
def test_a_4xx_about_a_token_is_that_tokens_401_and_never_opens_the_breaker(server, verifier, status, body):
    good = server.issue()

    def introspect(request):
        if request["form"]["token"] == GARBAGE:
            return status, body
        return 200, server.tokens.get(request["form"]["token"], {"active": False})

    server.recorder.answer("POST", "/introspect", introspect)
    with pytest.raises(UnauthorizedRequest, match=f"refused to introspect the token \\(HTTP {status}"):
        verifier.verify(GARBAGE)
    # Everybody else is still served at once: the breaker did not open.
    assert verifier.verify(good).scopes == {"urn:aptk:scope:hello"}
    # The refusal is remembered briefly like an inactive answer: a flood of the same garbage is one call.
    for _ in range(5):
        with pytest.raises(UnauthorizedRequest):
            verifier.verify(GARBAGE)
    assert [c[2]["form"]["token"] for c in server.recorder.calls].count(GARBAGE) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_is_an_outage_and_opens_the_breaker(server, verifier, status):
    good = server.issue()
    server.recorder.answer("POST", "/introspect", lambda r: (status, {"error": "server_error"}))
    with pytest.raises(ServiceUnavailable):
        verifier.verify(GARBAGE)
    server.recorder.answer("POST", "/introspect", lambda r: (200, server.tokens[good]))
    with pytest.raises(ServiceUnavailable, match="unavailable"):  # failing fast, without asking
        verifier.verify(good)
    assert server.recorder.count("/introspect") == 1


@pytest.mark.parametrize("status", [404, 405, 429])
def test_an_answer_about_the_endpoint_is_a_503_that_leaves_the_breaker_closed(server, verifier, status):
    good = server.issue()
    server.recorder.answer("POST", "/introspect", lambda r: (status, None))
    with pytest.raises(ServiceUnavailable, match=f"HTTP {status}"):
        verifier.verify(good)
    server.recorder.answer("POST", "/introspect", lambda r: (200, server.tokens[good]))
    assert verifier.verify(good).scopes == {"urn:aptk:scope:hello"}


def test_refused_client_credentials_leave_the_breaker_closed(server):
    verifier = IntrospectionVerifier(client_id="provider", client_secret="wrong-secret-value",
                                     introspection_endpoint=f"{server.url}/introspect")
    with pytest.raises(ServiceUnavailable, match="client credentials"):
        verifier.verify(server.issue())
    verifier._client_secret = SECRET  # the operator fixes the secret (a restart, in real life)
    assert verifier.verify(server.issue()).scopes == {"urn:aptk:scope:hello"}


# --- how long an answer is trusted -----------------------------------------------------------------------------


def test_active_answers_are_trusted_for_cache_seconds_only(server):
    clock = [time.time()]
    verifier = IntrospectionVerifier(client_id="provider", client_secret=SECRET, cache_seconds=5,
                                     introspection_endpoint=f"{server.url}/introspect", clock=lambda: clock[0])
    token = server.issue()
    verifier.verify(token)
    server.tokens[token]["active"] = False  # revoked
    clock[0] += 4.9
    verifier.verify(token)  # still the cached answer
    clock[0] += 0.2
    with pytest.raises(UnauthorizedRequest, match="not active"):
        verifier.verify(token)


def test_the_default_cache_is_short(server):
    from toolkit.auth.introspection import DEFAULT_CACHE_SECONDS

    assert IntrospectionVerifier(client_id="p", client_secret="s", introspection_endpoint="http://x").cache_seconds \
        == DEFAULT_CACHE_SECONDS <= 60


# --- who the caller is -----------------------------------------------------------------------------------------


def test_an_answer_without_sub_names_the_client(server, verifier):
    token = server.issue(client_id="flows-client", groups=["/lab/members", "9E0F5A4C-0000-4000-8000-00000000000A"])
    del server.tokens[token]["sub"]
    identity = verifier.verify(token)
    assert identity.id == "urn:aptk:subject:flows-client"
    assert {"urn:aptk:group:/lab/members", "urn:globus:groups:id:9e0f5a4c-0000-4000-8000-00000000000a"} \
        <= identity.principals


def test_an_answer_with_neither_sub_nor_client_id_is_refused(server, verifier):
    token = server.issue()
    del server.tokens[token]["sub"]
    with pytest.raises(UnauthorizedRequest, match="neither sub nor client_id"):
        verifier.verify(token)


def test_an_upper_case_uuid_subject_is_lower_cased(server, verifier):
    token = server.issue(sub="6A3B4D5E-0000-4000-8000-00000000000B")
    assert verifier.verify(token).id == "urn:globus:auth:identity:6a3b4d5e-0000-4000-8000-00000000000b"

"""The oidc-provider test server and its fixtures do what the rest of the suite relies on."""

import dataclasses
import time
import uuid

import jwt
import pytest
import requests

from tests.oidc.fixture import (
    CALLER,
    HELLO_SCOPE,
    JWT_RESOURCE,
    OPAQUE_RESOURCE,
    OTHER_CALLER,
    OTHER_SCOPE,
    RESOURCE_SERVER,
    SHORT_LIVED,
    OIDCServerError,
)


def decode(server, token, audience=JWT_RESOURCE):
    """Verify a JWT access token the way a resource server would: key from jwks_uri, RS256, iss, aud, exp."""
    key = jwt.PyJWKClient(server.jwks_uri, cache_keys=False).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=server.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )


def test_discovery_lists_the_endpoints(oidc_server):
    document = requests.get(f"{oidc_server.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert document["issuer"] == oidc_server.issuer
    assert oidc_server.issuer.startswith("http://127.0.0.1:")
    for name in ("jwks_uri", "token_endpoint", "introspection_endpoint"):
        assert document[name].startswith(oidc_server.issuer + "/")
        assert document[name] == getattr(oidc_server, name)
    assert "client_credentials" in document["grant_types_supported"]


def test_client_ids_are_uuids(oidc_server):
    assert set(oidc_server.clients) == {CALLER, OTHER_CALLER, SHORT_LIVED, RESOURCE_SERVER}
    for client in oidc_server.clients.values():
        assert str(uuid.UUID(client.client_id)) == client.client_id
    assert len(oidc_server.client(CALLER).groups) == 1
    assert oidc_server.client(oidc_server.client_id(OTHER_CALLER)).name == OTHER_CALLER


def test_jwt_access_token_verifies_against_the_jwks(oidc_server):
    caller = oidc_server.client(CALLER)
    token = oidc_server.token(CALLER, resource=JWT_RESOURCE, scope=f"{HELLO_SCOPE} {OTHER_SCOPE}")

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt" and header["kid"]
    claims = decode(oidc_server, token)
    assert claims["iss"] == oidc_server.issuer
    assert claims["aud"] == JWT_RESOURCE
    assert claims["sub"] == claims["client_id"] == caller.client_id
    assert claims["scope"].split() == [HELLO_SCOPE, OTHER_SCOPE]
    assert claims["groups"] == list(caller.groups)
    assert claims["exp"] - claims["iat"] == 600
    # JWT access tokens are self-contained and not stored: oidc-provider 8 introspects them as inactive, 9 refuses.
    try:
        assert oidc_server.introspect(token) == {"active": False}
    except OIDCServerError as error:
        assert "unsupported_token_type" in str(error)


def test_opaque_token_introspects_as_active(oidc_server):
    caller = oidc_server.client(CALLER)
    token = oidc_server.token(CALLER, resource=OPAQUE_RESOURCE, scope=HELLO_SCOPE)
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(token)

    result = oidc_server.introspect(token)
    assert result["active"] is True
    assert result["iss"] == oidc_server.issuer
    assert result["aud"] == OPAQUE_RESOURCE
    assert result["sub"] == result["client_id"] == caller.client_id
    assert result["scope"] == HELLO_SCOPE
    assert result["groups"] == list(caller.groups)
    assert result["token_type"] == "Bearer"
    assert result["exp"] - result["iat"] == 600


def test_introspection_needs_the_resource_servers_credentials(oidc_server):
    token = oidc_server.token(CALLER, resource=OPAQUE_RESOURCE)
    assert oidc_server.introspect(token, client=CALLER) == {"active": False}
    anonymous = requests.post(oidc_server.introspection_endpoint, data={"token": token}, timeout=5)
    assert anonymous.status_code in (400, 401)
    assert oidc_server.introspect("not-a-token") == {"active": False}


def test_each_client_has_its_own_sub_and_groups(oidc_server):
    other = oidc_server.client(OTHER_CALLER)
    claims = decode(oidc_server, oidc_server.token(OTHER_CALLER))
    assert claims["sub"] == other.client_id and claims["groups"] == list(other.groups)
    result = oidc_server.introspect(oidc_server.token(OTHER_CALLER, resource=OPAQUE_RESOURCE))
    assert result["sub"] == other.client_id and result["groups"] == list(other.groups)
    # A client without groups gets no groups claim at all.
    assert "groups" not in decode(oidc_server, oidc_server.token(SHORT_LIVED))


def test_each_resource_gets_its_own_audience(oidc_server):
    assert decode(oidc_server, oidc_server.token(resource=JWT_RESOURCE))["aud"] == JWT_RESOURCE
    assert oidc_server.introspect(oidc_server.token(resource=OPAQUE_RESOURCE))["aud"] == OPAQUE_RESOURCE
    with pytest.raises(jwt.InvalidAudienceError):
        decode(oidc_server, oidc_server.token(resource=JWT_RESOURCE), audience=OPAQUE_RESOURCE)


def test_scope_and_resource_may_be_left_out(oidc_server):
    claims = decode(oidc_server, oidc_server.token(resource=JWT_RESOURCE, scope=None))
    assert "scope" not in claims
    unknown_scope_dropped = decode(oidc_server, oidc_server.token(scope=f"{HELLO_SCOPE} urn:aptk:scope:unknown"))
    assert unknown_scope_dropped["scope"] == HELLO_SCOPE
    no_audience = oidc_server.introspect(oidc_server.token(resource=None, scope=None))
    assert no_audience["active"] is True and "aud" not in no_audience


def test_bad_requests_are_refused(oidc_server):
    response = oidc_server.token_response(resource="https://unknown.test/")
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    with pytest.raises(OIDCServerError, match="invalid_client"):
        oidc_server.token(dataclasses.replace(oidc_server.client(CALLER), client_secret="wrong"))
    with pytest.raises(OIDCServerError):
        oidc_server.token(RESOURCE_SERVER)  # the resource server may introspect, not obtain tokens


def test_revoked_opaque_token_is_inactive(oidc_server):
    token = oidc_server.token(resource=OPAQUE_RESOURCE)
    oidc_server.revoke(token)
    assert oidc_server.introspect(token) == {"active": False}


def test_short_lived_token_expires(oidc_server):
    response = oidc_server.token_response(SHORT_LIVED, resource=OPAQUE_RESOURCE).json()
    assert response["expires_in"] == 2
    jwt_token = oidc_server.token(SHORT_LIVED, resource=JWT_RESOURCE)
    claims = decode(oidc_server, jwt_token)
    assert claims["exp"] - claims["iat"] == 2
    result = oidc_server.introspect(response["access_token"])
    assert result["active"] is True

    time.sleep(max(0.0, result["exp"] - time.time()) + 0.1)
    assert oidc_server.introspect(response["access_token"]) == {"active": False}
    with pytest.raises(jwt.ExpiredSignatureError):
        decode(oidc_server, jwt_token)


def test_other_server_is_independent(oidc_server, other_oidc_server):
    assert other_oidc_server.issuer != oidc_server.issuer
    assert other_oidc_server.jwks["keys"][0]["n"] != oidc_server.jwks["keys"][0]["n"]
    assert other_oidc_server.client_id(CALLER) == oidc_server.client_id(CALLER)

    foreign = other_oidc_server.token(CALLER, resource=JWT_RESOURCE)
    assert decode(other_oidc_server, foreign)["iss"] == other_oidc_server.issuer
    with pytest.raises(jwt.PyJWKClientError):  # its kid is not in this server's JWKS
        decode(oidc_server, foreign)
    key = jwt.PyJWK(oidc_server.jwks["keys"][0]).key
    with pytest.raises(jwt.InvalidSignatureError):  # nor does this server's key verify it
        jwt.decode(foreign, key, algorithms=["RS256"], audience=JWT_RESOURCE)

    opaque = other_oidc_server.token(CALLER, resource=OPAQUE_RESOURCE)
    assert other_oidc_server.introspect(opaque)["active"] is True
    assert oidc_server.introspect(opaque) == {"active": False}

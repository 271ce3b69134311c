"""JWTVerifier against a JWKS served over HTTP, with keys the test controls."""

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.toolkit.auth_servers import Recorder, closed_port_url, http_server
from toolkit.auth import JWTVerifier
from toolkit.errors import ConfigurationError, ServiceUnavailable, UnauthorizedRequest

AUDIENCE = "https://provider.example.org"
SCOPE = "urn:aptk:scope:hello"


def jwk_of(private_key, kid):
    public = private_key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    document = json.loads(algorithm.to_jwk(public))
    document.update(kid=kid, use="sig")
    return document


class Issuer:
    """An authorization server's signing side: keys, JWKS and metadata over HTTP."""

    def __init__(self, recorder, url):
        self.recorder, self.url = recorder, url
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        recorder.answer("GET", "/.well-known/openid-configuration",
                        lambda r: (200, {"issuer": url, "jwks_uri": f"{url}/jwks"}))
        recorder.answer("GET", "/jwks", lambda r: (200, {"keys": [jwk_of(k, kid) for kid, k in self.keys.items()]}))

    def token(self, *, kid="k1", alg="RS256", key=None, typ="at+jwt", **claims):
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "scope": SCOPE,
                "iat": now, "exp": now + 300, "groups": [], **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys[kid], algorithm=alg, headers={"kid": kid, "typ": typ})


@pytest.fixture
def issuer():
    recorder = Recorder()
    with http_server(recorder) as url:
        yield Issuer(recorder, url)


@pytest.fixture
def verifier(issuer):
    return JWTVerifier(issuer=issuer.url, audience=AUDIENCE, refetch_interval=30)


def test_valid_token_gives_identity_groups_and_scopes(issuer, verifier):
    who, group = str(uuid.uuid4()), str(uuid.uuid4())
    identity = verifier.verify(issuer.token(sub=who, groups=[group]))
    assert identity.id == f"urn:globus:auth:identity:{who}"
    assert f"urn:globus:groups:id:{group}" in identity.principals
    assert identity.scopes == {SCOPE}


def test_keys_are_fetched_once_not_at_construction(issuer):
    verifier = JWTVerifier(issuer=issuer.url, audience=AUDIENCE)
    assert issuer.recorder.calls == []
    for _ in range(3):
        verifier.verify(issuer.token())
    assert issuer.recorder.count("/jwks") == 1


def test_groups_come_from_the_configured_claim(issuer):
    group = str(uuid.uuid4())
    verifier = JWTVerifier(issuer=issuer.url, audience=AUDIENCE, groups_claim="memberships")
    identity = verifier.verify(issuer.token(memberships=[group]))
    assert f"urn:globus:groups:id:{group}" in identity.principals


@pytest.mark.parametrize(
    "claims, message",
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "https://other.example.org"}, "another audience"),
        ({"iss": "https://evil.example.org"}, "another issuer"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"sub": None}, "sub"),
    ],
)
def test_claims_are_checked(issuer, verifier, claims, message):
    with pytest.raises(UnauthorizedRequest, match=message):
        verifier.verify(issuer.token(**claims))


def test_small_clock_skew_is_tolerated(issuer, verifier):
    assert verifier.verify(issuer.token(exp=int(time.time()) - 5)).scopes == {SCOPE}


def test_tampered_signature_is_refused(issuer, verifier):
    header, payload, signature = issuer.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(UnauthorizedRequest):
        verifier.verify(f"{header}.{forged}.{signature}")


def test_alg_none_is_refused(issuer, verifier):
    token = jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
                       None, algorithm="none", headers={"kid": "k1", "typ": "at+jwt"})
    with pytest.raises(UnauthorizedRequest, match="'none'"):
        verifier.verify(token)


def test_hs256_signed_with_the_public_key_is_refused(issuer, verifier):
    public_pem = issuer.keys["k1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "k1", "typ": "at+jwt"}).encode())
    payload = base64.urlsafe_b64encode(json.dumps({"iss": issuer.url, "aud": AUDIENCE, "sub": "x",
                                                   "exp": int(time.time()) + 60}).encode())
    import hashlib
    import hmac

    signing_input = header.rstrip(b"=") + b"." + payload.rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(UnauthorizedRequest, match="'HS256'"):
        verifier.verify((signing_input + b"." + signature).decode())


def test_token_signed_by_another_key_is_refused(issuer, verifier):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(UnauthorizedRequest):
        verifier.verify(issuer.token(key=stranger))


def test_an_id_token_or_other_jwt_type_is_refused(issuer, verifier):
    with pytest.raises(UnauthorizedRequest, match="typ"):
        verifier.verify(issuer.token(typ="JWT"))


def test_key_rotation_is_picked_up_with_one_refetch(issuer, verifier):
    verifier.verify(issuer.token())
    issuer.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
    verifier.refetch_interval = 0
    assert verifier.verify(issuer.token(kid="k2", alg="ES256")).scopes == {SCOPE}
    assert issuer.recorder.count("/jwks") == 2


def test_unknown_kids_refetch_at_most_once_per_interval(issuer, verifier):
    verifier.verify(issuer.token())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(5):
        with pytest.raises(UnauthorizedRequest):
            verifier.verify(issuer.token(kid="nope", key=stranger))
    assert issuer.recorder.count("/jwks") == 1


def test_unreachable_issuer_is_a_fast_503(issuer):
    verifier = JWTVerifier(issuer=closed_port_url(), audience=AUDIENCE, timeout=1)
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(ServiceUnavailable):
            verifier.verify(issuer.token())
    assert time.monotonic() - started < 3


def test_slow_issuer_times_out_as_503(issuer):
    issuer.recorder.delay = 2
    verifier = JWTVerifier(issuer=issuer.url, audience=AUDIENCE, timeout=0.3)
    with pytest.raises(ServiceUnavailable):
        verifier.verify(issuer.token())
    calls = len(issuer.recorder.calls)
    with pytest.raises(ServiceUnavailable):  # the breaker answers without calling again
        verifier.verify(issuer.token())
    assert len(issuer.recorder.calls) == calls


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["RS256", "HS512"]])
def test_symmetric_or_none_algorithms_cannot_be_configured(algorithms):
    with pytest.raises(ConfigurationError, match="not allowed"):
        JWTVerifier(issuer="https://x", audience="a", algorithms=algorithms)


def test_a_cached_token_is_refused_once_it_expires(issuer):
    verifier = JWTVerifier(issuer=issuer.url, audience=AUDIENCE, leeway=0)
    token = issuer.token(exp=int(time.time()) + 2)
    verifier.verify(token)
    time.sleep(2.5)
    with pytest.raises(UnauthorizedRequest, match="expired"):
        verifier.verify(token)

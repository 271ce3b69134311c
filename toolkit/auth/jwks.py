"""RFC 9068 JWT access tokens, verified with PyJWT against the issuer's JWKS."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

import jwt
import requests

from ..errors import ConfigurationError, UnauthorizedRequest
from .base import Breaker, Identity, TokenCache, TokenVerifier, Unreachable, discover, fetch_json

# Asymmetric algorithms only: never "none", and never an HMAC whose "secret" would be the public key.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class JWTVerifier(TokenVerifier):
    """Checks signature (JWKS), issuer, audience, expiry and not-before (with ``leeway``), and ``typ``.

    The JWKS comes from ``jwks_uri`` or the issuer's metadata, fetched at the first token, not at construction.
    A token whose ``kid`` is unknown makes one refetch, at most every ``refetch_interval`` seconds, so that key
    rotation needs no restart and unknown kids cannot hammer the issuer.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Iterable[str],
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = ASYMMETRIC_ALGORITHMS,
        leeway: float = 30,
        groups_claim: str | None = "groups",
        require_typ: bool = True,
        timeout: float = 5,
        refetch_interval: float = 30,
        cache_size: int = 10_000,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.algorithms = list(algorithms)
        unsafe = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unsafe:
            raise ConfigurationError(
                f"algorithms {unsafe} are not allowed; use asymmetric ones among {', '.join(ASYMMETRIC_ALGORITHMS)}"
            )
        if not issuer:
            raise ConfigurationError("JWTVerifier needs the issuer (APTK_AUTH_ISSUER)")
        if not audience:
            raise ConfigurationError("JWTVerifier needs the audience (APTK_AUTH_AUDIENCE)")
        self.issuer = issuer
        self.audience = [audience] if isinstance(audience, str) else list(audience)
        self.leeway = leeway
        self.groups_claim = groups_claim
        self.require_typ = require_typ
        self.timeout = timeout
        self.refetch_interval = refetch_interval
        self._jwks_uri = jwks_uri
        self._session = session or requests.Session()
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self._breaker = Breaker("authorization server")
        # A verified token is not verified again until it expires: same bytes, same signature, same answer.
        self._cache = TokenCache(cache_size)

    # --- keys -----------------------------------------------------------------------------------------------

    def _fetch_keys(self) -> None:
        def fetch() -> dict[str, jwt.PyJWK]:
            if self._jwks_uri is None:
                self._jwks_uri = discover(self._session, self.issuer, timeout=self.timeout).get("jwks_uri")
                if not self._jwks_uri:
                    raise Unreachable("issuer metadata has no jwks_uri")
            status, document = fetch_json(self._session, "GET", self._jwks_uri, timeout=self.timeout)
            if status != 200:
                raise Unreachable(f"JWKS answered HTTP {status}")
            try:
                keyset = jwt.PyJWKSet.from_dict(document)
            except jwt.PyJWTError:
                raise Unreachable("the JWKS holds no usable key") from None
            return {k.key_id: k for k in keyset.keys if k.key_id and getattr(k, "public_key_use", "sig") in (None, "sig")}

        keys = self._breaker.call(fetch)
        self._keys = keys
        self._fetched_at = self._clock()

    def _key(self, kid: str) -> jwt.PyJWK | None:
        with self._lock:
            key = self._keys.get(kid)
            recently = self._fetched_at is not None and self._clock() - self._fetched_at < self.refetch_interval
            if key is None and not recently:
                self._fetch_keys()
                key = self._keys.get(kid)
            return key

    # --- tokens -----------------------------------------------------------------------------------------------

    def verify(self, token: str) -> Identity:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        identity = self._verify(token)
        if identity.expires_at is not None:
            self._cache.put(token, identity, identity.expires_at + self.leeway)
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthorizedRequest("The token is not a JWT.") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise UnauthorizedRequest(f"Token algorithm {alg!r} is not accepted.")
        if self.require_typ and str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise UnauthorizedRequest("The token is not a JWT access token (typ must be at+jwt).")
        kid = header.get("kid")
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnauthorizedRequest("The token was not signed by a key of the issuer.")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedRequest("The token has expired.") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedRequest("The token is for another audience.") from None
        except jwt.InvalidIssuerError:
            raise UnauthorizedRequest("The token is from another issuer.") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedRequest("The token is not valid yet.") from None
        except jwt.PyJWTError as exc:
            raise UnauthorizedRequest(f"The token is not valid: {exc}.") from None
        return identity_from_claims(claims, token, self.groups_claim)


def scopes_of(claims: dict[str, Any]) -> list[str]:
    scope = claims.get("scope", claims.get("scp", ""))
    return scope.split() if isinstance(scope, str) else [str(s) for s in scope]


def identity_from_claims(claims: dict[str, Any], token: str, groups_claim: str | None) -> Identity:
    """An identity from JWT or introspection claims: ``sub`` (else ``client_id``), groups from ``groups_claim``,
    ``scope``. Subjects and groups become principal URNs by :func:`toolkit.documents.principal_for`."""
    groups = claims.get(groups_claim, []) if groups_claim else []
    if isinstance(groups, str):
        groups = groups.split()
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise UnauthorizedRequest(f"The token's {groups_claim!r} claim is not a list of group ids.")
    # The subject: ``sub``, else (an introspection answer about a client-credentials token, RFC 7662 makes
    # ``sub`` optional) the ``client_id`` the token was issued to.
    sub = claims.get("sub") or claims.get("client_id")
    if not isinstance(sub, str) or not sub:
        raise UnauthorizedRequest("The token has no subject (neither sub nor client_id).")
    exp = claims.get("exp")
    return Identity.build(
        sub,
        groups=groups,
        scopes=scopes_of(claims),
        username=claims.get("username") if isinstance(claims.get("username"), str) else None,
        expires_at=float(exp) if isinstance(exp, (int, float)) else None,
        token=token,
    )

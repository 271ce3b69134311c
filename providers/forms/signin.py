"""Respondents sign in at the deployment's OpenID Connect provider: authorization code flow with PKCE.

Authlib's OAuth 2.0 client makes the authorization URL (with the S256 code challenge) and redeems the code; the ID
token is checked with PyJWT against the issuer's published keys (issuer, audience, expiry and our nonce). Nothing
is fetched before the first sign-in; the discovery document and the keys are then kept for an hour.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import jwt
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from toolkit.errors import ConfigurationError

from toolkit.settings import setting

CACHE_SECONDS = 3600
TIMEOUT = 10


class SignInError(Exception):
    """The sign-in did not complete; ``str()`` says why, for the person (never a secret)."""


class OIDCClient:
    def __init__(self, issuer: str, client_id: str, client_secret: str | None, scope: str = "openid profile",
                 groups_claim: str = "groups") -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.groups_claim = groups_claim
        self._lock = threading.Lock()
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: tuple[float, jwt.PyJWKSet] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "OIDCClient":
        issuer = setting(config, "APTK_FORMS_OIDC_ISSUER") or setting(config, "APTK_AUTH_ISSUER")
        client_id = setting(config, "APTK_FORMS_OIDC_CLIENT_ID")
        if not issuer or not client_id:
            raise ConfigurationError(
                "Sign-in to forms needs APTK_FORMS_OIDC_CLIENT_ID and an issuer (APTK_FORMS_OIDC_ISSUER or "
                "APTK_AUTH_ISSUER); or set APTK_FORMS_SIGN_IN=link."
            )
        return cls(issuer, client_id, setting(config, "APTK_FORMS_OIDC_CLIENT_SECRET"),
                   setting(config, "APTK_FORMS_OIDC_SCOPE", "openid profile"),
                   setting(config, "APTK_AUTH_GROUPS_CLAIM", "groups"))

    def _session(self, redirect_uri: str) -> OAuth2Session:
        session = OAuth2Session(self.client_id, self._client_secret, scope=self.scope, redirect_uri=redirect_uri,
                                code_challenge_method="S256",
                                token_endpoint_auth_method="client_secret_basic" if self._client_secret else "none")
        return session

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None or self._metadata[0] < time.monotonic():
                document = _get_json(f"{self.issuer}/.well-known/openid-configuration")
                if document.get("issuer", "").rstrip("/") != self.issuer:
                    raise SignInError("the sign-in service describes another issuer")
                self._metadata = (time.monotonic() + CACHE_SECONDS, document)
            return self._metadata[1]

    def _key_set(self, refresh: bool = False) -> jwt.PyJWKSet:
        with self._lock:
            if refresh or self._keys is None or self._keys[0] < time.monotonic():
                uri = self._metadata[1]["jwks_uri"] if self._metadata else None
                if not uri:
                    raise SignInError("the sign-in service publishes no keys")
                self._keys = (time.monotonic() + CACHE_SECONDS, jwt.PyJWKSet.from_dict(_get_json(uri)))
            return self._keys[1]

    def start(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """The URL to send the browser to, and what to keep until it comes back (state, nonce, PKCE verifier)."""
        saved = {"state": generate_token(32), "nonce": generate_token(32), "verifier": generate_token(64)}
        url, _ = self._session(redirect_uri).create_authorization_url(
            self.metadata()["authorization_endpoint"], state=saved["state"], nonce=saved["nonce"],
            code_verifier=saved["verifier"])
        return url, saved

    def finish(self, redirect_uri: str, args: Mapping[str, str], saved: Mapping[str, str]) -> dict[str, Any]:
        """The ID token's claims once the code is redeemed and the token checked."""
        if "error" in args:
            raise SignInError(f"the sign-in service answered {args.get('error', '')[:80]}")
        if not args.get("code") or args.get("state") != saved.get("state"):
            raise SignInError("the sign-in answer does not match the sign-in that was started")
        try:
            token = self._session(redirect_uri).fetch_token(
                self.metadata()["token_endpoint"], code=args["code"], code_verifier=saved["verifier"],
                timeout=TIMEOUT)
        except Exception as exc:  # authlib raises its own OAuthError, requests its own: both mean "no token"
            raise SignInError(f"the code could not be redeemed ({type(exc).__name__})") from None
        id_token = token.get("id_token")
        if not id_token:
            raise SignInError("the sign-in service sent no ID token")
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
            keys = self._key_set()
            if kid not in {k.key_id for k in keys.keys}:
                keys = self._key_set(refresh=True)
            key = next(k for k in keys.keys if k.key_id == kid or kid is None)
            claims = jwt.decode(id_token, key.key, algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                                audience=self.client_id, issuer=self.metadata()["issuer"], leeway=30,
                                options={"require": ["exp", "iat", "sub"]})
        except (jwt.PyJWTError, StopIteration) as exc:
            raise SignInError(f"the ID token is not valid ({type(exc).__name__})") from None
        if claims.get("nonce") != saved.get("nonce"):
            raise SignInError("the ID token was not issued for this sign-in")
        return claims


def _get_json(url: str) -> dict[str, Any]:
    try:
        with requests.Session() as session:
            response = session.get(url, timeout=TIMEOUT)
            response.raise_for_status()
            document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise SignInError(f"the sign-in service could not be reached ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise SignInError("the sign-in service sent an unreadable answer")
    return document

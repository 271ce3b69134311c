"""Opaque tokens, verified by RFC 7662 introspection with the provider's own client credentials."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

import requests

from ..errors import ConfigurationError, UnauthorizedRequest
from .base import Breaker, Identity, TokenCache, Unreachable, discover, fetch_json
from .jwks import identity_from_claims


class IntrospectionVerifier:
    """Asks the authorization server about each token, and remembers the answer.

    Active answers are cached (by a hash of the token) until ``cache_seconds`` or the token's own expiry,
    whichever is sooner; inactive answers for ``inactive_cache_seconds``. ``audience``, when set, must be in the
    answer's ``aud``.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        introspection_endpoint: str | None = None,
        issuer: str | None = None,
        audience: str | Iterable[str] | None = None,
        groups_claim: str | None = "groups",
        timeout: float = 5,
        cache_seconds: float = 300,
        inactive_cache_seconds: float = 10,
        cache_size: int = 10_000,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not client_id or not client_secret:
            raise ConfigurationError(
                "IntrospectionVerifier needs the provider's client credentials "
                "(APTK_AUTH_CLIENT_ID and APTK_AUTH_CLIENT_SECRET)"
            )
        if not introspection_endpoint and not issuer:
            raise ConfigurationError(
                "IntrospectionVerifier needs APTK_AUTH_INTROSPECTION_URL or APTK_AUTH_ISSUER (for discovery)"
            )
        self.client_id = client_id
        self._client_secret = client_secret
        self._endpoint = introspection_endpoint
        self.issuer = issuer
        self.audience = None if audience is None else ({audience} if isinstance(audience, str) else set(audience))
        self.groups_claim = groups_claim
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.inactive_cache_seconds = inactive_cache_seconds
        self._session = session or requests.Session()
        self._clock = clock
        self._cache = TokenCache(cache_size, clock)
        self._breaker = Breaker("authorization server")
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the secret
        return f"{type(self).__name__}(client_id={self.client_id!r}, endpoint={self._endpoint!r})"

    def _introspection_endpoint(self) -> str:
        with self._lock:
            if self._endpoint is None:
                metadata = self._breaker.call(lambda: discover(self._session, self.issuer, timeout=self.timeout))
                self._endpoint = metadata.get("introspection_endpoint")
                if not self._endpoint:
                    raise ConfigurationError(f"{self.issuer} publishes no introspection_endpoint")
            return self._endpoint

    def introspect(self, token: str, **extra: str) -> dict[str, Any]:
        """The authorization server's answer about ``token`` (uncached)."""
        endpoint = self._introspection_endpoint()

        def call() -> dict[str, Any]:
            status, answer = fetch_json(
                self._session,
                "POST",
                endpoint,
                timeout=self.timeout,
                data={"token": token, "token_type_hint": "access_token", **extra},
                auth=(self.client_id, self._client_secret),
            )
            if status != 200 or not isinstance(answer, dict):
                # 401/403 here means our own credentials are refused: an operator's problem, not the caller's.
                raise Unreachable(f"introspection answered HTTP {status}; check the provider's client credentials")
            return answer

        return self._breaker.call(call)

    def verify(self, token: str) -> Identity:
        cached = self._cache.get(token)
        if isinstance(cached, Identity):
            return cached
        if isinstance(cached, UnauthorizedRequest):
            raise cached
        answer = self.introspect(token)
        try:
            identity = self._identity(answer, token)
        except UnauthorizedRequest as refused:
            self._cache.put(token, refused, self._clock() + self.inactive_cache_seconds)
            raise
        expires = min(self._clock() + self.cache_seconds, identity.expires_at or float("inf"))
        self._cache.put(token, identity, expires)
        return identity

    def _identity(self, answer: dict[str, Any], token: str) -> Identity:
        if answer.get("active") is not True:
            raise UnauthorizedRequest("The token is not active (expired, revoked or unknown).")
        now = self._clock()
        exp = answer.get("exp")
        if isinstance(exp, (int, float)) and exp <= now:
            raise UnauthorizedRequest("The token has expired.")
        nbf = answer.get("nbf")
        if isinstance(nbf, (int, float)) and nbf > now + 30:
            raise UnauthorizedRequest("The token is not valid yet.")
        if self.issuer and answer.get("iss") and answer["iss"].rstrip("/") != self.issuer.rstrip("/"):
            raise UnauthorizedRequest("The token is from another issuer.")
        if self.audience is not None:
            aud = answer.get("aud", [])
            auds = {aud} if isinstance(aud, str) else set(aud or [])
            if not auds & self.audience:
                raise UnauthorizedRequest("The token is for another audience.")
        return identity_from_claims(self._claims(answer), token, self.groups_claim)

    def _claims(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Where the identity comes from; Globus Auth overrides this."""
        return answer

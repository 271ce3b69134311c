"""Opaque tokens, verified by RFC 7662 introspection with the provider's own client credentials."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

import requests

from ..errors import ConfigurationError, ServiceUnavailable, UnauthorizedRequest
from .base import Breaker, Identity, TokenCache, TokenVerifier, discover, fetch_json
from .jwks import identity_from_claims

logger = logging.getLogger("toolkit.auth.introspection")


class _Refused(Exception):
    """The authorization server answered a 4xx about a token."""


# 4xx answers that are about the token sent (RFC 6749 section 5.2, RFC 7662 section 2.3, oversized tokens).
_ABOUT_THE_TOKEN = frozenset({400, 401, 403, 413, 414, 422, 431})


#: How long an introspection answer is trusted by default (``APTK_AUTH_CACHE_SECONDS``): a revoked token is
#: refused at most this long after its revocation; each worker asks again about a busy token this often.
DEFAULT_CACHE_SECONDS = 10.0


class IntrospectionVerifier(TokenVerifier):
    """Asks the authorization server about each token, and remembers the answer.

    Active answers are cached (by a hash of the token) for ``cache_seconds`` (default
    :data:`DEFAULT_CACHE_SECONDS`), never past the token's own expiry: a token revoked at the authorization server is
    refused within that time. Inactive answers, and refusals to introspect a token (a 4xx about the token), are
    cached for ``inactive_cache_seconds``. ``audience``, when set, must be in the answer's ``aud``.

    Only what says the authorization server is down (no connection, a timeout, a 5xx, an answer that is not
    JSON) is a 503 and trips the circuit breaker; a 4xx is about the token in hand and is that token's 401, so
    that no caller's garbage token can take the provider down for others. The one 4xx that is no caller's doing,
    ``invalid_client`` (the provider's own credentials refused), is a 503 naming the operator's fix.
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
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
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
                issuer = self.issuer
                assert issuer is not None  # without an endpoint, __init__ demands an issuer
                metadata = self._breaker.call(lambda: discover(self._session, issuer, timeout=self.timeout))
                self._endpoint = metadata.get("introspection_endpoint")
                if not self._endpoint:
                    raise ConfigurationError(f"{self.issuer} publishes no introspection_endpoint")
            return self._endpoint

    def introspect(self, token: str, **extra: str) -> dict[str, Any]:
        """The authorization server's answer about ``token`` (uncached)."""
        endpoint = self._introspection_endpoint()

        def call() -> tuple[int, Any]:
            return fetch_json(
                self._session,
                "POST",
                endpoint,
                timeout=self.timeout,
                data={"token": token, "token_type_hint": "access_token", **extra},
                auth=(self.client_id, self._client_secret),
            )

        status, answer = self._breaker.call(call)
        if status == 200 and isinstance(answer, dict):
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        error = error if isinstance(error, str) and error.isascii() and error.isprintable() else None
        if status == 200:
            raise ServiceUnavailable("The authorization server's introspection answer is not a JSON object.")
        if error == "invalid_client":  # RFC 7662 section 2.3: our credentials, whatever the token
            logger.error("the authorization server refused the provider's client credentials (%s, HTTP %s): "
                         "check APTK_AUTH_CLIENT_ID and APTK_AUTH_CLIENT_SECRET", self.client_id, status)
            raise ServiceUnavailable(
                "The authorization server refused this provider's client credentials; the operator must fix them."
            )
        if status in _ABOUT_THE_TOKEN:
            # The authorization server's verdict on this token (400 unsupported_token_type, 401 for a token it
            # cannot parse, ...): this token is refused; the server is not down, and nobody else is affected.
            raise _Refused(f"HTTP {status}" + (f" {error}" if error else ""))
        # 404, 405, 429, ...: the endpoint is wrong or throttles us; no token of anyone's can pass right now, but
        # the breaker stays closed: a caller must not be able to make the provider refuse everyone.
        logger.error("the introspection endpoint %s answered HTTP %s", endpoint, status)
        raise ServiceUnavailable(f"The authorization server's introspection endpoint answered HTTP {status}.")

    def verify(self, token: str) -> Identity:
        cached = self._cache.get(token)
        if isinstance(cached, Identity):
            return cached
        if isinstance(cached, UnauthorizedRequest):
            raise cached
        try:
            answer = self.introspect(token)
            identity = self._identity(answer, token)
        except _Refused as refused:
            error = UnauthorizedRequest(f"The authorization server refused to introspect the token ({refused}).")
            self._cache.put(token, error, self._clock() + self.inactive_cache_seconds)
            raise error from None
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

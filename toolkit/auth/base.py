"""The verifier protocol and what every verifier shares: the caller's identity, the bearer header, a cache."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from ..documents import ALL_AUTHENTICATED_USERS, principal_for
from ..errors import ConfigurationError, UnauthorizedRequest


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who made a request: an identity URN, every principal it speaks for, and the token's scopes."""

    id: str
    principals: frozenset[str]
    scopes: frozenset[str]
    username: str | None = None
    expires_at: float | None = None
    token: str | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        identity_id: str,
        *,
        groups: Iterable[str] = (),
        linked_identities: Iterable[str] = (),
        scopes: Iterable[str] = (),
        username: str | None = None,
        expires_at: float | None = None,
        token: str | None = None,
    ) -> "Identity":
        """Make an identity from what an authorization server says: UUIDs, names or principal URNs.

        A UUID becomes ``urn:globus:auth:identity:<uuid>`` (``urn:globus:groups:id:<uuid>`` for a group), any
        other name ``urn:aptk:subject:<name>`` (``urn:aptk:group:<name>``), a URN is normalised; see
        :func:`toolkit.documents.principal_for`. ``all_authenticated_users`` is added.
        """
        me = _as_urn(identity_id, "identity")
        principals = {me, ALL_AUTHENTICATED_USERS}
        principals.update(_as_urn(i, "identity") for i in linked_identities)
        # Never let a claim name a principal of another kind (a group "urn:globus:auth:identity:..." say).
        principals.update(_as_urn(g, "group") for g in groups)
        return cls(me, frozenset(principals), frozenset(scopes), username, expires_at, token)


def _as_urn(value: str, kind: str) -> str:
    """``value`` as a principal URN of ``kind``; a URN of another kind, or a name no URN can hold, is a 401."""
    try:
        return principal_for(value, kind)
    except ValueError as exc:
        article = "an" if kind == "identity" else "a"
        raise UnauthorizedRequest(f"The token names {article} {kind} that cannot be a principal: {exc}.") from None


@runtime_checkable
class TokenVerifier(Protocol):
    """Turns a bearer token into an :class:`Identity`, or raises :class:`UnauthorizedRequest`.

    A verifier that can also get tokens to call downstream services as the caller (Globus Auth's dependent
    tokens) overrides :meth:`dependent_tokens`; subclassing this protocol gives the others its refusal.
    """

    def verify(self, token: str) -> Identity: ...

    def dependent_tokens(self, token: str) -> dict[str, dict[str, Any]]:
        """Tokens for the services the provider's scope depends on, by resource server, for this caller."""
        raise ConfigurationError(
            f"The token verifier ({type(self).__name__}) cannot issue dependent tokens; use APTK_AUTH=globus."
        )


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or a 401 saying what is wrong.

    Without a header, or with another scheme (``Basic ...``), the 401's ``WWW-Authenticate`` is a bare
    ``Bearer`` challenge: RFC 6750 section 3.1 sends no error code to a client that did not try a bearer token.
    """
    if not authorization or not authorization.strip():
        raise UnauthorizedRequest("Missing 'Authorization: Bearer <token>' header.", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise UnauthorizedRequest(
            "The Authorization header uses another scheme; expected 'Bearer <token>'.", error=None
        )
    if not token or " " in token:
        raise UnauthorizedRequest(
            "Malformed Authorization header; expected 'Bearer <token>'.", error="invalid_request"
        )
    return token


def token_key(token: str) -> str:
    """What caches are keyed by: a hash, so that no cache holds a token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenCache:
    """A bounded, thread-safe map from a token's hash to a value, each entry with its own expiry.

    Entries never outlive ``expires_at`` (the caller passes the token's own expiry); the least recently used
    entry goes first when the cache is full. One instance per verifier: nothing is shared between them.
    """

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Any | None:
        key = token_key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires_at, value = entry
            if expires_at <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, token: str, value: Any, expires_at: float) -> None:
        if expires_at <= self._clock():
            return
        key = token_key(token)
        with self._lock:
            self._entries[key] = (expires_at, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class Unreachable(Exception):
    """An authorization server did not answer usefully (network error, timeout, 5xx)."""


class Breaker:
    """Fails fast while a remote server is known to be down, so that a slow server causes no pile-up.

    After a failure, calls raise :class:`~toolkit.errors.ServiceUnavailable` at once for ``cooldown`` seconds;
    after that, calls go through again.
    """

    def __init__(self, name: str, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cooldown = cooldown
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], Any]) -> Any:
        from ..errors import ServiceUnavailable

        with self._lock:
            if self._clock() < self._down_until:
                raise ServiceUnavailable(f"The {self.name} is unavailable; try again shortly.")
        try:
            return fn()
        except Unreachable as exc:
            with self._lock:
                self._down_until = self._clock() + self.cooldown
            raise ServiceUnavailable(f"The {self.name} did not answer ({exc}); try again shortly.") from None


def fetch_json(session: Any, method: str, url: str, *, timeout: float, **kwargs: Any) -> tuple[int, Any]:
    """One HTTP call to an authorization server: (status, JSON), or :class:`Unreachable` for a network
    error, a timeout, a 5xx or a success that is not JSON. A 4xx is an answer, not an outage: (status, its JSON
    or None). No retries: the caller's request fails fast instead."""
    import requests

    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise Unreachable(type(exc).__name__) from None
    if response.status_code >= 500:
        raise Unreachable(f"HTTP {response.status_code}")
    try:
        return response.status_code, response.json()
    except ValueError:
        if response.status_code >= 400:
            return response.status_code, None
        raise Unreachable(f"HTTP {response.status_code} without JSON") from None


def discover(session: Any, issuer: str, *, timeout: float) -> dict[str, Any]:
    """The issuer's metadata (OpenID Connect discovery, then RFC 8414)."""
    base = issuer.rstrip("/")
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        status, document = fetch_json(session, "GET", base + path, timeout=timeout)
        if status == 200 and isinstance(document, dict):
            if document.get("issuer", "").rstrip("/") != base:
                raise Unreachable(f"metadata at {base + path} names another issuer")
            return document
    raise Unreachable(f"no metadata at {base}/.well-known/")

"""Globus Auth: token introspection with identity sets, dependent tokens, and group memberships."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ServiceUnavailable, UnauthorizedRequest
from .base import Breaker, Identity, TokenCache, fetch_json
from .introspection import IntrospectionVerifier

logger = logging.getLogger("toolkit.auth.globus")

GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
DEPENDENT_TOKEN_GRANT = "urn:globus:auth:grant_type:dependent_token"


class GlobusAuthVerifier(IntrospectionVerifier):
    """Verifies Globus Auth tokens for a provider registered as a Globus Auth resource server.

    Every identity linked to the caller's account becomes a principal, and so does every group of the Groups API
    the caller belongs to (fetched with a dependent token for ``groups.api.globus.org``, when the provider's
    scope depends on the groups scope). :meth:`dependent_tokens` gives callbacks tokens to call downstream
    services as the caller; they are cached until they expire.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        audience: str | None = None,
        auth_url: str = "https://auth.globus.org",
        groups_url: str = "https://groups.api.globus.org",
        fetch_groups: bool = True,
        **options: Any,
    ) -> None:
        self.auth_url = auth_url.rstrip("/")
        self.groups_url = groups_url.rstrip("/")
        self.fetch_groups = fetch_groups
        super().__init__(
            client_id=client_id,
            client_secret=client_secret,
            introspection_endpoint=f"{self.auth_url}/v2/oauth2/token/introspect",
            audience=audience or client_id,
            groups_claim=None,
            **options,
        )
        self._dependent = TokenCache(self._cache.max_entries, self._clock)
        self._groups_breaker = Breaker("Globus Groups API")

    def introspect(self, token: str, **extra: str) -> dict[str, Any]:
        return super().introspect(token, include="identity_set", **extra)

    def _identity(self, answer: dict[str, Any], token: str) -> Identity:
        base = super()._identity(answer, token)
        linked = [i for i in answer.get("identity_set", []) if isinstance(i, str)]
        groups = self._groups(token) if self.fetch_groups else []
        return Identity.build(
            base.id, groups=groups, linked_identities=linked, scopes=base.scopes, username=base.username,
            expires_at=base.expires_at, token=token,
        )

    def dependent_tokens(self, token: str) -> dict[str, dict[str, Any]]:
        """Tokens for the services the provider's scope depends on, by resource server, for this caller."""
        cached = self._dependent.get(token)
        if cached is not None:
            return cached

        def call() -> Any:
            status, answer = fetch_json(
                self._session,
                "POST",
                f"{self.auth_url}/v2/oauth2/token",
                timeout=self.timeout,
                data={"grant_type": DEPENDENT_TOKEN_GRANT, "token": token, "access_type": "online"},
                auth=(self.client_id, self._client_secret),
            )
            return status, answer

        status, answer = self._breaker.call(call)
        if status in (400, 401, 403):
            raise UnauthorizedRequest("Globus Auth refused to issue dependent tokens for this token.")
        if isinstance(answer, dict):  # older deployments answer {"other_tokens": [...]} around the first token
            answer = [answer, *answer.get("other_tokens", [])]
        now = self._clock()
        tokens = {}
        for item in answer if isinstance(answer, list) else []:
            if isinstance(item, dict) and "resource_server" in item and "access_token" in item:
                tokens[item["resource_server"]] = {
                    "access_token": item["access_token"],
                    "scope": item.get("scope", ""),
                    "expires_at": now + float(item.get("expires_in", 0)),
                }
        if tokens:
            self._dependent.put(token, tokens, min(t["expires_at"] for t in tokens.values()))
        return tokens

    def _groups(self, token: str) -> list[str]:
        """The caller's groups; none (logged) when they cannot be learnt, rather than refusing the caller."""
        try:
            return self._fetch_groups(token)
        except (ServiceUnavailable, UnauthorizedRequest) as exc:
            logger.warning("group memberships are unknown for this request: %s", exc.description)
            return []

    def _fetch_groups(self, token: str) -> list[str]:
        groups_token = self.dependent_tokens(token).get(GROUPS_RESOURCE_SERVER)
        if groups_token is None:
            logger.debug("no dependent token for %s: group principals are unknown", GROUPS_RESOURCE_SERVER)
            return []

        def call() -> Any:
            return fetch_json(
                self._session,
                "GET",
                f"{self.groups_url}/v2/groups/my_groups",
                timeout=self.timeout,
                headers={"Authorization": f"Bearer {groups_token['access_token']}"},
            )

        status, answer = self._groups_breaker.call(call)
        if status != 200 or not isinstance(answer, list):
            logger.warning("the Groups API answered HTTP %s; group principals are unknown", status)
            return []
        return [g["id"] for g in answer if isinstance(g, dict) and isinstance(g.get("id"), str)]


"""Access tokens for this deployment itself: the OAuth 2.0 client credentials grant (RFC 6749 section 4.4).

Used by ``aptk token --client-id`` and by :mod:`toolkit.calls` for the clients of ``APTK_CALL_CLIENTS``. Errors
never carry the client secret or a token.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import ToolkitError

__all__ = ["TokenRequestError", "AuthorizationServerUnreachable", "client_credentials_token"]


class TokenRequestError(ToolkitError):
    """The authorization server refused to issue a token (a wrong secret, an unknown scope...)."""


class AuthorizationServerUnreachable(TokenRequestError):
    """The authorization server could not be reached, or its metadata names no token endpoint."""


def client_credentials_token(
    client_id: str,
    client_secret: str,
    *,
    issuer: str | None = None,
    token_url: str | None = None,
    scopes: Iterable[str] = (),
    resource: str | None = None,
    timeout: float = 10,
    session: Any = None,
) -> dict[str, Any]:
    """The token response (``access_token``, ``expires_in``...) for this client; ``token_url`` wins over the
    ``issuer``'s discovered token endpoint. ``resource`` is an RFC 8707 resource indicator."""
    import requests

    from .base import Unreachable, discover

    session = session or requests.Session()
    try:
        if not token_url:
            if not issuer:
                raise TokenRequestError("a token request needs an issuer or a token URL")
            token_url = discover(session, issuer, timeout=timeout)["token_endpoint"]
        form = {"grant_type": "client_credentials"}
        scopes = " ".join(scopes)
        if scopes:
            form["scope"] = scopes
        if resource:
            form["resource"] = resource
        response = session.post(token_url, data=form, auth=(client_id, client_secret), timeout=timeout)
    except (requests.RequestException, Unreachable, KeyError) as exc:
        raise AuthorizationServerUnreachable(f"could not reach the authorization server: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if response.status_code != 200 or not isinstance(answer.get("access_token"), str):
        if response.status_code >= 500:
            raise AuthorizationServerUnreachable(
                f"could not reach the authorization server: it answered HTTP {response.status_code}")
        reason = answer.get("error_description") or answer.get("error") or f"HTTP {response.status_code}"
        raise TokenRequestError(f"the authorization server refused: {reason}")
    return answer

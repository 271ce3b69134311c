"""Bearer-token verification.

Every verifier follows one protocol, :class:`TokenVerifier`: a token string in, an :class:`Identity` out, or
:class:`~toolkit.errors.UnauthorizedRequest` (a bad token: 401) or :class:`~toolkit.errors.ServiceUnavailable`
(the authorization server cannot be reached: 503). The blueprint sees only that protocol, so the verifier is
chosen by configuration (:func:`verifier_from_config`) without touching provider code.

=============================  =====================================================================
:class:`DevTokenVerifier`      tokens from ``aptk token``, signed with a key in the data directory
:class:`JWTVerifier`           RFC 9068 JWT access tokens, checked against the issuer's JWKS
:class:`IntrospectionVerifier` opaque tokens, checked by RFC 7662 introspection
:class:`GlobusAuthVerifier`    Globus Auth: introspection with identity sets, dependent tokens, groups
=============================  =====================================================================
"""

from .base import Breaker, Identity, TokenCache, TokenVerifier, bearer_token, token_key
from .config import verifier_from_config
from .dev import (
    DEV_ISSUER,
    DevTokenVerifier,
    dev_key_path,
    load_dev_key,
    load_or_create_dev_key,
    mint_dev_token,
)
from .globus import GlobusAuthVerifier
from .introspection import IntrospectionVerifier
from .jwks import JWTVerifier

__all__ = [
    "Breaker",
    "DEV_ISSUER",
    "DevTokenVerifier",
    "GlobusAuthVerifier",
    "Identity",
    "IntrospectionVerifier",
    "JWTVerifier",
    "TokenCache",
    "TokenVerifier",
    "bearer_token",
    "dev_key_path",
    "load_dev_key",
    "load_or_create_dev_key",
    "mint_dev_token",
    "token_key",
    "verifier_from_config",
]

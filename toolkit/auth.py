"""Bearer-token verification.

Every verifier follows one protocol, :class:`TokenVerifier`: a token string in, an :class:`Identity` out, or an
:class:`~toolkit.errors.UnauthorizedRequest` (bad token) or :class:`~toolkit.errors.ServiceUnavailable` (the
authorization server cannot be reached). The blueprint only ever sees that protocol, so a verifier is chosen by
configuration without touching provider code.

:class:`DevTokenVerifier` checks tokens minted by ``aptk token`` with a key kept in the server's data directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .documents import ALL_AUTHENTICATED_USERS, group_urn, identity_urn
from .errors import ConfigurationError, UnauthorizedRequest

DEV_ISSUER = "aptk-dev"
DEV_KEY_FILE = "dev-signing-key.pem"
_DEV_ALGORITHM = "EdDSA"


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
        """Make an identity from bare UUIDs (or URNs); adds ``all_authenticated_users``."""
        me = _as_urn(identity_id, identity_urn)
        principals = {me, ALL_AUTHENTICATED_USERS}
        principals.update(_as_urn(i, identity_urn) for i in linked_identities)
        principals.update(_as_urn(g, group_urn) for g in groups)
        return cls(me, frozenset(principals), frozenset(scopes), username, expires_at, token)


def _as_urn(value: str, make) -> str:
    return value if value.startswith("urn:") else make(value)


@runtime_checkable
class TokenVerifier(Protocol):
    """Turns a bearer token into an :class:`Identity`, or raises :class:`UnauthorizedRequest`."""

    def verify(self, token: str) -> Identity: ...


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or a 401 saying what is wrong."""
    if not authorization:
        raise UnauthorizedRequest("Missing 'Authorization: Bearer <token>' header.", error="invalid_request")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise UnauthorizedRequest(
            "Malformed Authorization header; expected 'Bearer <token>'.", error="invalid_request"
        )
    return token


# --- local development tokens ----------------------------------------------------------------------------


def dev_key_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / DEV_KEY_FILE


def load_or_create_dev_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    """The data directory's signing key for dev tokens, created (mode 0600) on first use."""
    path = dev_key_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; use its key
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
    return load_dev_key(data_dir)


def load_dev_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    path = dev_key_path(data_dir)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(
            f"No dev signing key at {path}. Start the server once with `aptk serve --data-dir {data_dir}` "
            "(it creates the key), or pass the --data-dir the server uses."
        ) from None
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key; delete it and restart the server.")
    return key


def mint_dev_token(
    key: Ed25519PrivateKey,
    identity_id: str,
    *,
    groups: Iterable[str] = (),
    scopes: Iterable[str] = (),
    expires_in: float = 3600,
    username: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a dev access token for ``identity_id`` (a UUID) that :class:`DevTokenVerifier` accepts."""
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": str(identity_id),
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(expires_in),
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
        "groups": [str(g) for g in groups],
    }
    if username:
        claims["username"] = username
    return jwt.encode(claims, key, algorithm=_DEV_ALGORITHM)


class DevTokenVerifier:
    """Accepts tokens from :func:`mint_dev_token` signed by this server's key (``aptk token``)."""

    def __init__(self, public_key: Ed25519PublicKey, *, leeway: float = 30) -> None:
        self._public_key = public_key
        self._leeway = leeway

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike) -> "DevTokenVerifier":
        return cls(load_or_create_dev_key(data_dir).public_key())

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=[_DEV_ALGORITHM],
                issuer=DEV_ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedRequest("The token has expired.") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedRequest(f"The token is not valid: {exc}.") from None
        try:
            return Identity.build(
                str(uuid.UUID(claims["sub"])),
                groups=[str(uuid.UUID(g)) for g in claims.get("groups", [])],
                scopes=str(claims.get("scope", "")).split(),
                username=claims.get("username"),
                expires_at=float(claims["exp"]),
                token=token,
            )
        except (ValueError, TypeError, AttributeError):
            raise UnauthorizedRequest("The token's subject or groups are not UUIDs.") from None

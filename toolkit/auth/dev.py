"""Local development tokens: ``aptk serve`` keeps an Ed25519 key in its data directory, ``aptk token`` signs
with it, :class:`DevTokenVerifier` checks."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigurationError, UnauthorizedRequest
from .base import Identity, TokenCache, TokenVerifier

DEV_ISSUER = "aptk-dev"
DEV_KEY_FILE = "dev-signing-key.pem"
_DEV_ALGORITHM = "EdDSA"


# --- local development tokens ----------------------------------------------------------------------------


def dev_key_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / DEV_KEY_FILE


def load_or_create_dev_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    """The data directory's signing key for dev tokens, created (mode 0600) on first use."""
    path = dev_key_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Write a private temporary file whole, then link it into place: a process racing us sees either
        # no key or a complete one, and the first link wins.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dev-key-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process won the race; use its key
        finally:
            os.unlink(temporary)
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


class DevTokenVerifier(TokenVerifier):
    """Accepts tokens from :func:`mint_dev_token` signed by this server's key (``aptk token``)."""

    def __init__(self, public_key: Ed25519PublicKey, *, leeway: float = 30, cache_size: int = 10_000) -> None:
        self._public_key = public_key
        self._leeway = leeway
        self._cache = TokenCache(cache_size)

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike) -> "DevTokenVerifier":
        return cls(load_or_create_dev_key(data_dir).public_key())

    def verify(self, token: str) -> Identity:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        identity = self._verify(token)
        assert identity.expires_at is not None  # "exp" is a required claim
        self._cache.put(token, identity, identity.expires_at + self._leeway)
        return identity

    def _verify(self, token: str) -> Identity:
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
        except jwt.InvalidSignatureError:
            raise UnauthorizedRequest(
                "The token was signed by another key: is the --data-dir of `aptk token` the server's? "
                "(each data directory has its own dev signing key)"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise UnauthorizedRequest(
                "The token is not a dev token from `aptk token --identity ...` (this server runs APTK_AUTH=dev)."
            ) from None
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

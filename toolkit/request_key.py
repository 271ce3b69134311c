"""The key of the request digests the store keeps for ``request_id`` idempotency.

A request may carry a secret (a caller's mail password, say); a plain SHA-256 of it in the database would let
anyone holding a copy of the database test guesses offline. The digest is therefore an HMAC-SHA256 keyed with
``APTK_REQUEST_KEY`` when it is set (hosts that share one database set the same), else, for the embedded
database, with 32 random bytes kept in the data directory (``request-key``, mode 0600), created on first use, read
by every process that shares the data directory and kept across restarts. A database given by
``APTK_DATABASE_URL`` may be shared by several hosts, so without ``APTK_REQUEST_KEY`` its digests stay plain
SHA-256 (and start-up warns).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigurationError
from .settings import setting

REQUEST_KEY_FILE = "request-key"
KEY_BYTES = 32


def request_key(config: Mapping[str, Any]) -> bytes | None:
    """The key of ``config`` (``APTK_REQUEST_KEY``, else the data directory's); None without either."""
    value = setting(config, "APTK_REQUEST_KEY")
    if value is not None:
        if not isinstance(value, str) or len(value.strip()) < KEY_BYTES:
            raise ConfigurationError(f"APTK_REQUEST_KEY must be a secret of at least {KEY_BYTES} characters (e.g. "
                                     "the output of `openssl rand -hex 32`)")
        return value.strip().encode()
    if setting(config, "APTK_DATABASE_URL"):
        # A database of its own may be shared by hosts with data directories of their own: a key from one data
        # directory would make a retry reaching another host a 409. Without a shared key, digests stay plain.
        return None
    data_dir = config.get("APTK_DATA_DIR")
    return load_or_create_request_key(data_dir) if data_dir else None


def load_or_create_request_key(data_dir: str | os.PathLike[str]) -> bytes:
    """The data directory's request key, created (mode 0600) on first use; ConfigurationError saying why not."""
    path = Path(data_dir) / REQUEST_KEY_FILE
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Written whole to a private temporary file, then linked into place: a racing process sees either
            # no key or a complete one, and the first link wins.
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".request-key-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(KEY_BYTES))
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    pass
            finally:
                os.unlink(temporary)
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read or create the request key {path}: {exc.strerror or exc}; choose "
                                 "another data directory with --data-dir or APTK_DATA_DIR") from None
    if len(key) < KEY_BYTES:
        raise ConfigurationError(f"the request key {path} is damaged ({len(key)} bytes, not {KEY_BYTES}); delete "
                                 "it to make a new one (requests already stored then no longer match a retry)")
    return key


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


def request_digest(document: Any, key: bytes | None) -> str:
    """The hex HMAC-SHA256 of the canonical JSON of ``document`` under ``key`` (plain SHA-256 without a key)."""
    canonical = _canonical(document)
    if key is None:
        return hashlib.sha256(canonical).hexdigest()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def same_request(stored: str, document: Any, key: bytes | None) -> bool:
    """Whether ``document`` is the request whose digest was stored: keyed, or a plain SHA-256 stored before
    digests were keyed (so that a retry of a request taken by an older version still meets its action)."""
    if hmac.compare_digest(stored, request_digest(document, key)):
        return True
    return key is not None and hmac.compare_digest(stored, request_digest(document, None))

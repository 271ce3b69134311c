"""The checksum algorithms a transfer accepts, by their Globus names: MD5, ADLER32, SHA1, SHA256 (the default),
SHA512. Each is a ``hashlib``-like object (``update``, ``hexdigest``); ADLER32 is :func:`zlib.adler32`, its digest
eight hex digits."""

from __future__ import annotations

import hashlib
import zlib
from typing import Any, Callable, Protocol

__all__ = ["ALGORITHMS", "DEFAULT", "Hash", "canonical", "digest_length", "new"]

DEFAULT = "SHA256"


class Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


class _Adler32:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 1

    def update(self, data: Any) -> None:
        self.value = zlib.adler32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


ALGORITHMS: dict[str, Callable[[], Hash]] = {
    "MD5": hashlib.md5,
    "ADLER32": _Adler32,
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
_LENGTHS = {"MD5": 32, "ADLER32": 8, "SHA1": 40, "SHA256": 64, "SHA512": 128}


def canonical(name: str) -> str | None:
    """The Globus name of an algorithm written in any case, with or without a dash (``sha-256``), or None."""
    key = name.strip().upper().replace("-", "")
    return key if key in ALGORITHMS else None


def digest_length(name: str) -> int:
    """Hex digits in a digest of the algorithm ``name`` (canonical)."""
    return _LENGTHS[name]


def new(name: str) -> Hash:
    return ALGORITHMS[name]()


def of(name: str, data: bytes) -> str:
    """The hex digest of ``data`` with the algorithm ``name`` (canonical): for contents read whole."""
    digest = new(name)
    digest.update(data)
    return digest.hexdigest()

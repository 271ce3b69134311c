"""Collections, the paths inside them and their access rules: what the transfer and ACL providers share.

This package is no provider (nothing mounts it); both providers import it, and it imports neither.

* :mod:`providers.collections.config`: what a collection is and where the configured ones come from
  (``APTK_COLLECTIONS_FILE``, or two local defaults under ``APTK_DATA_DIR``);
* :mod:`providers.collections.paths`: paths relative to a collection's root, normalized and confined;
* :mod:`providers.collections.rules`: the access rules of shared collections, kept in the toolkit's database.
"""

from __future__ import annotations

from typing import Any, Mapping

from toolkit import ApiError, BadActionRequest, ConfigurationError

from .config import (
    INBOX_ID,
    PROJECT_ID,
    Collection,
    CollectionError,
    Collections,
    collection_id,
    load_collections,
)

__all__ = [
    "INBOX_ID",
    "PROJECT_ID",
    "Collection",
    "CollectionError",
    "Collections",
    "collection_id",
    "find_collection",
    "load_collections",
    "misconfigured",
    "served_collections",
]


def misconfigured(exc: ConfigurationError) -> ApiError:
    """The answer to a request when the server's collections cannot be read: a 500 that says why."""
    return ApiError(f"The server's collections are misconfigured: {exc}", code="ConfigurationError")


def find_collection(collections: Collections, key: str, field: str) -> Collection:
    """The collection ``key`` names (its id or name), or a 400 naming ``field`` and the collections there are."""
    found = collections.get(key)
    if found is None:
        known = collections.names() or "none are configured"
        raise BadActionRequest(f"{field}: there is no collection {key!r} here (known: {known}).")
    return found


def served_collections(config: Mapping[str, Any]) -> Collections:
    """The app's collections, for a request: a configuration that cannot be read is :func:`misconfigured`."""
    try:
        return load_collections(config)
    except ConfigurationError as exc:
        raise misconfigured(exc) from None

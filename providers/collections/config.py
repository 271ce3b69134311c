"""Collections: named storage roots that transfers copy between and access rules apply to.

A collection has a UUID (``id``), a short ``name``, a ``display_name``, an fsspec ``url`` (``file://``,
``sftp://``, ``s3://``; a plain absolute path means ``file://``), the ``storage_options`` its filesystem is opened
with (credentials: they come from configuration, never from a request), its ``owners`` (principal URNs, or bare
identity UUIDs) and whether it is ``shared``.

Where they come from (app config first, then the environment):

``APTK_COLLECTIONS_FILE``
    A JSON file: a list of collections (or ``{"collections": [...]}``), e.g.::

        [{"id": "1c5e...", "name": "instrument", "display_name": "Microscope 3 output",
          "url": "sftp://scope3.example.org/data", "shared": false,
          "storage_options": {"username": "aptk", "key_filename": "${SCOPE3_KEY}"},
          "owners": ["urn:globus:auth:identity:6a3b4d5e-0000-4000-8000-000000000001"]},
         {"id": "9e0f...", "name": "project", "url": "s3://lab-project/", "shared": true,
          "storage_options": {"key": "${S3_KEY}", "secret": "${S3_SECRET}"}, "owners": [...]}]

    ``id`` defaults to a UUID derived from ``name`` (see :func:`collection_id`); ``display_name`` to ``name``;
    ``shared`` to false; ``owners`` to none. ``${VAR}`` in a string anywhere inside ``storage_options`` is
    replaced by the environment variable ``VAR`` when the collection is opened, so secrets can stay in the
    environment. A relative local path is taken relative to the file's directory. The file is re-read when it
    changes.

without that file
    Two local collections under ``<APTK_DATA_DIR>/collections/`` (created on first use):

    - ``inbox``, id ``{INBOX_ID}``, not shared;
    - ``project``, id ``{PROJECT_ID}``, shared;

    both owned by ``APTK_COLLECTION_OWNERS``.

    ``APTK_COLLECTION_OWNERS`` is a comma-separated list of identity UUIDs or principal URNs (default: none, so
    that nobody may read or write ``project`` until an owner is named and grants access).

Who may use a collection: anyone allowed to run the transfer provider, for a collection that is not shared; for a
shared one, its owners, and others as far as its access rules (the ``/acl`` provider) allow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping

from toolkit import ConfigurationError
from toolkit.documents import ALL_AUTHENTICATED_USERS, is_uuid, normalize_principal
from toolkit.settings import setting

__all__ = [
    "Collection",
    "CollectionError",
    "Collections",
    "collection_id",
    "load_collections",
    "INBOX_ID",
    "PROJECT_ID",
]

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/action-provider-toolkit/collections")


def collection_id(name: str) -> str:
    """The UUID a collection named ``name`` gets when its configuration gives none."""
    return str(uuid.uuid5(NAMESPACE, name))


INBOX_ID = collection_id("inbox")
PROJECT_ID = collection_id("project")
__doc__ = (__doc__ or "").replace("{INBOX_ID}", INBOX_ID).replace("{PROJECT_ID}", PROJECT_ID)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_KEYS = {"id", "name", "display_name", "url", "storage_options", "owners", "shared", "description"}


class CollectionError(Exception):
    """A collection that cannot be used as configured (missing secret, unreachable root)."""


def _principal(value: Any, where: str) -> str:
    """An owner in the canonical form principals are compared in (a bare UUID is an identity). What cannot be put
    in that form is a configuration error naming it, never an owner that matches nobody."""
    if value == ALL_AUTHENTICATED_USERS:
        return ALL_AUTHENTICATED_USERS
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: {value!r} is not a principal")
    try:
        return normalize_principal(value, uuid_kind="identity")
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc} (an owner is an identity UUID or a principal URN)") from None


@dataclasses.dataclass(frozen=True)
class Collection:
    id: str
    name: str
    display_name: str
    url: str
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    owners: frozenset[str] = frozenset()
    shared: bool = False
    create_root: bool = False

    @property
    def protocol(self) -> str:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "file"
        return {"local": "file", "ssh": "sftp", "s3a": "s3"}.get(scheme, scheme)

    def is_owner(self, principals: frozenset[str] | set[str]) -> bool:
        return bool(self.owners & set(principals))

    def resolved_storage_options(self) -> dict[str, Any]:
        """``storage_options`` with ``${VAR}`` replaced from the environment."""

        def expand(value: Any, where: str) -> Any:
            if isinstance(value, str):
                def one(match: re.Match[str]) -> str:
                    name = match.group(1)
                    if name not in os.environ:
                        raise CollectionError(
                            f"collection {self.name!r}: storage_options {where} needs the environment variable "
                            f"{name}, which is not set on the server"
                        )
                    return os.environ[name]

                return _ENV.sub(one, value)
            if isinstance(value, dict):
                return {k: expand(v, f"{where}.{k}") for k, v in value.items()}
            if isinstance(value, list):
                return [expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return value

        return expand(dict(self.storage_options), "")  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        """What a user may see about the collection (never its storage options)."""
        return {"id": self.id, "name": self.name, "display_name": self.display_name, "shared": self.shared}


class Collections:
    """The configured collections, found by id (any case) or by name."""

    def __init__(self, collections: list[Collection]) -> None:
        self._all = list(collections)
        self._by_key: dict[str, Collection] = {}
        for collection in collections:
            for key in {collection.id.lower(), collection.name}:
                if key in self._by_key:
                    raise ConfigurationError(f"two collections are called {key!r}")
                self._by_key[key] = collection

    def __iter__(self):
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def get(self, key: str) -> Collection | None:
        if not isinstance(key, str):
            return None
        return self._by_key.get(key.strip().lower()) or self._by_key.get(key.strip())

    def names(self) -> str:
        return ", ".join(f"{c.name} ({c.id})" for c in self._all)


def _parse(entry: Any, index: int, base: Path) -> Collection:
    where = f"collection #{index}"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: expected an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    name = entry.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigurationError(f"{where}: 'name' must be 1-64 letters, digits, '_', '.' or '-'")
    where = f"collection {name!r}"
    cid = entry.get("id") or collection_id(name)
    if not isinstance(cid, str) or not is_uuid(cid):
        raise ConfigurationError(f"{where}: 'id' must be a UUID")
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{where}: 'url' is required (file://, sftp://, s3://...)")
    if "://" not in url:
        url = "file://" + str((base / url).resolve()) if not os.path.isabs(url) else "file://" + url
    elif url.startswith(("file://", "local://")):
        path = url.split("://", 1)[1]
        if not os.path.isabs(path):
            url = "file://" + str((base / path).resolve())
    options = entry.get("storage_options") or {}
    if not isinstance(options, dict):
        raise ConfigurationError(f"{where}: 'storage_options' must be an object")
    owners = entry.get("owners") or []
    if isinstance(owners, str) or not isinstance(owners, list):
        raise ConfigurationError(f"{where}: 'owners' must be a list of principal URNs or identity UUIDs")
    shared = entry.get("shared", False)
    if not isinstance(shared, bool):
        raise ConfigurationError(f"{where}: 'shared' must be true or false")
    display = entry.get("display_name") or name
    return Collection(
        id=cid.lower(),
        name=name,
        display_name=str(display),
        url=url,
        storage_options=options,
        owners=frozenset(_principal(o, f"{where}: owners") for o in owners),
        shared=shared,
    )


def parse_collections(document: Any, base: Path) -> Collections:
    """Collections from a parsed configuration document."""
    if isinstance(document, dict) and "collections" in document:
        document = document["collections"]
    if not isinstance(document, list):
        raise ConfigurationError("the collections file must hold a JSON list of collections")
    return Collections([_parse(entry, i, base) for i, entry in enumerate(document)])


def default_collections(data_dir: str | os.PathLike[str], owners: str | None) -> Collections:
    root = Path(data_dir) / "collections"
    owner_set = frozenset(  # spaces around the commas are the list's, not the names'
        _principal(o.strip(), "APTK_COLLECTION_OWNERS") for o in (owners or "").split(",") if o.strip()
    )
    return Collections(
        [
            Collection(INBOX_ID, "inbox", "Inbox (local)", "file://" + str((root / "inbox").resolve()),
                       {}, owner_set, shared=False, create_root=True),
            Collection(PROJECT_ID, "project", "Project storage (local, shared)",
                       "file://" + str((root / "project").resolve()), {}, owner_set, shared=True,
                       create_root=True),
        ]
    )


_cache_lock = threading.Lock()
_cache: dict[tuple[Any, ...], Collections] = {}


def load_collections(config: Mapping[str, Any]) -> Collections:
    """The collections an app serves, per its config (see the module documentation)."""
    path = setting(config, "APTK_COLLECTIONS_FILE")
    if path:
        path = Path(str(path)).expanduser()
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigurationError(f"APTK_COLLECTIONS_FILE {str(path)!r}: {exc.strerror}") from None
        key: tuple[Any, ...] = ("file", str(path), stat.st_mtime_ns, stat.st_size)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"APTK_COLLECTIONS_FILE {str(path)!r} is not readable JSON: {exc}") from None
        collections = parse_collections(document, path.parent)
    else:
        data_dir = setting(config, "APTK_DATA_DIR")
        if not data_dir:
            raise ConfigurationError("APTK_DATA_DIR is not set; the default collections live under it")
        owners = setting(config, "APTK_COLLECTION_OWNERS", "")
        key = ("default", str(data_dir), owners)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
        collections = default_collections(data_dir, owners)
    with _cache_lock:
        if len(_cache) > 32:
            _cache.clear()
        _cache[key] = collections
    return collections

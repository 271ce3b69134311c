"""Helpers for the transfer and ACL provider tests: an app serving both over collections a test describes."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from providers.acl import provider as acl_provider
from providers.transfer import OPEN_STORAGE
from providers.transfer import provider as transfer_provider
from providers.transfer.storage import LocalStorage
from toolkit import get_toolkit
from toolkit.server import create_app
from toolkit.testing import TestClient, TokenAuthority

OWNER = "11111111-1111-4111-8111-111111111111"
USER = "22222222-2222-4222-8222-222222222222"
GROUP = "33333333-3333-4333-8333-333333333333"
SCOPES = [transfer_provider.globus_auth_scope, acl_provider.globus_auth_scope]


@dataclasses.dataclass
class Site:
    """An app serving /transfer and /acl over some collections, and clients for callers."""

    app: Any
    authority: TokenAuthority
    data_dir: Path
    roots: dict[str, Path]

    def client(self, identity: str = USER, prefix: str = "/transfer", groups: tuple[str, ...] = ()) -> TestClient:
        return TestClient(self.app, prefix, self.authority.token(identity, groups=groups, scopes=SCOPES),
                          self.authority)

    def transfer(self, identity: str = USER, **kw: Any) -> TestClient:
        return self.client(identity, "/transfer", **kw)

    def acl(self, identity: str = OWNER, **kw: Any) -> TestClient:
        return self.client(identity, "/acl", **kw)

    def stop(self) -> None:
        get_toolkit(self.app).runtime.stop()


def local_collection(name: str, root: Path, *, shared: bool = False, owners=(OWNER,)) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.test")), "name": name, "url": f"file://{root}",
            "shared": shared, "owners": list(owners)}


def local_storage(cls: type[LocalStorage] = LocalStorage, **options: Any) -> dict[str, Any]:
    """App config that has the transfer provider open local collections as ``cls`` (a test's subclass of
    :class:`LocalStorage`, with ``options``): ``make_site(**local_storage(MyStorage))``."""

    def open_storage(collection):
        return cls(collection, collection.url.split("://", 1)[1], **options)

    return {OPEN_STORAGE: open_storage}


@pytest.fixture
def make_site(tmp_path):
    """``make_site(collections=None, **config)``: collections are dicts as in the collections file; by default
    ``src`` and ``dst`` (local, not shared) and ``shared`` (local, shared, owned by OWNER)."""
    sites: list[Site] = []

    def make(collections: list[dict[str, Any]] | None = None, **config: Any) -> Site:
        n = len(sites)
        base = tmp_path / f"site{n}"
        if collections is None:
            collections = [
                local_collection("src", base / "src"),
                local_collection("dst", base / "dst"),
                local_collection("shared", base / "shared", shared=True),
            ]
        file = base / "collections.json"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(collections))
        authority = TokenAuthority()
        settings = {"APTK_DATA_DIR": str(base / "data"), "APTK_COLLECTIONS_FILE": str(file), **config}
        app = create_app(settings, providers=[("/transfer", transfer_provider), ("/acl", acl_provider)],
                         verifier=authority.verifier)
        roots = {c["name"]: Path(c["url"][len("file://"):]) for c in collections if c["url"].startswith("file://")}
        site = Site(app, authority, base / "data", roots)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()


@pytest.fixture
def site(make_site) -> Site:
    return make_site()


def items(*pairs: tuple[str, str] | tuple[str, str, bool]) -> list[dict[str, Any]]:
    out = []
    for pair in pairs:
        source, destination, *rest = pair
        out.append({"source_path": source, "destination_path": destination, "recursive": bool(rest and rest[0])})
    return out


def body(source: str, destination: str, *pairs, **options: Any) -> dict[str, Any]:
    return {"source_endpoint_id": source, "destination_endpoint_id": destination, "transfer_items": items(*pairs),
            **options}


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root``, by relative path, with its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(root: Path, files: dict[str, bytes | int]) -> dict[str, bytes]:
    """Write files (content, or a size for random content); returns what was written."""
    import os

    written = {}
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(content) if isinstance(content, int) else content
        path.write_bytes(data)
        written[rel] = data
    return written

"""Any fsspec filesystem (``s3://`` and other object stores): whole objects, no links, no settable times.

Objects appear whole when their upload completes (an aborted multipart upload leaves nothing; one a killed process
left is recorded as it began and aborted when the action ends); there are no
links, no empty directories and no settable modification times (``preserve_timestamp`` cannot apply to S3; its
``LastModified`` is the upload time). The filesystem is thread-safe: :meth:`Storage.fork` is the same object.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterator

from providers.collections import Collection, CollectionError, paths
from providers.collections.paths import PathOutsideCollection

from .base import Entry, FileStat, Reader, Storage

__all__ = ["FsspecStorage", "connect", "filesystem"]

OBJECT_STORES = ("s3", "s3a", "gcs", "gs", "abfs", "az")  # protocols without folders


def _mtime(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None



class _FsspecWriter:
    def __init__(self, fs: Any, path: str, block_size: int) -> None:
        self.file = fs.open(path, "wb", block_size=block_size)
        self.on_upload: Callable[[str], None] | None = None
        self.upload_id: str | None = None
        initiate = getattr(self.file, "_initiate_upload", None)
        if initiate is not None:
            def initiate_upload() -> None:  # s3fs: a multipart upload begins, before its first part
                initiate()
                upload = getattr(self.file, "mpu", None)
                if isinstance(upload, dict) and upload.get("UploadId"):
                    self.upload_id = upload["UploadId"]
                    if self.on_upload is not None:
                        self.on_upload(upload["UploadId"])

            self.file._initiate_upload = initiate_upload

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(bytes(data) if isinstance(data, memoryview) else data)

    def commit(self) -> None:
        self.file.close()

    def abort(self) -> None:
        discard = getattr(self.file, "discard", None)
        try:
            if discard is not None:
                try:
                    discard()
                finally:  # an aborted upload must never be completed by close(), nor when the file is collected
                    self.file.closed = True
            else:
                self.file.close()
        except Exception:
            pass


class FsspecStorage(Storage):
    """Any fsspec filesystem (S3 and others): whole objects, no links, no settable times."""

    def __init__(self, collection: Collection, fs: Any, root: str) -> None:
        super().__init__(collection)
        self.fs = fs
        self.root = root.rstrip("/") if root not in ("", "/") else root

    def full(self, rel: str) -> str:
        """The filesystem's path of ``rel`` (checked: an object key never climbs out of the root's prefix)."""
        if not self.checked(rel):
            return self.root
        return f"{self.root.rstrip('/')}/{rel}" if self.root else rel

    def _rel(self, path: str) -> str:
        base = self.root.rstrip("/")
        path = path.rstrip("/")
        if base and path.startswith(base + "/"):
            return path[len(base) + 1:]
        if not base:
            return path.lstrip("/")
        return ""

    @staticmethod
    def _from_info(info: dict[str, Any]) -> FileStat:
        kind = info.get("type")
        mtime = None
        for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
            if info.get(key) is not None:
                mtime = _mtime(info[key])
                if mtime is not None:
                    break
        if kind == "directory":
            return FileStat("dir", 0, mtime)
        if kind == "link":
            return FileStat("link", 0, mtime)
        return FileStat("file", int(info.get("size") or 0), mtime)

    def confine(self, rel: str) -> None:
        self.checked(rel)  # no links: a normalized path stays inside

    def stat(self, rel: str) -> FileStat | None:
        try:
            return self._from_info(self.fs.info(self.full(rel)))
        except FileNotFoundError:
            return None

    def walk(self, rel: str, *, follow_links: bool = True,
             prune: Callable[[str, FileStat], bool] | None = None,
             check: Callable[[], None] | None = None) -> Iterator[Entry]:
        try:
            found = self.fs.find(self.full(rel), withdirs=True, detail=True)
        except FileNotFoundError:
            return
        except OSError as exc:
            yield Entry(rel, None, exc)
            return
        pruned: list[str] = []
        for path in sorted(found):
            if check is not None:
                check()
            child = self._rel(path)
            if not child or child == rel or not paths.is_within(child, rel):
                continue
            try:
                self.checked(child)  # an object key such as "a/../b" names no path inside the collection
            except PathOutsideCollection as exc:
                yield Entry(child, None, exc)
                continue
            if any(paths.is_within(child, p) for p in pruned):
                continue
            st = self._from_info(found[path])
            if prune is not None and prune(child, st):
                if st.kind == "dir":
                    pruned.append(child)
                continue
            yield Entry(child, st)

    def open_read(self, rel: str, chunk_size: int = 8 * 1024 * 1024) -> Reader:
        # No read-ahead cache (s3fs would otherwise buffer 50 MiB per open file): each read of a chunk is one
        # ranged request, so memory stays at one chunk per thread.
        path = self.full(rel)
        try:
            reader: Reader = self.fs.open(path, "rb", block_size=chunk_size, cache_type="none")
        except TypeError:
            reader = self.fs.open(path, "rb")
        return reader

    def open_write(self, rel: str, token: str, chunk_size: int) -> _FsspecWriter:
        return _FsspecWriter(self.fs, self.full(rel), max(chunk_size, 5 * 1024 * 1024))

    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        # Object stores have no folders: nothing to make, whatever the depth of the key.
        self.checked(rel)
        if self.protocol_has_dirs():
            self.fs.makedirs(self.full(rel), exist_ok=True)

    def protocol_has_dirs(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        return not any(p in OBJECT_STORES for p in protocols)

    def abort_upload(self, rel: str, upload_id: str) -> None:
        abort = getattr(self.fs, "abort_mpu", None)
        if abort is None:
            return
        bucket, key, _version = self.fs.split_path(self.full(rel))
        try:
            abort(bucket, key, upload_id)
        except FileNotFoundError:
            pass  # completed or aborted already

    def remove(self, rel: str, kind: str) -> None:
        self.checked(rel)
        if kind == "dir":
            if self.protocol_has_dirs():
                self.fs.rmdir(self.full(rel))
            return
        self.fs.rm_file(self.full(rel))




def filesystem(collection: Collection) -> tuple[Any, str]:
    """The collection's fsspec filesystem, opened with its storage options (``${VAR}`` expanded), and its root
    there. Raises :class:`CollectionError` when the package it needs is missing or it cannot connect."""
    from fsspec.core import url_to_fs

    options = collection.resolved_storage_options()
    options.setdefault("skip_instance_cache", True)
    if collection.protocol == "s3":
        options.setdefault("use_listings_cache", False)
    try:
        fs, root = url_to_fs(collection.url, **options)
    except ImportError as exc:
        raise CollectionError(
            f"collection {collection.name!r}: the {collection.protocol}:// filesystem needs a package that is not "
            f"installed ({exc})"
        ) from None
    except Exception as exc:
        raise CollectionError(f"collection {collection.name!r}: cannot connect ({type(exc).__name__}: {exc})") from None
    return fs, root


def connect(collection: Collection) -> FsspecStorage:
    fs, root = filesystem(collection)
    return FsspecStorage(collection, fs, root)

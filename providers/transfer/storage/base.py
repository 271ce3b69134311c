"""The contract every storage backend keeps, and the optional capabilities the engine makes use of.

A backend is a subclass of :class:`Storage`. Every method takes a path *relative to the collection root*: a
normalized POSIX path as :func:`providers.collections.paths.normalize` makes it (``""`` is the root, no ``.``,
``..``, empty parts, leading ``/`` or NUL byte). A backend builds the path it hands to its filesystem only
through :meth:`Storage.checked`, which refuses anything else with
:class:`~providers.collections.paths.PathOutsideCollection`, so that a caller's slip can never reach outside
the root. Where the filesystem has symbolic links, the backend also refuses a path that leads outside the root
through one (:meth:`Storage.confine`), when a transfer is planned and again when a file is opened.

What the engine needs of every backend (abstract here): :meth:`~Storage.confine`, :meth:`~Storage.stat`,
:meth:`~Storage.walk`, :meth:`~Storage.open_read` (a :class:`Reader`), :meth:`~Storage.open_write` (a
:class:`Writer` whose data appears under its name whole, at :meth:`Writer.commit`, or not at all),
:meth:`~Storage.makedirs` and :meth:`~Storage.remove`. :meth:`~Storage.fork`, :meth:`~Storage.close` and
:meth:`~Storage.resolve` have defaults that suit a thread-safe filesystem without links.

What a backend may offer besides, found by ``isinstance`` against the runtime-checkable protocols below (through
:func:`capable` and the functions after it, which ask once per class):

* on the storage: :class:`SettableTimes` (``preserve_timestamp`` applies), :class:`LocalDisk` (files on this
  machine: the engine confines every destination file while planning and copies disk to disk on per-core lanes),
  :class:`WholeFiles` (a small file read, or written and read back, in one call each: the engine's way for small
  files between two such storages);
* on a reader: :class:`ReadsInto` (no copy of each chunk), :class:`HasDescriptor` (an OS file descriptor: the
  source side of a kernel copy);
* on a writer: :class:`BeginsUploads` (a multipart upload, recorded as it begins so that it can be aborted
  after a crash; the storage then :class:`AbortsUploads`), :class:`KernelCopy` (``copy_file_range``/``sendfile``
  from a descriptor), :class:`ReadsBack` (what was written can be verified before it gets its name),
  :class:`ReportsWritten` (size and time of the committed file, sparing a ``stat``).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Iterator, Protocol, TypeGuard, runtime_checkable

from providers.collections import Collection
from providers.collections.paths import PathOutsideCollection

__all__ = [
    "AbortsUploads",
    "BeginsUploads",
    "Entry",
    "FileStat",
    "HasDescriptor",
    "KernelCopy",
    "LocalDisk",
    "OpenStorage",
    "Reader",
    "ReadsBack",
    "ReadsInto",
    "ReportsWritten",
    "SettableTimes",
    "Storage",
    "WholeFiles",
    "Writer",
    "aborts_uploads",
    "begins_uploads",
    "capable",
    "has_descriptor",
    "kernel_copy",
    "local_disk",
    "reads_back",
    "reads_into",
    "reports_written",
    "settable_times",
    "temp_name",
    "whole_files",
]


@dataclasses.dataclass(frozen=True, slots=True)  # slots: one object each (less for the GC)
class FileStat:
    kind: str  # "file", "dir", "link" (only from walk(follow_links=False)), "other"
    size: int = 0
    mtime: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)  # slots: one object each (less for the GC)
class Entry:
    """One thing found by :meth:`Storage.walk`: a path and what it is (``stat``), or why it could not be read
    (``error``); exactly one of the two is set."""

    rel: str
    stat: FileStat | None = None
    error: BaseException | None = None


class Reader(Protocol):
    """An open source file: ``read`` answers at most ``size`` bytes, ``b""`` at the end."""

    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


class Writer(Protocol):
    """A destination file being written: nothing appears under its name before :meth:`commit`; :meth:`abort`
    leaves nothing behind (best effort, never raising)."""

    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


@runtime_checkable
class ReadsInto(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


@runtime_checkable
class HasDescriptor(Protocol):
    fd: int


@runtime_checkable
class KernelCopy(Protocol):
    def copy_from(self, source_fd: int, size: int) -> int:
        """Copy up to ``size`` bytes from ``source_fd`` without passing them through Python; 0 at the end."""
        ...


@runtime_checkable
class ReadsBack(Protocol):
    def read_back(self, buffer: memoryview) -> Iterator[memoryview]:
        """What was written, read again (into ``buffer``) before :meth:`Writer.commit`."""
        ...


@runtime_checkable
class ReportsWritten(Protocol):
    written: FileStat | None  # set by commit


@runtime_checkable
class SettableTimes(Protocol):
    def set_mtime(self, rel: str, mtime: float) -> None: ...


@runtime_checkable
class LocalDisk(Protocol):
    def local_path(self, rel: str) -> str:
        """The resolved path of ``rel`` on this machine's disk (refused if it leads outside the root)."""
        ...

    def confine_files(self, rels: list[str],
                      check: Callable[[], None] | None = None) -> list[tuple[str, PathOutsideCollection]]:
        """:meth:`Storage.confine` for each of ``rels``: those refused, with why; ``check`` between folders."""
        ...


@runtime_checkable
class BeginsUploads(Protocol):
    """A writer whose file goes up as a multipart upload (S3): invisible until complete, and left behind, taking
    space, by a process killed meanwhile. ``on_upload(upload_id)``, when set, is called as the upload begins,
    before its first part; ``upload_id`` is then that upload's."""

    on_upload: Callable[[str], None] | None
    upload_id: str | None


@runtime_checkable
class AbortsUploads(Protocol):
    def abort_upload(self, rel: str, upload_id: str) -> None:
        """Abort the multipart upload ``upload_id`` of ``rel`` (one already completed or aborted: nothing)."""
        ...


@runtime_checkable
class WholeFiles(Protocol):
    def read_whole(self, rel: str, size: int, *, only_compared: bool = False) -> bytes | None:
        """The regular file ``rel`` whole, if it holds ``size`` bytes; None if it is not a regular file of that
        size (it is then read as a stream, which says what is wrong, if anything). Errors as :meth:`open_read`.
        ``only_compared``: the bytes will only be compared with a regular file's (what is not one may be found
        out by reading it, or raise)."""
        ...

    def write_whole(self, rel: str, token: str, data: bytes,
                    verify: Callable[[bytes], bool] | None) -> FileStat | None:
        """Write ``data`` as :meth:`Storage.open_write` and commit would, in one call: nothing appears under
        ``rel`` before it is complete. With ``verify``, what was written is read back before the file gets its
        name and given to ``verify``; if that answers False the file is dropped and None returned. Otherwise
        the size and time of the file written."""
        ...


_capabilities: dict[tuple[type, type], bool] = {}


def capable(obj: object, capability: type) -> bool:
    """``isinstance(obj, capability)`` for the protocols above, answered once per class: a runtime protocol check
    looks up every member each time, which costs more than copying a small file. A backend's storages, readers and
    writers have their capabilities by class, not object by object. The functions below narrow the type too."""
    key = (type(obj), capability)
    found = _capabilities.get(key)
    if found is None:
        found = _capabilities[key] = isinstance(obj, capability)
    return found


def reads_into(reader: object) -> TypeGuard[ReadsInto]:
    return capable(reader, ReadsInto)


def has_descriptor(reader: object) -> TypeGuard[HasDescriptor]:
    return capable(reader, HasDescriptor)


def kernel_copy(writer: object) -> TypeGuard[KernelCopy]:
    return capable(writer, KernelCopy)


def reads_back(writer: object) -> TypeGuard[ReadsBack]:
    return capable(writer, ReadsBack)


def reports_written(writer: object) -> TypeGuard[ReportsWritten]:
    return capable(writer, ReportsWritten)


def settable_times(storage: object) -> TypeGuard[SettableTimes]:
    return capable(storage, SettableTimes)


def begins_uploads(writer: object) -> TypeGuard[BeginsUploads]:
    return capable(writer, BeginsUploads)


def aborts_uploads(storage: object) -> TypeGuard[AbortsUploads]:
    return capable(storage, AbortsUploads)


def local_disk(storage: object) -> TypeGuard[LocalDisk]:
    return capable(storage, LocalDisk)


def whole_files(storage: object) -> TypeGuard[WholeFiles]:
    return capable(storage, WholeFiles)


def temp_name(name: str, token: str) -> str:
    """A hidden name next to the destination; the same for the same (file, token), so a rerun reuses it."""
    return f".{name[:200]}.aptk-{token}.part"


class Storage(abc.ABC):
    """The operations a transfer needs on one collection. Paths are relative to the collection root.

    One storage object is used by one thread at a time; :meth:`fork` gives another thread its own.
    """

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    @staticmethod
    def checked(rel: str) -> str:
        """``rel`` if it is a normalized path relative to the root, else :class:`PathOutsideCollection`.

        Backends pass every path through this before using it: it is what keeps ``..``, an absolute path or a
        NUL byte from reaching the filesystem, whoever the caller."""
        if (type(rel) is str and "/." not in rel and "//" not in rel and "\x00" not in rel
                and not rel.startswith(("/", ".")) and not rel.endswith("/")):
            return rel  # the common case, decided without splitting: no part is "", "." or ".."
        if not isinstance(rel, str):
            raise PathOutsideCollection(str(rel), "is not a string")
        if "\x00" in rel:
            raise PathOutsideCollection(rel, "contains a NUL byte")
        if rel.startswith("/"):
            raise PathOutsideCollection(rel, "is absolute, not relative to the collection root")
        if rel and any(part in ("", ".", "..") for part in rel.split("/")):
            raise PathOutsideCollection(rel, "is not a normalized path inside the collection ('..', '.', '//')")
        return rel

    # --- lifetime -------------------------------------------------------------------------------------------------

    def fork(self) -> "Storage":
        """A storage for another thread (the same object where the filesystem is thread-safe)."""
        return self

    def close(self) -> None:
        """Release what the storage holds (connections, open folders); it is not used afterwards."""
        return None  # nothing held here

    # --- confinement ----------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def confine(self, rel: str) -> None:
        """Raise :class:`PathOutsideCollection` if ``rel`` is not a normalized relative path or leads outside the
        root (through a symbolic link); what does not exist yet is fine."""

    def resolve(self, rel: str) -> str:
        """Where ``rel`` really is (links resolved), relative to the root; ``rel`` itself where nothing exists.
        Access rules are checked on this. Without links: ``rel``."""
        return self.checked(rel)

    # --- reading --------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def stat(self, rel: str) -> FileStat | None:
        """What ``rel`` is (links followed), or None if nothing is there."""

    @abc.abstractmethod
    def walk(self, rel: str, *, follow_links: bool = True,
             prune: Callable[[str, FileStat], bool] | None = None,
             check: Callable[[], None] | None = None) -> Iterator[Entry]:
        """Everything beneath ``rel`` (not ``rel`` itself), a folder before what it holds. ``prune(rel, stat)``
        true skips an entry (and, for a folder, all beneath it); ``check`` is called between entries and raises to
        stop the walk. A link leading outside the root is an :class:`Entry` with a :class:`PathOutsideCollection`
        error; with ``follow_links=False`` links are reported as kind ``link`` and not followed."""

    @abc.abstractmethod
    def open_read(self, rel: str, chunk_size: int) -> Reader:
        """Open the regular file ``rel``; reads will ask for ``chunk_size`` bytes at a time."""

    # --- writing --------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def open_write(self, rel: str, token: str, chunk_size: int) -> Writer:
        """Start writing ``rel`` (its folder exists); ``token`` names the transfer (for temporary names, the same
        on a rerun), writes come ``chunk_size`` bytes at a time. A link at ``rel`` is replaced, never written
        through."""

    @abc.abstractmethod
    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        """Make the folder ``rel`` and any missing above it; ``check`` is called between folders (it raises to
        stop). Where a filesystem has no folders this does nothing."""

    @abc.abstractmethod
    def remove(self, rel: str, kind: str) -> None:
        """Remove the file (or link) ``rel``, or the empty folder ``rel`` when ``kind`` is ``dir``."""


OpenStorage = Callable[[Collection], Storage]
"""Connects to a collection's storage (:func:`providers.transfer.storage.open_storage`); raises
:class:`~providers.collections.CollectionError` when it cannot."""

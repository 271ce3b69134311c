"""Storage behind a collection: one small contract over local disk, SFTP and any other fsspec filesystem.

The contract, and the optional capabilities the engine uses where a backend has them, are in
:mod:`providers.transfer.storage.base`. One module per backend, each with a ``connect(collection)``:

* :mod:`~providers.transfer.storage.local` (``file://``): :class:`LocalStorage`;
* :mod:`~providers.transfer.storage.sftp` (``sftp://``): :class:`SFTPStorage`;
* :mod:`~providers.transfer.storage.fsspec` (``s3://`` and any other fsspec protocol): :class:`FsspecStorage`.

:func:`open_storage` picks the backend by the collection's protocol (:data:`BACKENDS`; fsspec for the rest).
"""

from __future__ import annotations

import importlib

from providers.collections import Collection

from .base import (
    AbortsUploads,
    BeginsUploads,
    Entry,
    FileStat,
    HasDescriptor,
    KernelCopy,
    LocalDisk,
    OpenStorage,
    Reader,
    ReadsBack,
    ReadsInto,
    ReportsWritten,
    SettableTimes,
    Storage,
    WholeFiles,
    Writer,
    aborts_uploads,
    begins_uploads,
    capable,
    has_descriptor,
    kernel_copy,
    local_disk,
    reads_back,
    reads_into,
    reports_written,
    settable_times,
    whole_files,
)
from .fsspec import FsspecStorage
from .local import LocalStorage
from .sftp import SFTPStorage

__all__ = [
    "AbortsUploads",
    "BACKENDS",
    "BeginsUploads",
    "Entry",
    "FileStat",
    "FsspecStorage",
    "HasDescriptor",
    "KernelCopy",
    "LocalDisk",
    "LocalStorage",
    "OpenStorage",
    "Reader",
    "ReadsBack",
    "ReadsInto",
    "ReportsWritten",
    "SFTPStorage",
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
    "open_storage",
    "reads_back",
    "reads_into",
    "reports_written",
    "settable_times",
    "whole_files",
]

#: The module (in this package) whose ``connect(collection)`` opens a protocol's storage; fsspec for the rest.
BACKENDS: dict[str, str] = {"file": "local", "sftp": "sftp"}


def open_storage(collection: Collection) -> Storage:
    """Connect to a collection's storage. Raises :class:`~providers.collections.CollectionError` when it cannot
    be reached."""
    module = importlib.import_module(f".{BACKENDS.get(collection.protocol, 'fsspec')}", __name__)
    storage: Storage = module.connect(collection)
    return storage

"""Storage behind a collection: one small interface over local disk, SFTP and any other fsspec filesystem.

Every method takes a path *relative to the collection root* (see :mod:`providers.transfer.paths`), so that no
caller ever builds a path on the server itself.

* :class:`LocalStorage` (``file://``) uses the operating system directly: symbolic links are resolved
  (``os.path.realpath``) and anything leading outside the root is refused, when a transfer is planned and again
  when each file is opened (relative to its folder, held open, never through a link unchecked); a file is
  written without a name (``O_TMPFILE``) or under a hidden temporary one, and linked or renamed into place once
  complete and verified, so that a destination name holds the old file or the whole new one, never a part.
* :class:`SFTPStorage` (``sftp://``) is fsspec's SFTP filesystem (paramiko) with the same guarantees: links are
  resolved by the server (``realpath``), reads and writes are pipelined, files are renamed into place
  (``posix-rename``), modification times can be set.
* :class:`FsspecStorage` (``s3://`` and any other fsspec protocol): objects appear whole when their upload
  completes (an aborted multipart upload leaves nothing); there are no links, no empty directories and no
  settable modification times (``preserve_timestamp`` cannot apply to S3; its ``LastModified`` is the upload
  time).

One storage object is used by one thread at a time; :meth:`Storage.fork` gives another thread its own
(a new SSH connection for SFTP; the same object where the filesystem is thread-safe).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import errno
import os
import posixpath
import stat as stat_module
from typing import Any, Callable, Iterator, Protocol

from . import paths
from .collections import Collection, CollectionError
from .paths import PathOutsideCollection

__all__ = ["Entry", "FileStat", "Reader", "Writer", "Storage", "open_storage"]


@dataclasses.dataclass(frozen=True)
class FileStat:
    kind: str  # "file", "dir", "link" (only from walk(follow_links=False)), "other"
    size: int = 0
    mtime: float | None = None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One thing found by :meth:`Storage.walk`: a path and what it is, or why it could not be read."""

    rel: str
    stat: FileStat | None = None
    error: BaseException | None = None


class Reader(Protocol):
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


class Writer(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def _temp_name(name: str, token: str) -> str:
    """A hidden name next to the destination; the same for the same (file, token), so a rerun reuses it."""
    return f".{name[:200]}.aptk-{token}.part"


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


class Storage:
    """The operations a transfer needs. Paths are relative to the collection root."""

    supports_mtime = True
    supports_empty_dirs = True
    supports_links = True
    concurrent_connections = True

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def fork(self) -> "Storage":
        return self

    def close(self) -> None:
        pass

    def confine(self, rel: str) -> None:
        """Raise :class:`PathOutsideCollection` if ``rel`` leads outside the root (through a link)."""

    def resolve(self, rel: str) -> str:
        """Where ``rel`` really is (links resolved), relative to the root; ``rel`` itself where nothing exists."""
        return rel

    def stat(self, rel: str) -> FileStat | None:
        raise NotImplementedError

    def walk(self, rel: str, *, follow_links: bool = True,
             prune: Callable[[str, FileStat], bool] | None = None,
             check: Callable[[], None] | None = None) -> Iterator[Entry]:
        """Everything beneath ``rel``, depth first. ``check`` is called between entries (it raises to stop)."""
        raise NotImplementedError

    def open_read(self, rel: str) -> Reader:
        raise NotImplementedError

    def open_write(self, rel: str, token: str, chunk_size: int) -> Writer:
        raise NotImplementedError

    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        """Make the folder ``rel`` and any missing above it; ``check`` is called between folders."""
        raise NotImplementedError

    def remove(self, rel: str, kind: str) -> None:
        raise NotImplementedError

    def set_mtime(self, rel: str, mtime: float) -> bool:
        return False

    def local_path(self, rel: str) -> str | None:
        """A path on this machine's disk, where there is one (fast local copies)."""
        return None


# --- local disk -----------------------------------------------------------------------------------------------


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_DIRECTORY_CACHE = 64


class _LocalReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, size: int) -> bytes:
        return os.read(self.fd, size)

    def readinto(self, buffer: memoryview) -> int:
        return os.readv(self.fd, [buffer])

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


_TMPFILE = getattr(os, "O_TMPFILE", 0)
_anonymous_files = [bool(_TMPFILE) and os.path.isdir("/proc/self/fd")]  # cleared if the system says no


class _LocalWriter:
    """Writes a new file that has no name until it is complete (``O_TMPFILE``, then linked into place), or,
    where the filesystem cannot, ``.<name>.aptk-<token>.part`` renamed into place. Either way the destination
    name holds the old file or the whole new one, and a crash leaves no partial file under it."""

    def __init__(self, dir_fd: int, name: str, token: str) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.temp = _temp_name(name, token)
        self.named = True
        self.written: FileStat | None = None
        try:
            if _anonymous_files[0]:
                try:
                    self.fd = os.open(".", os.O_RDWR | _TMPFILE | _CLOEXEC, 0o666, dir_fd=dir_fd)
                    self.named = False
                    return
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                        raise
                    _anonymous_files[0] = False
            self.fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC, 0o666,
                              dir_fd=dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def copy_from(self, source_fd: int, size: int) -> int:
        """Copy up to ``size`` bytes from ``source_fd`` in the kernel; bytes copied (0 at the end)."""
        try:
            return os.copy_file_range(source_fd, self.fd, size)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                                               errno.EOPNOTSUPP):
                raise
            return os.sendfile(self.fd, source_fd, None, size)

    def read_back(self, buffer: memoryview) -> Iterator[memoryview]:
        """What was written, read again before the file gets its name (verification)."""
        offset = 0
        while True:
            n = os.preadv(self.fd, [buffer], offset)
            if not n:
                return
            yield buffer[:n]
            offset += n

    def _link(self, name: str) -> None:
        os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self.dir_fd, follow_symlinks=True)

    def commit(self) -> None:
        st = os.fstat(self.fd)
        self.written = FileStat("file", st.st_size, st.st_mtime)
        if not self.named:
            try:
                self._link(self.name)
            except FileExistsError:
                # Something is there already: give the file its temporary name, then rename it over.
                try:
                    os.unlink(self.temp, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    pass
                self._link(self.temp)
                self.named = True
            else:
                self._release()
                return
        os.close(self.fd)
        self.fd = -1
        try:
            os.replace(self.temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except IsADirectoryError:
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file", self.name) from None
        self._release()

    def _release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def abort(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self.dir_fd >= 0:
            if self.named:
                try:
                    os.unlink(self.temp, dir_fd=self.dir_fd)
                except OSError:
                    pass
            os.close(self.dir_fd)
            self.dir_fd = -1


class _NotThere(FileNotFoundError):
    """A folder on the way does not exist (yet); ``where`` is where the path would be, relative to the root,
    once the links on the way that do exist are resolved."""

    def __init__(self, where: str) -> None:
        super().__init__(errno.ENOENT, "No such file or directory")
        self.where = where


@dataclasses.dataclass
class _Frame:
    """One open folder of :meth:`LocalStorage.walk`."""

    rel: str
    real: str  # where it really is, relative to the root
    ident: tuple[int, int]  # st_dev, st_ino
    fd: int  # -1 once closed to spare descriptors (re-opened when needed)
    via_link: bool
    entries: list[tuple[str, os.stat_result]]
    index: int = 0


_WALK_OPEN_FOLDERS = 64  # descriptors a walk keeps open at most, however deep it goes


class LocalStorage(Storage):
    """A directory on this machine.

    Folders are opened one component at a time from the root (or from a folder already open), each relative to
    the one before (``openat``) with ``O_NOFOLLOW | O_DIRECTORY``: the cost is linear in the depth of a path and
    no path is ever too long for the system. A symbolic link met on the way is resolved and followed only if it
    stays inside the root. Files are opened relative to their open folder and never through a link as the last
    component (``O_NOFOLLOW``; a link there is resolved and checked first). A folder swapped for a link once
    opened changes nothing: the open folder is used.
    """

    def __init__(self, collection: Collection, root: str) -> None:
        super().__init__(collection)
        if collection.create_root:
            os.makedirs(root, exist_ok=True)
        if not os.path.isdir(root):
            raise CollectionError(f"collection {collection.name!r}: its root directory does not exist")
        self.root = os.path.realpath(root)
        self._init_caches()

    def _init_caches(self) -> None:
        # Open folders by path (relative to the root): descriptor and where the folder really is.
        self._dirs: "collections.OrderedDict[str, tuple[int, str]]" = collections.OrderedDict()
        # Folders found missing while planning, and where they would be: their subfolders are missing too.
        self._missing: dict[str, str] = {}

    def fork(self) -> "LocalStorage":
        other = LocalStorage.__new__(LocalStorage)
        Storage.__init__(other, self.collection)
        other.root = self.root
        other._init_caches()
        return other

    def close(self) -> None:
        self._missing.clear()
        while self._dirs:
            _, (fd, _real) = self._dirs.popitem()
            try:
                os.close(fd)
            except OSError:
                pass

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def _relative(self, real: str) -> str:
        return "" if real == self.root else real[len(self.root.rstrip(os.sep)) + 1:].replace(os.sep, "/")

    def _through_link(self, real_folder: str, name: str, rel: str) -> str:
        """Where the link ``name`` in the folder that really is ``real_folder`` leads (relative to the root);
        refused if outside. Resolving costs the depth of the path, paid only where a link is."""
        real = os.path.realpath(os.path.join(self.root, real_folder, name) if real_folder
                                else os.path.join(self.root, name))
        if not self._inside(real):
            raise PathOutsideCollection(paths.display(rel), "leads outside the collection through a symbolic link")
        return self._relative(real)

    def _remember(self, rel: str, fd: int, real: str) -> None:
        self._dirs[rel] = (fd, real)
        if len(self._dirs) > _DIRECTORY_CACHE:
            _, (old, _real) = self._dirs.popitem(last=False)
            os.close(old)

    def _forget(self, rel: str) -> None:
        for key in [k for k in self._dirs if paths.is_within(k, rel)]:
            os.close(self._dirs.pop(key)[0])

    def _lookup(self, rel: str, *, create: bool = False,
                check: Callable[[], None] | None = None) -> tuple[int, str]:
        """An open descriptor of the folder ``rel`` (kept by the storage: do not close it) and where it really
        is, relative to the root. Walked from the nearest folder already open, one component at a time; with
        ``create``, missing folders are made on the way. ``check`` is called before each component (cancel).

        Raises :class:`_NotThere` (a folder is missing), :class:`NotADirectoryError` (a file is in the way) or
        :class:`PathOutsideCollection` (a link leads outside)."""
        cached = self._dirs.get(rel)
        if cached is not None:
            self._dirs.move_to_end(rel)
            return cached
        parent = paths.parent(rel) if rel else ""
        if rel and parent in self._dirs:
            base, parts = parent, [paths.name(rel)]
        else:
            base, parts = "", rel.split("/") if rel else []
        cached = self._dirs.get(base)
        if cached is None:
            fd = os.open(self.root, _DIRECTORY_FLAGS)
            self._remember("", fd, "")
            if not parts:
                return fd, ""
            current, real = fd, ""
        else:
            self._dirs.move_to_end(base)
            current, real = cached
        real_parts = real.split("/") if real else []
        owned = False
        try:
            for i, part in enumerate(parts):
                if check is not None:
                    check()
                try:
                    child = self._open_folder(current, part, create)
                    real_parts.append(part)
                except _LinkFound:
                    done = paths.join(base, *parts[:i + 1])
                    target = self._through_link("/".join(real_parts), part, rel if i == len(parts) - 1 else done)
                    try:
                        child = os.open(os.path.join(self.root, target) if target else self.root,
                                        _DIRECTORY_FLAGS)
                    except FileNotFoundError:
                        raise _NotThere(paths.join(target, *parts[i + 1:])) from None
                    except NotADirectoryError:
                        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder",
                                                 paths.display(done)) from None
                    real_parts = target.split("/") if target else []
                except FileNotFoundError:
                    raise _NotThere("/".join(real_parts + parts[i:])) from None
                except NotADirectoryError:
                    raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder",
                                             paths.display(paths.join(base, *parts[:i + 1]))) from None
                if owned:
                    os.close(current)
                current, owned = child, True
        except BaseException:
            if owned:
                os.close(current)
            raise
        real = "/".join(real_parts)
        self._remember(rel, current, real)
        return current, real

    @staticmethod
    def _open_folder(dir_fd: int, name: str, create: bool) -> int:
        """Open the folder ``name`` inside ``dir_fd`` (made first if missing and ``create``), never through a
        link: :class:`_LinkFound` if ``name`` is one."""
        for _ in range(2):
            try:
                return os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=dir_fd)
                except FileExistsError:
                    pass  # made meanwhile (another worker), or a link: opened again below
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if stat_module.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise _LinkFound() from None
                raise NotADirectoryError(errno.ENOTDIR, "not a folder") from None
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)

    def _find(self, rel: str) -> tuple[int, str]:
        """:meth:`_lookup` without creating, remembering what is missing (planning looks at every destination
        folder before any is made: a missing folder's subfolders are known missing without a walk)."""
        where = self._missing.get(rel)
        if where is None and rel:
            above = self._missing.get(paths.parent(rel))
            if above is not None:
                where = self._missing[rel] = paths.join(above, paths.name(rel))
        if where is not None:
            raise _NotThere(where)
        try:
            return self._lookup(rel)
        except _NotThere as exc:
            self._missing[rel] = exc.where
            raise

    def real(self, rel: str) -> str:
        """The resolved absolute path of ``rel``, refused if it leads outside the root."""
        where = self.resolve(rel)
        return os.path.join(self.root, where) if where else self.root

    def confine(self, rel: str) -> None:
        if not rel:
            return
        try:
            fd, real_folder = self._find(paths.parent(rel))
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing there (yet): it cannot lead anywhere
        try:
            st = os.stat(paths.name(rel), dir_fd=fd, follow_symlinks=False)
        except OSError:
            return
        if stat_module.S_ISLNK(st.st_mode):
            self._through_link(real_folder, paths.name(rel), rel)

    def local_path(self, rel: str) -> str | None:
        return self.real(rel)

    def resolve(self, rel: str) -> str:
        if not rel:
            return ""
        name = paths.name(rel)
        try:
            fd, real_folder = self._find(paths.parent(rel))
        except _NotThere as exc:
            return paths.join(exc.where, name)
        except NotADirectoryError:
            return rel
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return paths.join(real_folder, name)
        if stat_module.S_ISLNK(st.st_mode):
            return self._through_link(real_folder, name, rel)
        return paths.join(real_folder, name)

    def _dir(self, rel: str) -> int:
        """An open descriptor of the folder ``rel``, checked to be inside the root."""
        return self._lookup(rel)[0]

    def _open_in(self, rel: str, flags: int) -> int:
        try:
            return os.open(paths.name(rel), flags | _NOFOLLOW | _CLOEXEC, dir_fd=self._dir(paths.parent(rel)))
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        return os.open(self.real(rel), flags | _NOFOLLOW | _CLOEXEC)  # a link: followed if it stays inside

    @staticmethod
    def _from_stat(st: os.stat_result) -> FileStat:
        if stat_module.S_ISDIR(st.st_mode):
            return FileStat("dir", 0, st.st_mtime)
        if stat_module.S_ISREG(st.st_mode):
            return FileStat("file", st.st_size, st.st_mtime)
        if stat_module.S_ISLNK(st.st_mode):
            return FileStat("link", 0, st.st_mtime)
        return FileStat("other", 0, st.st_mtime)

    def stat(self, rel: str) -> FileStat | None:
        try:
            if not rel:
                return self._from_stat(os.fstat(self._dir("")))
            st = os.stat(paths.name(rel), dir_fd=self._dir(paths.parent(rel)), follow_symlinks=False)
            if stat_module.S_ISLNK(st.st_mode):
                st = os.stat(self.real(rel))
            return self._from_stat(st)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def walk(self, rel: str, *, follow_links: bool = True,
             prune: Callable[[str, FileStat], bool] | None = None,
             check: Callable[[], None] | None = None) -> Iterator[Entry]:
        """Everything under ``rel``, depth first in name order, without recursion: each folder is opened
        relative to its parent, so a walk costs one step per entry however deep the tree (and ``check`` is called
        at each, to stop it). At most a few dozen folders are held open; one closed on the way down is found
        again through ``..`` of its subfolder (checked to be the same folder) or, failing that, from the root."""
        try:
            fd, real = self._lookup(rel)
            fd = os.dup(fd)
        except (FileNotFoundError, NotADirectoryError) as exc:
            yield Entry(rel, None, exc)
            return
        stack: list[_Frame] = []
        seen: set[tuple[int, int]] = set()
        open_count = 0

        def push(dir_rel: str, dir_real: str, fd: int, via_link: bool) -> Entry | None:
            nonlocal open_count
            try:
                st = os.fstat(fd)
                entries = []
                for i, name in enumerate(sorted(os.listdir(fd))):
                    if check is not None and i % 256 == 255:
                        check()
                    try:
                        entries.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # gone since the listing
            except OSError as exc:
                os.close(fd)
                return Entry(dir_rel, None, exc)
            except BaseException:
                os.close(fd)
                raise
            seen.add((st.st_dev, st.st_ino))
            stack.append(_Frame(dir_rel, dir_real, (st.st_dev, st.st_ino), fd, via_link, entries))
            open_count += 1
            if open_count > _WALK_OPEN_FOLDERS:
                for frame in stack:
                    if frame.fd >= 0:
                        os.close(frame.fd)
                        frame.fd = -1
                        open_count -= 1
                        break
            return None

        def reopen(frame: _Frame, below: _Frame | None) -> None:
            nonlocal open_count
            fd = -1
            if below is not None and below.fd >= 0 and not below.via_link:
                try:
                    fd = os.open("..", _DIRECTORY_FLAGS, dir_fd=below.fd)
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) != frame.ident:
                        os.close(fd)
                        fd = -1
                except OSError:
                    fd = -1
            if fd < 0:
                fd = os.dup(self._lookup(frame.real)[0])
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != frame.ident:
                    os.close(fd)
                    raise OSError(errno.ESTALE, "the folder changed during the listing", paths.display(frame.rel))
            frame.fd = fd
            open_count += 1

        try:
            error = push(rel, real, fd, False)
            if error is not None:
                yield error
                return
            below: _Frame | None = None
            while stack:
                frame = stack[-1]
                if frame.index >= len(frame.entries):
                    stack.pop()
                    if below is not None and below.fd >= 0:
                        os.close(below.fd)
                        open_count -= 1
                    below = frame
                    continue
                name, st = frame.entries[frame.index]
                frame.index += 1
                if check is not None:
                    check()
                child = paths.join(frame.rel, name)
                via_link = False
                try:
                    if stat_module.S_ISLNK(st.st_mode):
                        if not follow_links:
                            yield Entry(child, FileStat("link"))
                            continue
                        try:
                            target = self._through_link(frame.real, name, child)
                        except PathOutsideCollection:
                            yield Entry(child, None, PathOutsideCollection(
                                paths.display(child), "is a symbolic link that leads outside the collection"))
                            continue
                        try:
                            st = os.stat(os.path.join(self.root, target) if target else self.root)
                        except FileNotFoundError:
                            yield Entry(child, None, FileNotFoundError(errno.ENOENT, "dangling symbolic link"))
                            continue
                        child_real, via_link = target, True
                    else:
                        child_real = paths.join(frame.real, name)
                except OSError as exc:
                    yield Entry(child, None, exc)
                    continue
                found = self._from_stat(st)
                if prune is not None and prune(child, found):
                    continue
                yield Entry(child, found)
                if found.kind != "dir" or (st.st_dev, st.st_ino) in seen:
                    continue
                try:
                    if frame.fd < 0:
                        reopen(frame, below)
                    if below is not None and below.fd >= 0:
                        os.close(below.fd)
                        open_count -= 1
                    below = None
                    if via_link:
                        fd = os.open(os.path.join(self.root, child_real) if child_real else self.root,
                                     _DIRECTORY_FLAGS)
                    else:
                        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=frame.fd)
                except OSError as exc:
                    yield Entry(child, None, exc)
                    continue
                error = push(child, child_real, fd, via_link)
                if error is not None:
                    yield error
        finally:
            for frame in stack:
                if frame.fd >= 0:
                    os.close(frame.fd)
            if below is not None and below.fd >= 0:
                os.close(below.fd)

    def open_read(self, rel: str) -> _LocalReader:
        # O_NONBLOCK: opening a FIFO swapped in for a file must not hang (it changes nothing for a regular file).
        fd = self._open_in(rel, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return _LocalReader(fd)

    def open_write(self, rel: str, token: str, chunk_size: int) -> _LocalWriter:
        # A link where the file goes is replaced, never written through.
        self._missing.clear()
        return _LocalWriter(os.dup(self._dir(paths.parent(rel))), paths.name(rel), token)

    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        """Make the folder ``rel`` and those above it: one step per component, each relative to the one before
        (``mkdirat``/``openat``), from the nearest folder already open; ``check`` is called at each step."""
        self._missing.clear()
        self._lookup(rel, create=True, check=check)

    def remove(self, rel: str, kind: str) -> None:
        fd = self._dir(paths.parent(rel))
        name = paths.name(rel)
        if kind == "dir" and not stat_module.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            self._forget(rel)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)

    def set_mtime(self, rel: str, mtime: float) -> bool:
        os.utime(paths.name(rel), (mtime, mtime), dir_fd=self._dir(paths.parent(rel)), follow_symlinks=False)
        return True


class _LinkFound(Exception):
    """The component being opened is a symbolic link."""


# --- fsspec filesystems -------------------------------------------------------------------------------------------


class _FsspecWriter:
    def __init__(self, fs: Any, path: str, block_size: int) -> None:
        self.file = fs.open(path, "wb", block_size=block_size)

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(bytes(data) if isinstance(data, memoryview) else data)

    def commit(self) -> None:
        self.file.close()

    def abort(self) -> None:
        discard = getattr(self.file, "discard", None)
        try:
            if discard is not None:
                discard()
                self.file.closed = True  # an aborted upload must not be completed by close()
            else:
                self.file.close()
        except Exception:
            pass


class FsspecStorage(Storage):
    """Any fsspec filesystem (S3 and others): whole objects, no links, no settable times."""

    supports_mtime = False
    supports_empty_dirs = False
    supports_links = False

    def __init__(self, collection: Collection, fs: Any, root: str) -> None:
        super().__init__(collection)
        self.fs = fs
        self.root = root.rstrip("/") if root not in ("", "/") else root
        self.read_block = 8 * 1024 * 1024

    def full(self, rel: str) -> str:
        if not rel:
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
            if any(paths.is_within(child, p) for p in pruned):
                continue
            st = self._from_info(found[path])
            if prune is not None and prune(child, st):
                if st.kind == "dir":
                    pruned.append(child)
                continue
            yield Entry(child, st)

    def open_read(self, rel: str) -> Reader:
        # No read-ahead cache (s3fs would otherwise buffer 50 MiB per open file): each read of a chunk is one
        # ranged request, so memory stays at one chunk per thread.
        try:
            return self.fs.open(self.full(rel), "rb", block_size=self.read_block, cache_type="none")
        except TypeError:
            return self.fs.open(self.full(rel), "rb")

    def open_write(self, rel: str, token: str, chunk_size: int) -> _FsspecWriter:
        return _FsspecWriter(self.fs, self.full(rel), max(chunk_size, 5 * 1024 * 1024))

    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        # Object stores have no folders: nothing to make, whatever the depth of the key.
        if self.protocol_has_dirs():
            self.fs.makedirs(self.full(rel), exist_ok=True)

    def protocol_has_dirs(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        return not any(p in ("s3", "s3a", "gcs", "gs", "abfs", "az") for p in protocols)

    def remove(self, rel: str, kind: str) -> None:
        if kind == "dir":
            if self.protocol_has_dirs():
                self.fs.rmdir(self.full(rel))
            return
        self.fs.rm_file(self.full(rel))


class _SFTPReader:
    """Reads a chunk with pipelined requests (paramiko's ``readv``), so throughput does not wait on round trips."""

    def __init__(self, file: Any, size: int) -> None:
        self.file = file
        self.size = size
        self.offset = 0

    def read(self, size: int) -> bytes:
        want = min(size, self.size - self.offset)
        if want <= 0:
            data = self.file.read(size)  # the file grew: read on plainly until the end
            self.offset += len(data)
            return data
        # One request per piece of the server's maximum size, all sent at once: asking for the whole chunk
        # as one piece makes paramiko reassemble it slowly (half the throughput).
        step = getattr(self.file, "MAX_REQUEST_SIZE", 32768)
        pieces = [(o, min(step, self.offset + want - o)) for o in range(self.offset, self.offset + want, step)]
        data = b"".join(self.file.readv(pieces))
        self.offset += len(data)
        return data

    def close(self) -> None:
        self.file.close()


class _SFTPWriter:
    def __init__(self, ftp: Any, directory: str, name: str, token: str) -> None:
        self.ftp = ftp
        self.final = posixpath.join(directory, name)
        self.temp = posixpath.join(directory, _temp_name(name, token))
        self.file = ftp.open(self.temp, "wb")
        self.file.set_pipelined(True)

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(bytes(data) if isinstance(data, memoryview) else data)

    def commit(self) -> None:
        self.file.close()
        try:
            self.ftp.posix_rename(self.temp, self.final)
        except OSError as exc:
            if "posix-rename" not in str(exc) and "not supported" not in str(exc).lower():
                raise
            try:
                self.ftp.remove(self.final)
            except OSError:
                pass
            self.ftp.rename(self.temp, self.final)

    def abort(self) -> None:
        try:
            self.file.close()
        except Exception:
            pass
        try:
            self.ftp.remove(self.temp)
        except Exception:
            pass


class SFTPStorage(FsspecStorage):
    """fsspec's SFTP filesystem (paramiko), with links resolved by the server and files renamed into place."""

    supports_mtime = True
    supports_empty_dirs = True
    supports_links = True

    def __init__(self, collection: Collection, fs: Any, root: str, make_fs: Callable[[], Any]) -> None:
        super().__init__(collection, fs, root or "/")
        self.root = posixpath.normpath("/" + self.root.lstrip("/"))
        self._make_fs = make_fs
        self.ftp = fs.ftp
        self._known: dict[str, str] = {}  # planning: where a path really is (relative to the real root)
        self._absent: set[str] = set()  # planning: paths known not to exist
        self._folders: set[str] = set()  # folders made or found by makedirs
        try:
            self.real_root = self.ftp.normalize(self.root)
        except OSError as exc:
            raise CollectionError(f"collection {collection.name!r}: its root is not reachable ({exc})") from None

    def fork(self) -> "SFTPStorage":
        return SFTPStorage(self.collection, self._make_fs(), self.root, self._make_fs)

    def close(self) -> None:
        try:
            self.fs.client.close()
        except Exception:
            pass

    def full(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def _inside(self, real: str) -> bool:
        base = self.real_root.rstrip("/")
        return real == self.real_root or real.startswith(base + "/")

    def _confine_now(self, rel: str) -> None:
        # The server resolves links (realpath) of what exists; what does not exist yet cannot be a link. Some
        # servers (asyncssh with a chroot) will not resolve a link leading outside what they serve, yet follow it
        # on open: a path that exists (lstat) but has no realpath is refused. Asked afresh each time (opening a
        # file), never from what planning remembered.
        probe = rel
        while True:
            full = self.full(probe)
            try:
                real = self.ftp.normalize(full)
                break
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError) and getattr(exc, "errno", None) != errno.ENOENT:
                    raise
                try:
                    self.ftp.lstat(full)
                except OSError:
                    pass  # it does not exist: what matters is where its parent is
                else:
                    raise PathOutsideCollection(
                        paths.display(rel), "leads through a symbolic link the server cannot resolve "
                        "(outside what it serves)") from None
                if not probe:
                    return
                probe = paths.parent(probe)
        if not self._inside(real):
            raise PathOutsideCollection(paths.display(rel), "leads outside the collection through a symbolic link")

    def _where(self, rel: str) -> str:
        """Where ``rel`` really is, relative to the real root, refused if outside (as :meth:`_confine_now`).

        For planning: answers are remembered until something is written, and a path whose folder is known missing
        is known missing without asking the server, so that the folders of a deep new tree cost one or two round
        trips each, not one per level."""
        hit = self._known.get(rel)
        if hit is not None:
            return hit
        pending: list[str] = []
        probe = rel
        while True:
            hit = self._known.get(probe)
            if hit is not None:
                base = hit
                break
            if probe and paths.parent(probe) in self._absent:
                pending.append(probe)
                probe = paths.parent(probe)
                continue
            full = self.full(probe)
            try:
                real = self.ftp.normalize(full)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError) and getattr(exc, "errno", None) != errno.ENOENT:
                    raise
                try:
                    self.ftp.lstat(full)
                except OSError:
                    pass
                else:
                    raise PathOutsideCollection(
                        paths.display(rel), "leads through a symbolic link the server cannot resolve "
                        "(outside what it serves)") from None
                if not probe:
                    return rel
                pending.append(probe)
                probe = paths.parent(probe)
                continue
            if not self._inside(real):
                raise PathOutsideCollection(paths.display(rel),
                                            "leads outside the collection through a symbolic link")
            base = "" if real == self.real_root else real[len(self.real_root.rstrip("/")) + 1:]
            self._known[probe] = base
            break
        for missing in reversed(pending):
            base = paths.join(base, paths.name(missing))
            self._known[missing] = base
            self._absent.add(missing)
        return base

    def _written(self) -> None:
        self._known.clear()
        self._absent.clear()

    def confine(self, rel: str) -> None:
        self._where(rel)

    def resolve(self, rel: str) -> str:
        return self._where(rel)

    @staticmethod
    def _from_attr(attr: Any) -> FileStat:
        mode = attr.st_mode or 0
        if stat_module.S_ISDIR(mode):
            return FileStat("dir", 0, attr.st_mtime)
        if stat_module.S_ISLNK(mode):
            return FileStat("link", 0, attr.st_mtime)
        if stat_module.S_ISREG(mode):
            return FileStat("file", attr.st_size or 0, attr.st_mtime)
        return FileStat("other", 0, attr.st_mtime)

    def stat(self, rel: str) -> FileStat | None:
        self._confine_now(rel)
        try:
            return self._from_attr(self.ftp.stat(self.full(rel)))
        except FileNotFoundError:
            return None

    def walk(self, rel: str, *, follow_links: bool = True,
             prune: Callable[[str, FileStat], bool] | None = None,
             check: Callable[[], None] | None = None) -> Iterator[Entry]:
        # Without recursion (a deep tree is no deeper a stack), two round trips per folder, ``check`` per entry.
        seen: set[str] = set()
        stack: list[tuple[str, list[Any], list[int]]] = []

        def enter(dir_rel: str) -> Entry | None:
            full = self.full(dir_rel)
            try:
                real = self.ftp.normalize(full)
            except OSError as exc:
                return Entry(dir_rel, None, exc)
            if real in seen:
                return None
            seen.add(real)
            try:
                listing = sorted(self.ftp.listdir_attr(full), key=lambda a: a.filename)
            except OSError as exc:
                return Entry(dir_rel, None, exc)
            stack.append((dir_rel, listing, [0]))
            return None

        self.confine(rel)
        error = enter(rel)
        if error is not None:
            yield error
        while stack:
            dir_rel, listing, position = stack[-1]
            if position[0] >= len(listing):
                stack.pop()
                continue
            attr = listing[position[0]]
            position[0] += 1
            if check is not None:
                check()
            child = paths.join(dir_rel, attr.filename)
            st = self._from_attr(attr)
            if st.kind == "link":
                if not follow_links:
                    yield Entry(child, st)
                    continue
                try:
                    self.confine(child)
                    st = self._from_attr(self.ftp.stat(self.full(child)))
                except PathOutsideCollection as exc:
                    yield Entry(child, None, PathOutsideCollection(
                        exc.path, "is a symbolic link that leads outside the collection"))
                    continue
                except OSError as exc:
                    yield Entry(child, None, exc)
                    continue
            if prune is not None and prune(child, st):
                continue
            yield Entry(child, st)
            if st.kind == "dir":
                error = enter(child)
                if error is not None:
                    yield error

    def open_read(self, rel: str) -> _SFTPReader:
        self._confine_now(rel)
        file = self.ftp.open(self.full(rel), "rb")
        try:
            attr = file.stat()
            if not stat_module.S_ISREG(attr.st_mode or 0):
                raise OSError(errno.EINVAL, "not a regular file")
        except BaseException:
            file.close()
            raise
        return _SFTPReader(file, attr.st_size or 0)

    def open_write(self, rel: str, token: str, chunk_size: int) -> _SFTPWriter:
        self._written()
        self._confine_now(rel)
        return _SFTPWriter(self.ftp, self.full(paths.parent(rel)), paths.name(rel), token)

    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        # One or two round trips per level, from the deepest folder this storage made or found already: a level
        # that is a folder (lstat) stays where its parent is, so only a link needs the server to resolve it.
        self._written()
        if not rel or rel in self._folders:
            return
        parts = rel.split("/")
        done = paths.parent(rel)
        if done in self._folders:
            parts = parts[-1:]
        else:
            done = ""
        for part in parts:
            if check is not None:
                check()
            done = paths.join(done, part)
            full = self.full(done)
            try:
                attr = self.ftp.lstat(full)
            except FileNotFoundError:
                try:
                    self.ftp.mkdir(full)
                except OSError:
                    attr = self.ftp.lstat(full)  # made meanwhile by another worker?
                    if not stat_module.S_ISDIR(attr.st_mode or 0):
                        raise
                self._folders.add(done)
                continue
            if stat_module.S_ISLNK(attr.st_mode or 0):
                self._confine_now(done)
                attr = self.ftp.stat(full)
            if not stat_module.S_ISDIR(attr.st_mode or 0):
                raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a directory", paths.display(done))
            self._folders.add(done)

    def remove(self, rel: str, kind: str) -> None:
        self._written()
        self._confine_now(paths.parent(rel))
        full = self.full(rel)
        if kind == "dir":
            self._folders.difference_update([f for f in self._folders if paths.is_within(f, rel)])
            self.ftp.rmdir(full)
        else:
            self.ftp.remove(full)

    def set_mtime(self, rel: str, mtime: float) -> bool:
        self.ftp.utime(self.full(rel), (mtime, mtime))
        return True


def open_storage(collection: Collection) -> Storage:
    """Connect to a collection's storage. Raises :class:`CollectionError` when it cannot be reached."""
    protocol = collection.protocol
    if protocol == "file":
        return LocalStorage(collection, collection.url.split("://", 1)[1])
    import fsspec
    from fsspec.core import url_to_fs

    options = collection.resolved_storage_options()
    options.setdefault("skip_instance_cache", True)
    if protocol == "s3":
        options.setdefault("use_listings_cache", False)
    try:
        fs, root = url_to_fs(collection.url, **options)
    except ImportError as exc:
        raise CollectionError(
            f"collection {collection.name!r}: the {protocol}:// filesystem needs a package that is not installed "
            f"({exc})"
        ) from None
    except Exception as exc:
        raise CollectionError(f"collection {collection.name!r}: cannot connect ({type(exc).__name__}: {exc})") from None
    if protocol == "sftp":
        def make_fs() -> Any:
            try:
                return url_to_fs(collection.url, **options)[0]
            except Exception as exc:
                raise CollectionError(
                    f"collection {collection.name!r}: cannot connect ({type(exc).__name__}: {exc})") from None

        return SFTPStorage(collection, fs, root, make_fs)
    del fsspec
    return FsspecStorage(collection, fs, root)

"""Local disk (``file://``): the operating system directly, each folder opened relative to the one before.

Symbolic links are resolved and anything leading outside the root is refused, when a transfer is planned and
again when each file is opened (relative to its folder, held open, never through a link unchecked); a file is
written without a name (``O_TMPFILE``) or under a hidden temporary one, and linked or renamed into place once
complete and verified, so that a destination name holds the old file or the whole new one, never a part.
"""

from __future__ import annotations

import collections
import copy
import contextlib
import dataclasses
import errno
import os
import stat as stat_module
import sys
from typing import Any, Callable, Iterator

from providers.collections import Collection, CollectionError, paths
from providers.collections.paths import PathOutsideCollection

from .base import Entry, FileStat, Storage, temp_name

__all__ = ["DirectFiles", "LocalStorage", "connect"]


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_DIRECTORY_CACHE = 64
_LIST_FOLDER_FROM = 16  # confine_files lists a folder when it holds this many of the files, else looks at each
# O_NONBLOCK: opening a FIFO swapped in for a file must not hang (it changes nothing for a regular file).
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)


def _read_whole(fd: int, size: int, only_compared: bool) -> bytes | None:
    """The bytes of the open file ``fd`` (closed here) if it is a regular file of ``size`` bytes; else None (see
    :meth:`LocalStorage.read_whole` for ``only_compared``)."""
    try:
        if not only_compared or not size:
            st = os.fstat(fd)
            if st.st_size != size or not stat_module.S_ISREG(st.st_mode):
                return None
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    return data if len(data) == size else None


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
_AT_EMPTY_PATH = 0x1000
_linkat: list[Any] = []  # libc's linkat once looked up, or None where it cannot name a file by its descriptor


def _libc_linkat() -> Any:
    """libc's ``linkat``, or None (not Linux, no libc found)."""
    if not _linkat:
        found = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                function = ctypes.CDLL(None, use_errno=True).linkat
                function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
                function.restype = ctypes.c_int
                found = function
            except (OSError, AttributeError, ImportError):
                found = None
        _linkat.append(found)
    return _linkat[0]


def link_anonymous(fd: int, dir_fd: int, name: str) -> None:
    """Give the nameless file ``fd`` (``O_TMPFILE``) the name ``name`` in the folder ``dir_fd``:
    ``linkat(fd, "", AT_EMPTY_PATH)`` where the system allows it (half the time of the usual way, which resolves
    ``/proc/self/fd/N``), else through ``/proc``. :class:`FileExistsError` if something has that name."""
    linkat = _libc_linkat()
    if linkat is not None:
        if linkat(fd, b"", dir_fd, os.fsencode(name), _AT_EMPTY_PATH) == 0:
            return
        code = ctypes_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), name)
        if code not in (errno.EPERM, errno.EINVAL, errno.ENOENT, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), name)
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        _linkat[0] = None  # refused where the usual way works (a kernel that wants a privilege): that from now on
        return
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _replace(temp: str, name: str, dir_fd: int) -> None:
    """Rename ``temp`` over ``name`` in the folder ``dir_fd``."""
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except IsADirectoryError:
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way of the file", name) from None


def _link_into_place(fd: int, dir_fd: int, name: str, temp: str) -> None:
    """Give the nameless file ``fd`` the name ``name`` in the folder ``dir_fd``; if something has that name, the
    file gets the name ``temp`` and is renamed over it (``temp`` is removed again if that fails)."""
    try:
        link_anonymous(fd, dir_fd, name)
        return
    except FileExistsError:
        pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)
    link_anonymous(fd, dir_fd, temp)
    try:
        _replace(temp, name, dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


class _LocalWriter:
    """Writes a new file that has no name until it is complete (``O_TMPFILE``, then linked into place), or,
    where the filesystem cannot, ``.<name>.aptk-<token>.part`` renamed into place. Either way the destination
    name holds the old file or the whole new one, and a crash leaves no partial file under it."""

    def __init__(self, dir_fd: int, name: str, token: str, anonymous: bool = True) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.temp = temp_name(name, token)
        self.named = True
        self.written: FileStat | None = None
        try:
            if anonymous and _anonymous_files[0]:
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

    def commit(self) -> None:
        st = os.fstat(self.fd)
        self.written = FileStat("file", st.st_size, st.st_mtime)
        if self.named:
            os.close(self.fd)
            self.fd = -1
            _replace(self.temp, self.name, self.dir_fd)
        else:
            _link_into_place(self.fd, self.dir_fd, self.name, self.temp)
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
_WALK_CHECK_EVERY = 64  # a walk calls its check once per so many files in a row (and at every other entry)


class LocalStorage(Storage):
    """A directory on this machine.

    Folders are opened one component at a time from the root (or from a folder already open), each relative to
    the one before (``openat``) with ``O_NOFOLLOW | O_DIRECTORY``: the cost is linear in the depth of a path and
    no path is ever too long for the system. A symbolic link met on the way is resolved and followed only if it
    stays inside the root. Files are opened relative to their open folder and never through a link as the last
    component (``O_NOFOLLOW``; a link there is resolved and checked first). A folder swapped for a link once
    opened changes nothing: the open folder is used.
    """

    def __init__(self, collection: Collection, root: str, *, anonymous_files: bool = True) -> None:
        """``anonymous_files=False`` writes every file under a hidden temporary name, as on a filesystem without
        ``O_TMPFILE`` (which is found out, and remembered, by itself)."""
        super().__init__(collection)
        self.anonymous_files = anonymous_files
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
        other = copy.copy(self)  # the same root and options; folders of its own
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
        if not self.checked(rel):
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

    def confine_files(self, rels: list[str],
                      check: Callable[[], None] | None = None) -> list[tuple[str, PathOutsideCollection]]:
        """:meth:`confine` for many files, with the paths refused and why. A folder holding many of them is listed
        once (links known from the listing's entry types) rather than each file looked at."""
        refused: list[tuple[str, PathOutsideCollection]] = []
        by_folder: dict[str, list[str]] = {}
        for rel in rels:
            try:
                folder = self.checked(rel).rpartition("/")[0]
            except PathOutsideCollection as exc:
                refused.append((rel, exc))
                continue
            by_folder.setdefault(folder, []).append(rel)
        for folder, members in by_folder.items():
            if check is not None:
                check()
            if len(members) < _LIST_FOLDER_FROM:
                for rel in members:
                    try:
                        self.confine(rel)
                    except PathOutsideCollection as exc:
                        refused.append((rel, exc))
                continue
            try:
                fd, real_folder = self._find(folder)
                with os.scandir(fd) as listing:
                    links = {entry.name for entry in listing if entry.is_symlink()}
            except PathOutsideCollection as exc:
                refused.extend((rel, exc) for rel in members)
                continue
            except OSError:
                continue  # nothing there (yet), or unreadable: as confine, nothing it could lead to
            for rel in members:
                name = rel.rpartition("/")[2]
                if name in links:
                    try:
                        self._through_link(real_folder, name, rel)
                    except PathOutsideCollection as exc:
                        refused.append((rel, exc))
        return refused

    def local_path(self, rel: str) -> str:
        return self.real(rel)

    def resolve(self, rel: str) -> str:
        if not self.checked(rel):
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

    def open_folder(self, rel: str) -> int:
        """A descriptor of its own (the caller closes it) of the folder ``rel``, found as every path is (checked,
        links resolved and confined): for a caller that opens many files in one folder itself."""
        return os.dup(self._lookup(self.checked(rel))[0])

    def _dir(self, rel: str) -> int:
        """An open descriptor of the folder ``rel``, checked to be inside the root."""
        return self._lookup(self.checked(rel))[0]

    def _in_folder(self, rel: str) -> tuple[int, str]:
        """The open folder of ``rel`` and its name there (``rel`` checked first: never ``..``)."""
        folder, _, name = self.checked(rel).rpartition("/")  # a checked path: its parent is one too
        return self._lookup(folder)[0], name

    def _open_in(self, rel: str, flags: int) -> int:
        dir_fd, name = self._in_folder(rel)
        try:
            return os.open(name, flags | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
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
            if not self.checked(rel):
                return self._from_stat(os.fstat(self._dir("")))
            dir_fd, name = self._in_folder(rel)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
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
        return self._walk(rel, follow_links, prune, check, False)  # type: ignore[return-value]

    def walk_runs(self, rel: str, *,
                  check: Callable[[], None] | None = None) -> Iterator[Entry | list[tuple[str, int, float]]]:
        """:meth:`walk` (links followed, nothing pruned), each run of regular files of a folder given at once as
        a list of (path, size, mtime): a planner of many files makes one object per file rather than three."""
        return self._walk(rel, True, None, check, True)

    def _walk(self, rel: str, follow_links: bool, prune: Callable[[str, FileStat], bool] | None,
              check: Callable[[], None] | None, runs: bool) -> Iterator[Entry | list[tuple[str, int, float]]]:
        try:
            fd, real = self._lookup(self.checked(rel))
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
                entries, index = frame.entries, frame.index
                prefix = f"{frame.rel}/" if frame.rel else ""
                if runs:
                    stop = index
                    while stop < len(entries) and stat_module.S_ISREG(entries[stop][1].st_mode):
                        stop += 1
                    if stop > index:
                        run = entries[index:stop]
                        frame.index = index = stop
                        if check is not None:
                            check()
                        yield [(prefix + name, st.st_size, st.st_mtime) for name, st in run]
                while index < len(entries) and stat_module.S_ISREG(entries[index][1].st_mode):
                    # The common case, a regular file, in a loop of its own: no link to resolve, nothing to open.
                    name, st = entries[index]
                    index += 1
                    frame.index = index
                    if check is not None and not index % _WALK_CHECK_EVERY:
                        check()
                    child = prefix + name
                    found = FileStat("file", st.st_size, st.st_mtime)
                    if prune is None or not prune(child, found):
                        yield Entry(child, found)
                if index >= len(entries):
                    continue
                name, st = entries[index]
                frame.index = index + 1
                if check is not None:
                    check()
                child = prefix + name
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

    def open_read(self, rel: str, chunk_size: int = 0) -> _LocalReader:
        fd = self._open_in(rel, _READ_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return _LocalReader(fd)

    def read_whole(self, rel: str, size: int, *, only_compared: bool = False) -> bytes | None:
        """The regular file ``rel`` in one read, if it holds ``size`` bytes (a regular file's read answers less
        than asked only at its end: asking one byte more finds the end in the same call); else None.

        ``only_compared``: the bytes are only compared with a regular file's, so what ``rel`` is needs no
        ``fstat`` unless it answers nothing: a folder fails the read (:class:`IsADirectoryError`), a pipe answers
        nothing or :class:`BlockingIOError` (opened non-blocking), a device more bytes than asked."""
        fd = self._open_in(rel, _READ_FLAGS)
        return _read_whole(fd, size, only_compared)

    def write_whole(self, rel: str, token: str, data: bytes,
                    verify: Callable[[bytes], bool] | None) -> FileStat | None:
        """``data`` written as :meth:`open_write` writes a file; with ``verify``, read back from the disk's copy
        (the same descriptor, before the file has a name) and checked first."""
        writer = self.open_write(rel, token, 0)
        try:
            if data:
                writer.write(data)
            if verify is not None and not verify(os.pread(writer.fd, len(data) + 1, 0)):
                writer.abort()
                return None
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return writer.written

    def open_write(self, rel: str, token: str, chunk_size: int) -> _LocalWriter:
        # A link where the file goes is replaced, never written through.
        self._missing.clear()
        dir_fd, name = self._in_folder(rel)
        if not name:
            raise IsADirectoryError(errno.EISDIR, "the collection root is a folder", "/")
        return _LocalWriter(os.dup(dir_fd), name, token, self.anonymous_files)

    def makedirs(self, rel: str, check: Callable[[], None] | None = None) -> None:
        """Make the folder ``rel`` and those above it: one step per component, each relative to the one before
        (``mkdirat``/``openat``), from the nearest folder already open; ``check`` is called at each step."""
        self._missing.clear()
        self._lookup(self.checked(rel), create=True, check=check)

    def remove(self, rel: str, kind: str) -> None:
        if not self.checked(rel):
            raise PermissionError(errno.EPERM, "the collection root is not removed", "/")
        fd, name = self._in_folder(rel)
        if kind == "dir" and not stat_module.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            self._forget(rel)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)

    def set_mtime(self, rel: str, mtime: float) -> None:
        dir_fd, name = self._in_folder(rel)
        os.utime(name or ".", (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)


_FOLDERS_HELD = 256  # folders a DirectFiles keeps open at most


class DirectFiles:
    """Whole small files of one storage read and written with as few system calls as the guarantees allow, for a
    caller that handles many of them (a worker process): each folder is found once, as every path is (checked,
    links resolved and confined), and held open; a file is opened relative to it, never through a link (one is
    handed to the storage's own methods, which resolve and check it); a new file is written without a name
    (``O_TMPFILE``), read back through the same descriptor when asked, and linked into place. Same answers and
    errors as :meth:`LocalStorage.read_whole` and :meth:`LocalStorage.write_whole`."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self._folders: dict[str, int] = {}

    @staticmethod
    def suits(storage: LocalStorage) -> bool:
        """Whether ``storage`` reads and writes whole files as :class:`LocalStorage` does (a subclass that changes
        either is used as it is)."""
        kind = type(storage)
        return (kind.read_whole is LocalStorage.read_whole and kind.write_whole is LocalStorage.write_whole
                and kind.open_write is LocalStorage.open_write)

    def _folder(self, rel: str) -> int:
        fd = self._folders.get(rel)
        if fd is None:
            if len(self._folders) >= _FOLDERS_HELD:
                os.close(self._folders.pop(next(iter(self._folders))))
            fd = self._folders[rel] = self.storage.open_folder(rel)
        return fd

    def close(self) -> None:
        while self._folders:
            os.close(self._folders.popitem()[1])

    def stat(self, rel: str) -> FileStat | None:
        return self.storage.stat(rel)

    def set_mtime(self, rel: str, mtime: float) -> None:
        self.storage.set_mtime(rel, mtime)

    def read_whole(self, rel: str, size: int, *, only_compared: bool = False) -> bytes | None:
        folder, _, name = self.storage.checked(rel).rpartition("/")
        if not name:
            return self.storage.read_whole(rel, size, only_compared=only_compared)
        try:
            fd = os.open(name, _READ_FLAGS | _NOFOLLOW | _CLOEXEC, dir_fd=self._folder(folder))
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            return self.storage.read_whole(rel, size, only_compared=only_compared)  # a link: resolved there
        return _read_whole(fd, size, only_compared)

    def write_whole(self, rel: str, token: str, data: bytes,
                    verify: Callable[[bytes], bool] | None) -> FileStat | None:
        folder, _, name = self.storage.checked(rel).rpartition("/")
        if not name or not (self.storage.anonymous_files and _anonymous_files[0]):
            return self.storage.write_whole(rel, token, data, verify)
        dir_fd = self._folder(folder)
        try:
            fd = os.open(".", os.O_RDWR | _TMPFILE | _CLOEXEC, 0o666, dir_fd=dir_fd)
        except OSError:  # the storage's writer finds out why, and remembers it
            return self.storage.write_whole(rel, token, data, verify)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if verify is not None and not verify(os.pread(fd, len(data) + 1, 0)):
                return None
            st = os.fstat(fd)
            _link_into_place(fd, dir_fd, name, temp_name(name, token))
        finally:
            os.close(fd)
        return FileStat("file", st.st_size, st.st_mtime)


class _LinkFound(Exception):
    """The component being opened is a symbolic link."""




def connect(collection: Collection) -> LocalStorage:
    return LocalStorage(collection, collection.url.split("://", 1)[1])

"""SFTP (``sftp://``): fsspec's SFTP filesystem (paramiko), with the guarantees of local disk.

Links are resolved by the server (``realpath``) and a path leading outside the root is refused, when a transfer
is planned and again when a file is opened; reads and writes are pipelined; files are written under a hidden
temporary name and renamed into place (``posix-rename``); modification times can be set. Each thread has its
own SSH connection (:meth:`SFTPStorage.fork`).
"""

from __future__ import annotations

import errno
import posixpath
import stat as stat_module
from typing import Any, Callable, Iterator

from providers.collections import Collection, CollectionError, paths
from providers.collections.paths import PathOutsideCollection

from .base import Entry, FileStat, Storage, temp_name
from .fsspec import filesystem

__all__ = ["SFTPStorage", "connect"]


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
        self.temp = posixpath.join(directory, temp_name(name, token))
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


class SFTPStorage(Storage):
    """fsspec's SFTP filesystem (paramiko), with links resolved by the server and files renamed into place."""

    def __init__(self, collection: Collection, fs: Any, root: str, make_fs: Callable[[], Any]) -> None:
        super().__init__(collection)
        self.fs = fs
        self.root = posixpath.normpath("/" + (root or "/").strip("/"))
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
        """The server's path of ``rel`` (checked: never ``..``, absolute or with a NUL byte)."""
        return posixpath.join(self.root, rel) if self.checked(rel) else self.root

    def _inside(self, real: str) -> bool:
        base = self.real_root.rstrip("/")
        return real == self.real_root or real.startswith(base + "/")

    def _confine_now(self, rel: str) -> None:
        # The server resolves links (realpath) of what exists; what does not exist yet cannot be a link. Some
        # servers (asyncssh with a chroot) will not resolve a link leading outside what they serve, yet follow it
        # on open: a path that exists (lstat) but has no realpath is refused. Asked afresh each time (opening a
        # file), never from what planning remembered.
        probe = self.checked(rel)
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
        hit = self._known.get(self.checked(rel))
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

    def open_read(self, rel: str, chunk_size: int = 0) -> _SFTPReader:
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
        if not self.checked(rel) or rel in self._folders:
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

    def set_mtime(self, rel: str, mtime: float) -> None:
        self.ftp.utime(self.full(rel), (mtime, mtime))




def connect(collection: Collection) -> SFTPStorage:
    fs, root = filesystem(collection)
    return SFTPStorage(collection, fs, root, lambda: filesystem(collection)[0])

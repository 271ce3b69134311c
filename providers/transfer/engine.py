"""The copy engine: plan every file first, then copy them on a few threads in bounded chunks.

1. **Plan** (before any byte moves): stat every item, walk recursive ones, apply ``filter_rules``, refuse paths
   that lead outside a collection, collect missing or unreadable sources, check access rules on where each file
   really is (links resolved). Any error that is not a skippable source error fails the action here.
2. **Delete** what the destination has and the source does not (``delete_destination_extra``, recursive items).
3. **Make** the destination folders, one level at a time relative to the one before (the cost is linear in the
   depth), stopping between levels when the action is cancelled or passes its deadline.
4. **Copy** several files at once (see :meth:`Transfer._lanes`: up to ``APTK_TRANSFER_THREADS`` with remote
   storage; disk to disk, large files on one thread per core and small ones in batches on one more). Each
   thread streams its file in ``APTK_TRANSFER_CHUNK_BYTES`` chunks (memory: threads x one chunk, whatever the
   file sizes), computing SHA-256 as it reads, and checks
   between chunks whether the action was cancelled, passed its deadline or another file failed, so that it stops
   within a chunk's time. With ``verify_checksum`` it then re-reads the destination and compares; a mismatch
   recopies the file (``faults`` counts it), three times at most. Every finished file is recorded
   (:mod:`providers.transfer.state`) so that a rerun after a crash skips it.

Progress goes to the action's ``details`` at most once a second, in the shape of a Globus transfer task.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import errno
import fnmatch
import hashlib
import logging
import os
import threading
import time
from typing import Any, Callable

from toolkit import ActionCancelled, ActionFailed, RunContext

from . import paths
from .collections import Collection, CollectionError
from .paths import PathOutsideCollection
from .request import SYNC_NAMES, Item, TransferRequest
from .state import Done, DoneRecords
from .storage import FileStat, LocalStorage, Storage, open_storage

logger = logging.getLogger("providers.transfer")

CHECKSUM_ALGORITHM = "sha256"
MAX_TRIES = 3
KERNEL_COPY_BYTES = 1 << 20  # smaller files: read and write (copy_file_range costs more than it saves)
SMALL_FILE_BYTES = 1 << 20  # disk to disk, smaller files go in batches to a lane of their own
SMALL_FILE_BATCH = 64
SMALL_FILE_THREADS = 1  # measured: a second thread halves the rate (GIL convoy on short system calls)
MAX_ERRORS_SHOWN = 100
PROGRESS_SECONDS = 1.0
FLUSH_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
    threads: int = 8
    chunk_size: int = 8 * 1024 * 1024
    max_bytes_per_second: float = 0.0


@dataclasses.dataclass(frozen=True)
class FileTask:
    item: Item
    src: str
    dst: str
    size: int
    mtime: float | None


class Stopped(Exception):
    """A worker noticed that the transfer must stop (cancel, deadline, another failure)."""


class Mismatch(Exception):
    """What was written does not have the source's checksum."""


class ItemError(Exception):
    """One file or folder could not be transferred."""

    def __init__(self, code: str, description: str, source: str | None, destination: str | None,
                 *, skippable: bool = False) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.source = source
        self.destination = destination
        self.skippable = skippable

    def document(self) -> dict[str, Any]:
        doc = {"code": self.code, "error": self.description}
        if self.source is not None:
            doc["source_path"] = paths.display(self.source)
        if self.destination is not None:
            doc["destination_path"] = paths.display(self.destination)
        return dict(sorted(doc.items(), key=lambda kv: ["source_path", "destination_path", "code", "error"].index(kv[0])))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text


def source_error(exc: BaseException, task_src: str, task_dst: str | None) -> ItemError:
    if isinstance(exc, ItemError):
        return exc
    if isinstance(exc, PathOutsideCollection):
        return ItemError(exc.code, f"{exc.path} {exc.reason}", task_src, task_dst)
    if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
        return ItemError("SourceNotFound", "No such file or directory on the source", task_src, task_dst,
                         skippable=True)
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
        return ItemError("SourcePermissionDenied", f"The source cannot be read: {_describe(exc)}", task_src,
                         task_dst, skippable=True)
    return ItemError("SourceError", f"Reading the source failed: {_describe(exc)}", task_src, task_dst,
                     skippable=isinstance(exc, OSError))


def destination_error(exc: BaseException, task_src: str | None, task_dst: str) -> ItemError:
    if isinstance(exc, ItemError):
        return exc
    if isinstance(exc, PathOutsideCollection):
        return ItemError(exc.code, f"{exc.path} {exc.reason}", task_src, task_dst)
    number = getattr(exc, "errno", None)
    text = _describe(exc)
    if number in (errno.ENOSPC, errno.EDQUOT) or "no space" in text.lower() or "quota" in text.lower():
        return ItemError("DestinationFull", f"The destination is full: {text}", task_src, task_dst)
    if number == errno.EROFS or "read-only" in text.lower():
        return ItemError("DestinationReadOnly", f"The destination is read-only: {text}", task_src, task_dst)
    if isinstance(exc, PermissionError) or number in (errno.EACCES, errno.EPERM):
        return ItemError("DestinationPermissionDenied", f"The destination cannot be written: {text}", task_src,
                         task_dst)
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)) or number in (errno.EISDIR, errno.ENOTDIR):
        return ItemError("DestinationTypeConflict", f"The destination is in the way: {text}", task_src, task_dst)
    return ItemError("DestinationError", f"Writing the destination failed: {text}", task_src, task_dst)


class _Side:
    """Runs a storage call, turning its errors into an :class:`ItemError` of one side."""

    def __init__(self, make: Callable[[BaseException, Any, Any], ItemError]) -> None:
        self.make = make

    def __call__(self, fn: Callable[..., Any], task_src: Any, task_dst: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (Stopped, ActionCancelled):
            raise
        except Exception as exc:
            raise self.make(exc, task_src, task_dst) from exc


on_source = _Side(source_error)
on_destination = _Side(destination_error)


class Throttle:
    """Shared byte budget per second for all of a transfer's threads (APTK_TRANSFER_MAX_BYTES_PER_SECOND)."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.rate = rate
        self.stop = stop
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def consume(self, amount: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + amount / self.rate
            delay = self._next - now - 0.05
        if delay > 0 and self.stop.wait(delay):
            raise Stopped()


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # pragma: no cover


class Transfer:
    """One run of one transfer action."""

    def __init__(self, ctx: RunContext, request: TransferRequest, source: Collection, destination: Collection,
                 settings: Settings, authorize: Callable[[str, str], str | None] | None = None) -> None:
        """``authorize(side, path)`` says why the caller may not use ``path`` (links resolved) on ``side``
        (``source``: read, ``destination``: write), or None if it may; None: no checks."""
        self.ctx = ctx
        self.authorize = authorize
        self.request = request
        self.source = source
        self.destination = destination
        self.settings = settings
        self.stop = threading.Event()
        self.stop_reason: str | None = None
        self.lock = threading.Lock()
        self.counters = {
            "files": 0, "files_transferred": 0, "files_skipped": 0, "directories": 0, "bytes_transferred": 0,
            "bytes_checksummed": 0, "faults": 0,
        }
        if request.delete_destination_extra:
            self.counters["files_deleted"] = 0
        self.errors: list[ItemError] = []
        self.skipped: list[ItemError] = []
        self.tasks: list[FileTask] = []
        self.dirs: set[str] = set()
        self.started = time.time()
        self.token = ctx.action_id[:12]
        self.throttle = Throttle(settings.max_bytes_per_second, self.stop)
        self.records = DoneRecords(ctx.store.engine, ctx.action_id)
        self.previous: dict[str, Done] = {}
        self.pending_records: list[Done] = []
        self._last_progress = 0.0
        self._last_flush = time.monotonic()
        self._local = threading.local()
        self._tallies: list[dict[str, int]] = []
        self._storages: list[Storage] = []
        self.src: Storage | None = None
        self.dst: Storage | None = None

    # --- details ------------------------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """The counters: what planning set, plus what every worker thread counted (each in its own tally, so
        that counting a chunk takes no lock)."""
        with self.lock:
            totals = dict(self.counters)
            tallies = list(self._tallies)
        for tally in tallies:
            for key, value in list(tally.items()):
                totals[key] = totals.get(key, 0) + value
        return totals

    def details(self, status: str) -> dict[str, Any]:
        counters = self.totals()
        elapsed = max(time.time() - self.started, 1e-3)
        request = self.request
        doc: dict[str, Any] = {
            "DATA_TYPE": "task",
            "type": "TRANSFER",
            "task_id": self.ctx.action_id,
            "status": status,
        }
        if request.label:
            doc["label"] = request.label
        doc.update(
            source_endpoint_id=self.source.id,
            source_endpoint_display_name=self.source.display_name,
            destination_endpoint_id=self.destination.id,
            destination_endpoint_display_name=self.destination.display_name,
        )
        if request.sync_level is not None:
            doc["sync_level"] = request.sync_level
        doc.update(
            verify_checksum=request.verify_checksum,
            preserve_timestamp=request.preserve_timestamp,
            delete_destination_extra=request.delete_destination_extra,
            skip_source_errors=request.skip_source_errors,
            checksum_algorithm=CHECKSUM_ALGORITHM,
        )
        doc.update(counters)
        doc["effective_bytes_per_second"] = int(counters["bytes_transferred"] / elapsed)
        doc["request_time"] = _iso(self.started)
        if status != "ACTIVE":
            doc["completion_time"] = _iso(time.time())
        if self.skipped:
            doc["skipped_source_errors"] = [e.document() for e in self.skipped[:MAX_ERRORS_SHOWN]]
            doc["skipped_source_errors_count"] = len(self.skipped)
        return doc

    def _display_status(self) -> str:
        c = self.totals()
        done = c["files_transferred"] + c["files_skipped"]
        return f"{done}/{c['files']} files, {_human(c['bytes_transferred'])}"[:64]

    def _tally(self) -> dict[str, int]:
        tally = getattr(self._local, "tally", None)
        if tally is None:
            tally = self._local.tally = dict.fromkeys(self.counters, 0)  # fixed keys: safe to read from others
            with self.lock:
                self._tallies.append(tally)
        return tally

    def _count(self, **amounts: int) -> None:
        tally = self._tally()
        for key, value in amounts.items():
            tally[key] += value

    def _add(self, key: str, amount: int) -> None:
        self._tally()[key] += amount

    def _fail(self, errors: list[ItemError], code: str | None = None, description: str | None = None) -> ActionFailed:
        codes = {e.code for e in errors}
        if code is None:
            code = errors[0].code if len(codes) == 1 else "TransferFailed"
        if description is None:
            first = errors[0]
            where = first.source if first.source is not None else first.destination
            description = f"{len(errors)} item(s) failed; the first: {paths.display(where or '')}: {first.description}"
        details = self.details("FAILED")
        if errors:
            details["errors"] = [e.document() for e in errors[:MAX_ERRORS_SHOWN]]
        if len(errors) > MAX_ERRORS_SHOWN:
            details["errors_count"] = len(errors)
        return ActionFailed(code, description, **details)

    # --- the run ------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            self.src = open_storage(self.source)
            self._storages.append(self.src)
            self.dst = open_storage(self.destination)
            self._storages.append(self.dst)
            for storage in (self.src, self.dst):
                storage.read_block = self.settings.chunk_size  # type: ignore[attr-defined]
        except CollectionError as exc:
            self._close()
            raise ActionFailed("EndpointError", str(exc), **self.details("FAILED")) from None
        try:
            self._plan()
            self.ctx.check()
            self.ctx.progress(details=self.details("ACTIVE"), display_status="starting")
            self._last_progress = time.monotonic()
            if self.ctx.attempt > 1:
                self.previous = self.records.load()
                if self.previous:
                    self.ctx.log(f"Rerun: {len(self.previous)} file(s) finished by an earlier attempt are kept.")
            else:
                self.records.purge_stale()
            if self.request.delete_destination_extra:
                self._delete_extra()
            self._make_dirs()
            self._copy_all()
            self._flush()
            if self.stop_reason == "deadline":
                raise self._fail(self.errors, "DeadlineExceeded", "The transfer did not finish before its deadline.")
            self.ctx.check()
            if self.errors:
                raise self._fail(self.errors)
            details = self.details("SUCCEEDED")
        except ActionCancelled:
            self.stop.set()
            raise  # records stay: the process may be stopping, and the action may run again elsewhere
        except ActionFailed:
            self.records.clear()
            raise
        finally:
            self._close()
        self.records.clear()
        return details

    def _close(self) -> None:
        for storage in self._storages:
            try:
                storage.close()
            except Exception:  # pragma: no cover - best effort
                logger.exception("closing a storage connection failed")
        self._storages = []

    def _checkpoint(self) -> None:
        if self.stop.is_set():
            raise Stopped()
        if self.ctx.cancelled:
            self.stop.set()
            raise Stopped()
        deadline = self.request.deadline
        if deadline is not None and time.time() >= deadline:
            self._stop_for("deadline")
            raise Stopped()

    def _stop_for(self, reason: str) -> None:
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
        self.stop.set()

    # --- planning -----------------------------------------------------------------------------------------------

    def _excluded(self, rel: str, stat: FileStat) -> bool:
        name = paths.name(rel)
        for rule in self.request.filter_rules:
            if rule.type is not None and rule.type != ("dir" if stat.kind == "dir" else "file"):
                continue
            if fnmatch.fnmatchcase(name, rule.name):
                return rule.method == "exclude"
        return False

    def _plan(self) -> None:
        src, dst = self.src, self.dst
        assert src is not None and dst is not None
        errors: list[ItemError] = []
        tasks: list[FileTask] = []
        by_destination: dict[str, FileTask] = {}
        prune = self._excluded if self.request.filter_rules else None
        source_dirs = 0

        def add(task: FileTask) -> None:
            other = by_destination.get(task.dst)
            if other is not None:
                errors.append(ItemError("DuplicateDestination",
                                        f"{paths.display(other.src)} and {paths.display(task.src)} would both be "
                                        "written there", task.src, task.dst))
                return
            by_destination[task.dst] = task
            tasks.append(task)

        for item in self.request.items:
            self._checkpoint_planning()
            try:
                stat = src.stat(item.src)
            except Exception as exc:
                errors.append(source_error(exc, item.src, item.dst))
                continue
            if stat is None:
                errors.append(ItemError("SourceNotFound", "No such file or directory on the source", item.src,
                                        item.dst, skippable=True))
                continue
            if stat.kind == "dir":
                if not item.recursive:
                    errors.append(ItemError("SourceIsDirectory",
                                            f"{item.source_path} is a folder: set recursive: true to copy it",
                                            item.src, item.dst))
                    continue
                self.dirs.add(item.dst)
                source_dirs += 1
                for entry in src.walk(item.src, prune=prune, check=self._checkpoint_planning):
                    under = entry.rel[len(item.src) + 1:] if item.src else entry.rel
                    target = paths.join(item.dst, under)
                    if entry.error is not None:
                        errors.append(source_error(entry.error, entry.rel, target))
                    elif entry.stat.kind == "dir":
                        self.dirs.add(target)
                        source_dirs += 1
                    elif entry.stat.kind == "file":
                        add(FileTask(item, entry.rel, target, entry.stat.size, entry.stat.mtime))
                    else:
                        errors.append(ItemError("SourceNotRegular", "Not a regular file or folder; not copied",
                                                entry.rel, target, skippable=True))
            elif stat.kind == "file":
                target = item.dst
                if item.destination_path.endswith("/") or not target:
                    target = paths.join(target, paths.name(item.src))
                if paths.parent(target):
                    self.dirs.add(paths.parent(target))
                add(FileTask(item, item.src, target, stat.size, stat.mtime))
            else:
                errors.append(ItemError("SourceNotRegular", "Not a regular file or folder", item.src, item.dst,
                                        skippable=True))
        # Where things will be written must stay inside the destination too.
        for directory in sorted(self.dirs):
            self._checkpoint_planning()
            try:
                dst.confine(directory)
            except PathOutsideCollection as exc:
                errors.append(destination_error(exc, None, directory))
        if isinstance(dst, LocalStorage):
            for task in tasks:
                self._checkpoint_planning()
                try:
                    dst.confine(task.dst)
                except PathOutsideCollection as exc:
                    errors.append(destination_error(exc, task.src, task.dst))
        if self.authorize is not None and not errors:
            errors.extend(self._unauthorized(tasks))
        skippable = [e for e in errors if e.skippable]
        fatal = [e for e in errors if not e.skippable]
        if not self.request.skip_source_errors:
            fatal = errors
        else:
            self.skipped.extend(skippable)
        self.tasks = tasks
        with self.lock:
            self.counters["files"] = len(tasks) + (len(self.skipped) if self.request.skip_source_errors else 0)
            self.counters["files_skipped"] = len(self.skipped)
            self.counters["directories"] = source_dirs
        if fatal:
            raise self._fail(fatal)

    def _unauthorized(self, tasks: list[FileTask]) -> list[ItemError]:
        """Access rules, on where each file really is: a link must not lead to what a rule does not cover."""
        assert self.authorize is not None and self.src is not None and self.dst is not None
        errors: list[ItemError] = []
        checked: dict[tuple[str, str], str | None] = {}

        def check(side: str, storage: Storage, rel: str, task_src: str | None, task_dst: str) -> None:
            try:
                real = storage.resolve(rel)
            except PathOutsideCollection as exc:
                errors.append(ItemError(exc.code, f"{exc.path} {exc.reason}", task_src, task_dst))
                return
            key = (side, real)
            if key not in checked:
                checked[key] = self.authorize(side, real)
            if checked[key] is not None:
                errors.append(ItemError("PermissionDenied", checked[key], task_src, task_dst))

        for task in tasks:
            self._checkpoint_planning()
            check("source", self.src, task.src, task.src, task.dst)
            check("destination", self.dst, task.dst, task.src, task.dst)
        for directory in sorted(self.dirs):
            self._checkpoint_planning()
            check("destination", self.dst, directory, None, directory)
        return errors

    def _checkpoint_planning(self) -> None:
        self.ctx.check()
        deadline = self.request.deadline
        if deadline is not None and time.time() >= deadline:
            raise ActionFailed("DeadlineExceeded", "The transfer did not finish before its deadline.",
                               **self.details("FAILED"))

    # --- destination folders and extras -------------------------------------------------------------------------

    def _make_dirs(self) -> None:
        dst = self.dst
        assert dst is not None
        made: set[str] = set()
        for directory in sorted(self.dirs, key=lambda d: (d.count("/"), d)):
            if not directory or directory in made:
                continue
            try:
                dst.makedirs(directory, check=self._checkpoint_planning)  # cancel stops it between folders
            except (ActionCancelled, ActionFailed):
                raise
            except Exception as exc:
                raise self._fail([destination_error(exc, None, directory)]) from None
            made.add(directory)

    def _delete_extra(self) -> None:
        dst = self.dst
        assert dst is not None
        keep_files = {t.dst for t in self.tasks}
        keep_files.update(e.destination for e in self.skipped if e.destination is not None)  # unreadable, not gone
        keep_dirs = set(self.dirs)
        for item in self.request.items:
            if not item.recursive:
                continue
            try:
                stat = dst.stat(item.dst)
            except Exception as exc:
                raise self._fail([destination_error(exc, item.src, item.dst)]) from None
            if stat is None or stat.kind != "dir":
                continue
            extra: list[tuple[str, str]] = []
            prune = self._excluded if self.request.filter_rules else None
            for entry in dst.walk(item.dst, follow_links=False, prune=prune, check=self._checkpoint_planning):
                if entry.error is not None:
                    raise self._fail([destination_error(entry.error, None, entry.rel)])
                kind = entry.stat.kind
                wanted = keep_dirs if kind == "dir" else keep_files
                if entry.rel not in wanted:
                    extra.append((entry.rel, kind))
            # Deepest first, so that a folder is empty when its turn comes.
            for rel, kind in sorted(extra, key=lambda e: e[0].count("/"), reverse=True):
                self.ctx.check()
                try:
                    dst.remove(rel, kind)
                except FileNotFoundError:
                    continue
                except Exception as exc:
                    raise self._fail([destination_error(exc, None, rel)]) from None
                if kind != "dir":
                    self._count(files_deleted=1)
            if extra:
                self.ctx.log(f"Deleted {len(extra)} item(s) under {item.destination_path} not in the source.")

    # --- copying ------------------------------------------------------------------------------------------------

    def _worker_storages(self) -> tuple[Storage, Storage]:
        local = self._local
        if getattr(local, "pair", None) is None:
            assert self.src is not None and self.dst is not None
            src = self.src.fork()
            dst = self.dst.fork()
            with self.lock:
                for storage in (src, dst):
                    if storage is not self.src and storage is not self.dst:
                        self._storages.append(storage)
            local.pair = (src, dst)
            local.buffer = bytearray(self.settings.chunk_size)
        return local.pair

    def _lanes(self) -> list[tuple[int, list[list[FileTask]]]]:
        """How the files are shared out: (threads, batches of files) per lane.

        Remote storage: every file on its own, on ``threads`` threads (they hide the network's latency). Disk to
        disk: large files on as many threads as there are cores (hashing and I/O run in parallel), small files
        in batches on one more thread: for them more threads only queue for the GIL and in the kernel (a checksum
        rerun of 10,000 small files took twice as long on two threads as on one).
        """
        ordered = sorted(self.tasks, key=lambda t: -t.size)  # the biggest first: a long one must not start last
        if not (isinstance(self.src, LocalStorage) and isinstance(self.dst, LocalStorage)):
            return [(max(1, min(self.settings.threads, len(ordered))), [[t] for t in ordered])]
        large = [t for t in ordered if t.size >= SMALL_FILE_BYTES]
        small = [t for t in ordered if t.size < SMALL_FILE_BYTES]
        lanes = []
        if large:
            cores = max(2, os.cpu_count() or 2)
            lanes.append((max(1, min(self.settings.threads, cores, len(large))), [[t] for t in large]))
        if small:
            batches = [small[i:i + SMALL_FILE_BATCH] for i in range(0, len(small), SMALL_FILE_BATCH)]
            lanes.append((max(1, min(SMALL_FILE_THREADS, self.settings.threads, len(batches))), batches))
        return lanes

    def _copy_all(self) -> None:
        if not self.tasks:
            return
        self._remaining = len(self.tasks)
        self._all_done = threading.Event()
        pools = []
        try:
            for threads, batches in self._lanes():
                pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"aptk-transfer-{self.token}")
                pools.append(pool)
                for batch in batches:
                    pool.submit(self._work_batch, batch)
            while not self._all_done.wait(0.2):
                if self.ctx.cancelled:
                    self.stop.set()
                deadline = self.request.deadline
                if deadline is not None and time.time() >= deadline:
                    self._stop_for("deadline")
                self._tick()
        except BaseException:
            self.stop.set()
            raise
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)

    def _work_batch(self, batch: list[FileTask]) -> None:
        for task in batch:
            self._work(task)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_SECONDS:
            self._flush()
        if now - self._last_progress >= PROGRESS_SECONDS and not self.stop.is_set():
            self._last_progress = now
            self._flush()  # what the details count as done is recorded first
            self.ctx.progress(details=self.details("ACTIVE"), display_status=self._display_status())

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        with self.lock:
            batch, self.pending_records = self.pending_records, []
        if batch:
            self.records.add(batch)

    def _work(self, task: FileTask) -> None:
        try:
            if not self.stop.is_set():
                self._transfer_file(task)
        except Stopped:
            pass
        except ItemError as exc:
            self._item_failed(exc)
        except Exception as exc:  # a bug, or an error the storage did not classify
            logger.exception("transfer of %s failed", task.src)
            self._item_failed(ItemError("TransferError", f"{type(exc).__name__}: {exc}", task.src, task.dst))
        finally:
            with self.lock:
                self._remaining -= 1
                if self._remaining == 0:
                    self._all_done.set()

    def _item_failed(self, error: ItemError) -> None:
        if error.skippable and self.request.skip_source_errors:
            with self.lock:
                self.skipped.append(error)
            self._add("files_skipped", 1)
            return
        with self.lock:
            self.errors.append(error)
        self.stop.set()

    def _transfer_file(self, task: FileTask) -> None:
        self._checkpoint()
        src, dst = self._worker_storages()
        previous = self.previous.get(task.dst)
        if previous is not None:
            current = on_destination(dst.stat, task.src, task.dst, task.dst)
            if (current is not None and current.kind == "file" and current.size == previous.size
                    and _same_time(current.mtime, previous.mtime)):
                self._count(files_transferred=1, bytes_transferred=previous.size)
                return
        if self.request.sync_level is not None and self._in_sync(task, src, dst):
            self._count(files_skipped=1)
            return
        expected = task.item.external_checksum
        for attempt in range(1, MAX_TRIES + 1):
            try:
                digest, written, verified = self._copy(
                    task, src, dst, hashing=self.request.verify_checksum or expected is not None)
            except Mismatch:
                pass  # caught before the file got its name
            else:
                if not self.request.verify_checksum or verified:
                    break
                if self._hash(dst, task.dst, on_destination, task) == digest:
                    break
            self._count(faults=1)
            self.ctx.log(f"Checksum mismatch after writing {paths.display(task.dst)} (attempt {attempt}); "
                         "copying it again.")
        else:
            raise ItemError("ChecksumMismatch",
                            f"The destination's checksum differed from the source's after {MAX_TRIES} attempts",
                            task.src, task.dst)
        if self.request.preserve_timestamp and task.mtime is not None and dst.supports_mtime:
            on_destination(dst.set_mtime, task.src, task.dst, task.dst, task.mtime)
            written = None
        final = written or on_destination(dst.stat, task.src, task.dst, task.dst)
        self._add("files_transferred", 1)
        with self.lock:
            self.pending_records.append(Done(task.dst, task.size if final is None else final.size,
                                             None if final is None else final.mtime, digest))

    def _in_sync(self, task: FileTask, src: Storage, dst: Storage) -> bool:
        current = on_destination(dst.stat, task.src, task.dst, task.dst)
        if current is None or current.kind != "file":
            return False
        level = self.request.sync_level
        if level == 0:
            return True
        if level == 2:
            if task.mtime is None or current.mtime is None:
                return current.size == task.size
            return int(task.mtime) <= int(current.mtime)
        if current.size != task.size:
            return False
        if level == 1:
            return True
        return self._hash(src, task.src, on_source, task) == self._hash(dst, task.dst, on_destination, task)

    def _hash(self, storage: Storage, rel: str, side: _Side, task: FileTask) -> str:
        digest = hashlib.sha256()
        reader = side(storage.open_read, task.src, task.dst, rel)
        try:
            readinto = getattr(reader, "readinto", None)
            buffer = memoryview(self._local.buffer)
            while True:
                self._checkpoint()
                if readinto is not None:
                    n = side(readinto, task.src, task.dst, buffer)
                    data = buffer[:n]
                else:
                    data = side(reader.read, task.src, task.dst, self.settings.chunk_size)
                    n = len(data)
                if not n:
                    break
                digest.update(data)
                self._add("bytes_checksummed", n)
        finally:
            try:
                reader.close()
            except Exception:
                pass
        return digest.hexdigest()

    def _copy(self, task: FileTask, src: Storage, dst: Storage, *,
              hashing: bool) -> tuple[str | None, FileStat | None, bool]:
        """Copy one file: its SHA-256 (when ``hashing``), what was written (when the storage says), and whether
        it was verified already (read back before it got its name; :class:`Mismatch` if that failed)."""
        reader = on_source(src.open_read, task.src, task.dst, task.src)
        try:
            writer = on_destination(dst.open_write, task.src, task.dst, task.dst, self.token,
                                    self.settings.chunk_size)
        except BaseException:
            reader.close()
            raise
        digest = hashlib.sha256() if hashing else None
        chunk = self.settings.chunk_size
        if self.settings.max_bytes_per_second:
            chunk = max(64 * 1024, min(chunk, int(self.settings.max_bytes_per_second / 4)))
        try:
            kernel_copy = getattr(writer, "copy_from", None)
            source_fd = getattr(reader, "fd", None)
            if digest is None and kernel_copy is not None and source_fd is not None and task.size >= KERNEL_COPY_BYTES:
                while True:
                    self._checkpoint()
                    n = on_destination(kernel_copy, task.src, task.dst, source_fd, chunk)
                    if not n:
                        break
                    self._add("bytes_transferred", n)
                    self.throttle.consume(n)
            else:
                readinto = getattr(reader, "readinto", None)
                buffer = memoryview(self._local.buffer)[:chunk]
                while True:
                    self._checkpoint()
                    if readinto is not None:
                        n = on_source(readinto, task.src, task.dst, buffer)
                        data: Any = buffer[:n]
                    else:
                        data = on_source(reader.read, task.src, task.dst, chunk)
                        n = len(data)
                    if not n:
                        break
                    if digest is not None:
                        digest.update(data)
                    on_destination(writer.write, task.src, task.dst, data)
                    self._add("bytes_transferred", n)
                    self.throttle.consume(n)
            self._checkpoint()
            hexdigest = digest.hexdigest() if digest is not None else None
            expected = task.item.external_checksum
            if expected is not None and hexdigest != expected:
                raise ItemError("ChecksumMismatch", "The source's SHA-256 is not the external_checksum given",
                                task.src, task.dst)
            verified = False
            read_back = getattr(writer, "read_back", None)
            if self.request.verify_checksum and hexdigest is not None and read_back is not None:
                check = hashlib.sha256()
                pieces = read_back(memoryview(self._local.buffer))
                while True:
                    self._checkpoint()
                    piece = on_destination(next, task.src, task.dst, pieces, None)
                    if piece is None:
                        break
                    check.update(piece)
                    self._add("bytes_checksummed", len(piece))
                if check.hexdigest() != hexdigest:
                    raise Mismatch()
                verified = True
            on_destination(writer.commit, task.src, task.dst)
        except BaseException:
            writer.abort()
            raise
        finally:
            try:
                reader.close()
            except Exception:
                pass
        return hexdigest, getattr(writer, "written", None), verified


def _same_time(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1e-3


def sync_level_name(level: int | None) -> str | None:
    return None if level is None else SYNC_NAMES[level]


__all__ = ["CHECKSUM_ALGORITHM", "FileTask", "ItemError", "Settings", "Transfer", "sync_level_name"]

"""Copying the planned files: several at once, each streamed in bounded chunks, hashed, verified, recorded.

See :func:`lanes` for how files are shared out among threads. Each thread streams its file in
``APTK_TRANSFER_CHUNK_BYTES`` chunks (memory: threads x one chunk, whatever the file sizes), computing its checksum
(``checksum_algorithm``) as it reads, and checks between chunks whether the action was cancelled, passed its
deadline or another file failed, so that it stops within a chunk's time. With ``verify_checksum`` it then re-reads
the destination (before the file gets its name, where the storage can) and compares; a mismatch recopies the file
(``faults`` counts it), three times at most. Every finished file is recorded so that a rerun after a crash skips
it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from typing import Any, Callable

from toolkit import ActionCancelled, RunContext

from providers.collections import paths

from . import checksums
from .control import Control, Throttle
from .errors import ItemError, Mismatch, Side, Stopped, destination_error, on_destination, on_source, source_error
from .planning import FileTask
from .processes import ProcessLane, eligible, stat_in_sync
from .progress import Counters, Progress, Report
from .request import TransferRequest
from .state import Done, Uploads
from .storage import FileStat, LocalDisk, ReadsBack, Storage, capable, has_descriptor, kernel_copy, reads_back, reads_into
from .storage import begins_uploads, reports_written, settable_times, whole_files

__all__ = ["Copying", "Settings", "lanes"]

logger = logging.getLogger("providers.transfer")

MAX_TRIES = 3
KERNEL_COPY_BYTES = 1 << 20  # smaller files: read and write (copy_file_range costs more than it saves)
SMALL_FILE_BYTES = 1 << 20  # disk to disk, smaller files go in batches to a lane of their own
SMALL_FILE_BATCH = 64
SMALL_FILE_RERUN_THREADS = 1  # measured: a second thread made a checksum rerun slower (hashing holds the GIL)


def lanes(tasks: list[FileTask], src: Storage, dst: Storage, threads: int,
          hashing_only: bool = False) -> list[tuple[int, list[list[FileTask]]]]:
    """How the files are shared out: (threads, batches of files) per lane.

    Remote storage: every file on its own, on ``threads`` threads (they hide the network's latency). Disk to
    disk: large files on as many threads as there are cores (hashing and I/O run in parallel); small files in
    batches on a lane of their own, with as many threads as there are cores when they are copied (their time goes
    to the kernel making, writing and naming files, which runs on every core: measured on 2 cores, 10,000 files of
    4 KiB took 0.8x the time on two threads as on one), but one when they are mostly only hashed
    (``hashing_only``: a ``sync_level: checksum`` rerun, where more threads queue for the GIL; a rerun of 10,000
    small files took longer on two threads than on one).
    """
    ordered = sorted(tasks, key=lambda t: -t.size)  # the biggest first: a long one must not start last
    if not (capable(src, LocalDisk) and capable(dst, LocalDisk)):
        return [(max(1, min(threads, len(ordered))), [[t] for t in ordered])]
    large = [t for t in ordered if t.size >= SMALL_FILE_BYTES]
    small = [t for t in ordered if t.size < SMALL_FILE_BYTES]
    cores = max(2, os.cpu_count() or 2)
    result = []
    if large:
        result.append((max(1, min(threads, cores, len(large))), [[t] for t in large]))
    if small:
        batches = [small[i:i + SMALL_FILE_BATCH] for i in range(0, len(small), SMALL_FILE_BATCH)]
        lane_threads = SMALL_FILE_RERUN_THREADS if hashing_only else cores
        result.append((max(1, min(lane_threads, threads, len(batches))), batches))
    return result


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a transfer copies: files at once (APTK_TRANSFER_THREADS), bytes at a time (APTK_TRANSFER_CHUNK_BYTES),
    bandwidth (APTK_TRANSFER_MAX_BYTES_PER_SECOND, 0 for no limit), worker processes for many small files disk to
    disk (APTK_TRANSFER_PROCESSES, 0 for none) from how many such files (APTK_TRANSFER_PROCESS_FILES); see
    :mod:`~providers.transfer.processes`."""

    threads: int = 8
    chunk_size: int = 8 * 1024 * 1024
    max_bytes_per_second: float = 0.0
    processes: int = dataclasses.field(default_factory=lambda: default_processes())
    process_files: int = 4000


def default_processes() -> int:
    """APTK_TRANSFER_PROCESSES when not set: the cores this process may run on, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _same_time(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1e-3


@dataclasses.dataclass
class _Worker:
    """What one copying thread holds: its own storages and its chunk buffer."""

    src: Storage
    dst: Storage
    buffer: bytearray


class Copying:
    """Copies the planned files on a few threads; item errors are collected (``errors``, or skipped)."""

    def __init__(self, ctx: RunContext, request: TransferRequest, settings: Settings, control: Control,
                 counters: Counters, report: Report, progress: Progress, previous: dict[str, Done],
                 src: Storage, dst: Storage, token: str, adopt: Callable[[Storage], None],
                 uploads: Uploads | None = None) -> None:
        self.ctx = ctx
        self.request = request
        self.settings = settings
        self.control = control
        self.counters = counters
        self.report = report
        self.progress = progress
        self.previous = previous
        self.src = src
        self.dst = dst
        self.token = token
        self.adopt = adopt  # closes the storages a thread forks when the transfer ends
        self.uploads = uploads  # multipart uploads begun and not ended, recorded so that a crash leaves none
        self.throttle = Throttle(settings.max_bytes_per_second, control.event)
        self.errors: list[ItemError] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._remaining = 0
        self._all_done = threading.Event()
        # Files up to this size go whole (one read, one write, one read back) when both storages can
        # (:class:`~providers.transfer.storage.WholeFiles`); -1: never.
        self.whole_limit = -1
        if whole_files(src) and whole_files(dst):
            self.whole_limit = min(SMALL_FILE_BYTES - 1, self.chunk_size())
        self.max_tries = MAX_TRIES
        self.process_lane: ProcessLane | None = None

    def chunk_size(self) -> int:
        """Bytes read and written at a time: APTK_TRANSFER_CHUNK_BYTES, under a bandwidth limit at most a quarter
        of a second's worth (at least 64 KiB)."""
        chunk, rate = self.settings.chunk_size, self.settings.max_bytes_per_second
        return max(64 * 1024, min(chunk, int(rate / 4))) if rate else chunk

    def _for_processes(self, tasks: list[FileTask]) -> tuple[list[FileTask], list[FileTask]]:
        """The files worker processes copy (small, disk to disk, not finished by an earlier attempt, no
        external checksum), and the rest; none when fewer than ``process_files`` (the fork costs more)."""
        settings = self.settings
        if settings.processes < 1 or self.whole_limit < 0 or not eligible(self.src, self.dst):
            return [], tasks
        limit, previous = self.whole_limit, self.previous
        pooled = [t for t in tasks if t.size <= limit and t.item.external_checksum is None and t.dst not in previous]
        if not pooled or len(pooled) < settings.process_files:
            return [], tasks
        if len(pooled) == len(tasks):
            return pooled, []
        chosen = {id(t) for t in pooled}
        return pooled, [t for t in tasks if id(t) not in chosen]

    # --- the threads --------------------------------------------------------------------------------------------

    def run(self, tasks: list[FileTask]) -> None:
        if not tasks:
            return
        self._remaining = len(tasks)
        pools = []
        pooled, tasks = self._for_processes(tasks)
        try:
            if pooled:
                self.process_lane = ProcessLane(self, pooled, self.settings.processes)
                self.process_lane.start()
            for threads, batches in lanes(tasks, self.src, self.dst, self.settings.threads,
                                          hashing_only=self.request.sync_level == 3):
                pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"aptk-transfer-{self.token}")
                pools.append(pool)
                for batch in batches:
                    pool.submit(self._batch, batch)
            while not self._all_done.wait(0.2):
                self.control.poll()
                self.progress.tick(stopping=self.control.stopped)
        except BaseException:
            self.control.stop()
            raise
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)
            if self.process_lane is not None:
                self.process_lane.join()

    def _batch(self, batch: list[FileTask]) -> None:
        for task in batch:
            self.one(task)

    def finish(self, files: int) -> None:
        """``files`` are done with (copied, skipped, failed, or left when the transfer stopped)."""
        if not files:
            return
        with self._lock:
            self._remaining -= files
            if self._remaining <= 0:
                self._all_done.set()

    def one(self, task: FileTask) -> None:
        """Copy one file here (whatever happens, it is done with after)."""
        try:
            if not self.control.stopped:
                self.transfer_file(task)
        except Stopped:
            pass
        except ItemError as exc:
            self.failed_item(exc)
        except Exception as exc:  # a bug, or an error the storage did not classify
            logger.exception("transfer of %s failed", task.src)
            self.failed_item(ItemError("TransferError", f"{type(exc).__name__}: {exc}", task.src, task.dst))
        finally:
            self.finish(1)

    def failed_item(self, error: ItemError) -> None:
        if error.skippable and self.request.skip_source_errors:
            self.report.skip(error)
            self.counters.add(files_skipped=1)
            return
        with self._lock:
            self.errors.append(error)
        self.counters.add(subtasks_failed=1)
        self.control.stop()

    def _worker(self) -> _Worker:
        worker: _Worker | None = getattr(self._local, "worker", None)
        if worker is None:
            worker = _Worker(self.src.fork(), self.dst.fork(), bytearray(self.settings.chunk_size))
            for storage in (worker.src, worker.dst):
                if storage is not self.src and storage is not self.dst:
                    self.adopt(storage)
            self._local.worker = worker
        return worker

    # --- one file -----------------------------------------------------------------------------------------------

    def transfer_file(self, task: FileTask) -> None:
        self.control.checkpoint()
        worker = self._worker()
        dst = worker.dst
        previous = self.previous.get(task.dst)
        if previous is not None:
            current = on_destination(dst.stat, task.src, task.dst, task.dst)
            if (current is not None and current.kind == "file" and current.size == previous.size
                    and _same_time(current.mtime, previous.mtime)):
                self.counters.add(files_transferred=1, bytes_transferred=previous.size)
                return
        if self.request.sync_level is not None and self._in_sync(task, worker):
            self.counters.add(files_skipped=1)
            return
        expected = task.item.external_checksum
        for attempt in range(1, self.max_tries + 1):
            try:
                hashing = self.request.verify_checksum or expected is not None
                done = self._copy_whole(task, worker, hashing) if task.size <= self.whole_limit else None
                digest, written, verified = done or self._copy(task, worker, hashing=hashing)
            except Mismatch:
                pass  # caught before the file got its name
            else:
                if not self.request.verify_checksum or verified:
                    break
                if self._hash(worker, dst, task.dst, on_destination, task) == digest:
                    break
            self.counters.add(faults=1)
            self.mismatch_logged(task, attempt)
        else:
            raise self.mismatch_error(task)
        if self.request.preserve_timestamp and task.mtime is not None and settable_times(dst):
            on_destination(dst.set_mtime, task.src, task.dst, task.dst, task.mtime)
            written = None
        final = written or on_destination(dst.stat, task.src, task.dst, task.dst)
        self.counters.add(files_transferred=1)
        self.progress.finished(Done(task.dst, task.size if final is None else final.size,
                                    None if final is None else final.mtime, digest))

    def mismatch_logged(self, task: FileTask, attempt: int) -> None:
        self.ctx.log(f"Checksum mismatch after writing {paths.display(task.dst)} (attempt {attempt}); "
                     "copying it again.")

    def mismatch_error(self, task: FileTask) -> ItemError:
        return ItemError("ChecksumMismatch",
                         f"The destination's checksum differed from the source's after {self.max_tries} attempts",
                         task.src, task.dst)

    def _in_sync(self, task: FileTask, worker: _Worker) -> bool:
        if self.request.sync_level == 3 and task.size <= self.whole_limit:
            return self._in_sync_whole(task, worker)
        current = on_destination(worker.dst.stat, task.src, task.dst, task.dst)
        level = self.request.sync_level
        assert level is not None
        if not stat_in_sync(level, task, current):
            return False
        if level != 3:
            return True
        return (self._hash(worker, worker.src, task.src, on_source, task)
                == self._hash(worker, worker.dst, task.dst, on_destination, task))

    def _in_sync_whole(self, task: FileTask, worker: _Worker) -> bool:
        """``sync_level: checksum`` for a small file between two storages that read whole files: both read
        in one call each and hashed (a destination of another size, or none, is not in sync: nothing to hash)."""
        try:
            theirs = worker.dst.read_whole(task.dst, task.size, only_compared=True)  # type: ignore[attr-defined]
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, BlockingIOError):
            return False  # nothing there, or not a file: copied (and what is in the way reported then)
        except (Stopped, ActionCancelled):
            raise
        except Exception as exc:
            raise destination_error(exc, task.src, task.dst) from exc
        if theirs is None:
            return False
        try:  # only compared too: what is no longer a file of that size is copied, and looked at closely then
            ours = worker.src.read_whole(task.src, task.size, only_compared=True)  # type: ignore[attr-defined]
        except (IsADirectoryError, BlockingIOError):
            return False
        except (Stopped, ActionCancelled):
            raise
        except Exception as exc:
            raise source_error(exc, task.src, task.dst) from exc
        if ours is None:
            return False
        algorithm = self.request.checksum_algorithm
        self.counters.add(bytes_checksummed=2 * task.size)
        return checksums.of(algorithm, ours) == checksums.of(algorithm, theirs)

    def _copy_whole(self, task: FileTask, worker: _Worker,
                    hashing: bool) -> tuple[str | None, FileStat | None, bool] | None:
        """:meth:`_copy` for a small file between two storages that read and write whole files: one read, one
        write, one read back (before the file gets its name). None if the source is no longer a file of the
        size it was listed with (:meth:`_copy` then streams it, and reports what is wrong)."""
        self.control.checkpoint()
        data = on_source(worker.src.read_whole, task.src, task.dst, task.src, task.size)  # type: ignore[attr-defined]
        if data is None:
            return None
        algorithm = self.request.checksum_algorithm
        hexdigest = checksums.of(algorithm, data) if hashing else None
        expected = task.item.external_checksum
        if expected is not None:
            given = hexdigest if task.item.checksum_algorithm == algorithm else checksums.of(
                task.item.checksum_algorithm, data)
            if given != expected:
                raise ItemError("ChecksumMismatch", f"The source's {task.item.checksum_algorithm} is not the "
                                "external_checksum given", task.src, task.dst)
        verify = None
        if self.request.verify_checksum and hexdigest is not None:
            counters = self.counters

            def verify(back: bytes) -> bool:
                counters.add(bytes_checksummed=len(back))
                return checksums.of(algorithm, back) == hexdigest

        written = on_destination(worker.dst.write_whole, task.src, task.dst,  # type: ignore[attr-defined]
                                 task.dst, self.token, data, verify)
        self.counters.add(bytes_transferred=task.size)  # a copy that failed its check was transferred all the same
        self.throttle.consume(task.size)
        if written is None:
            raise Mismatch()
        return hexdigest, written, verify is not None

    def _hash(self, worker: _Worker, storage: Storage, rel: str, side: Side, task: FileTask) -> str:
        digest = checksums.new(self.request.checksum_algorithm)
        reader = side(storage.open_read, task.src, task.dst, rel, self.settings.chunk_size)
        checkpoint = self.control.checkpoint
        try:
            buffer = memoryview(worker.buffer)
            readinto = reader.readinto if reads_into(reader) else None
            chunk = self.settings.chunk_size
            try:  # one error handler for the whole file (not one per read): the same errors, less per-file work
                while True:
                    checkpoint()
                    if readinto is not None:
                        n = readinto(buffer)
                        data: Any = buffer[:n]
                    else:
                        data = reader.read(chunk)
                        n = len(data)
                    if not n:
                        break
                    digest.update(data)
                    self.counters.add(bytes_checksummed=n)
            except (Stopped, ActionCancelled):
                raise
            except Exception as exc:
                raise side.make(exc, task.src, task.dst) from exc
        finally:
            try:
                reader.close()
            except Exception:
                pass
        return digest.hexdigest()

    def _copy(self, task: FileTask, worker: _Worker, *, hashing: bool) -> tuple[str | None, FileStat | None, bool]:
        """Copy one file: its checksum (when ``hashing``), what was written (when the storage says), and whether
        it was verified already (read back before it got its name; :class:`Mismatch` if that failed)."""
        chunk = self.chunk_size()
        reader = on_source(worker.src.open_read, task.src, task.dst, task.src, self.settings.chunk_size)
        try:
            writer = on_destination(worker.dst.open_write, task.src, task.dst, task.dst, self.token,
                                    self.settings.chunk_size)
        except BaseException:
            reader.close()
            raise
        if self.uploads is not None and begins_uploads(writer):
            uploads = self.uploads
            writer.on_upload = lambda upload_id: uploads.begun(task.dst, upload_id)
        digest = checksums.new(self.request.checksum_algorithm) if hashing else None
        expected = task.item.external_checksum
        external = None  # the external_checksum's own algorithm, when it is another
        if expected is not None and task.item.checksum_algorithm != self.request.checksum_algorithm:
            external = checksums.new(task.item.checksum_algorithm)
        try:
            if (digest is None and kernel_copy(writer) and has_descriptor(reader)
                    and task.size >= KERNEL_COPY_BYTES):
                while True:
                    self.control.checkpoint()
                    n = on_destination(writer.copy_from, task.src, task.dst, reader.fd, chunk)
                    if not n:
                        break
                    self.counters.add(bytes_transferred=n)
                    self.throttle.consume(n)
            else:
                buffer = memoryview(worker.buffer)[:chunk]
                readinto = reader.readinto if reads_into(reader) else None
                while True:
                    self.control.checkpoint()
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
                    if external is not None:
                        external.update(data)
                    on_destination(writer.write, task.src, task.dst, data)
                    self.counters.add(bytes_transferred=n)
                    self.throttle.consume(n)
            self.control.checkpoint()
            hexdigest = digest.hexdigest() if digest is not None else None
            if expected is not None and (external or digest).hexdigest() != expected:  # type: ignore[union-attr]
                raise ItemError("ChecksumMismatch", f"The source's {task.item.checksum_algorithm} is not the "
                                "external_checksum given", task.src, task.dst)
            verified = False
            if self.request.verify_checksum and hexdigest is not None and reads_back(writer):
                self._read_back(task, worker, writer, hexdigest)
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
            if self.uploads is not None and begins_uploads(writer) and writer.upload_id is not None:
                self.uploads.ended(writer.upload_id)  # completed or aborted
        return hexdigest, writer.written if reports_written(writer) else None, verified

    def _read_back(self, task: FileTask, worker: _Worker, writer: ReadsBack, hexdigest: str) -> None:
        check = checksums.new(self.request.checksum_algorithm)
        pieces = writer.read_back(memoryview(worker.buffer))
        while True:
            self.control.checkpoint()
            piece = on_destination(next, task.src, task.dst, pieces, None)
            if piece is None:
                break
            check.update(piece)
            self.counters.add(bytes_checksummed=len(piece))
        if check.hexdigest() != hexdigest:
            raise Mismatch()

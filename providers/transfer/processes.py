"""Many small files disk to disk, copied by forked worker processes: each copies, hashes and verifies a batch of
files at a time and answers one compact line per file, so that the work runs on every core instead of queueing
for the interpreter lock.

A transfer uses them when both collections are local disk, there is no bandwidth limit, and at least
``APTK_TRANSFER_PROCESS_FILES`` of its files are small enough to go whole (one read, one write, one read back);
``APTK_TRANSFER_PROCESSES`` of them (0: never). Each worker is forked once per transfer and inherits the planned
files, so what goes down its pipe is a batch's range (two numbers) and what comes back per file is its outcome,
checksum, size and modification time.

A worker touches nothing but the two local storages, ``hashlib`` and its two pipes: no database, no logging, no
lock a thread of the parent might have held when it forked. It does only the common case: a file whose source is
no longer a regular file of the listed size, any error, or a checksum that keeps differing, is answered
``FALLBACK`` and copied again by the parent the ordinary way, which says what is wrong. A transfer that stops
(cancel, deadline, a failed file) kills its workers at once: a file one was writing has no name yet (or its hidden
temporary one, removed as the transfer ends), and every file under its name is whole. A worker that dies
(killed, out of memory) leaves its unanswered files to the parent, which copies them itself. When the parent
dies, its workers find their pipe closed and end after their batch.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import select
import signal
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from . import checksums
from .errors import ItemError
from .planning import FileTask
from .state import Done
from .storage import FileStat, LocalStorage
from .storage.local import DirectFiles

if TYPE_CHECKING:
    from .copying import Copying

__all__ = ["BATCH_BYTES", "BATCH_FILES", "FALLBACK", "ProcessLane", "Shares", "eligible"]

logger = logging.getLogger("providers.transfer")

BATCH_FILES = 64
BATCH_BYTES = 4 << 20
POLL_SECONDS = 0.1  # how often the thread waiting for the workers' answers looks whether the transfer stopped
IN_FLIGHT = 2  # batches handed to a worker before its first answer: it never waits for the parent

COPIED, SKIPPED, FALLBACK, MISMATCH = 0, 1, 2, 3
_RANGE = struct.Struct("<II")
_LENGTH = struct.Struct("<I")


def eligible(src: object, dst: object) -> bool:
    """Whether a transfer between these storages may use worker processes (local disk, known to be safe to use
    in a forked process)."""
    return isinstance(src, LocalStorage) and isinstance(dst, LocalStorage) and hasattr(os, "fork")


class _Job:
    """What a worker needs: everything inherited at the fork."""

    def __init__(self, tasks: list[FileTask], src: LocalStorage, dst: LocalStorage, token: str, algorithm: str,
                 sync_level: int | None, verify: bool, preserve_timestamp: bool, max_tries: int) -> None:
        self.tasks = tasks
        self.src = src
        self.dst = dst
        self.token = token
        self.algorithm = algorithm
        self.sync_level = sync_level
        self.verify = verify
        self.preserve_timestamp = preserve_timestamp
        self.max_tries = max_tries


def stat_in_sync(level: int, task: FileTask, current: FileStat | None) -> bool:
    """Whether the destination as ``stat`` found it (``current``) is in sync with ``task``'s source at
    ``sync_level`` 0 (exists), 1 (same size) or 2 (not older); at 3 (checksum) whether hashing is needed at all
    (False: of another size, or not a file)."""
    if current is None or current.kind != "file":
        return False
    if level == 0:
        return True
    if level == 2:
        if task.mtime is None or current.mtime is None:
            return current.size == task.size
        return int(task.mtime) <= int(current.mtime)
    return current.size == task.size


# --- in the worker ----------------------------------------------------------------------------------------------

def _direct(storage: LocalStorage) -> "DirectFiles | LocalStorage":
    return DirectFiles(storage) if DirectFiles.suits(storage) else storage


def _file(job: _Job, src: "DirectFiles | LocalStorage", dst: "DirectFiles | LocalStorage",
          task: FileTask) -> tuple[Any, ...]:
    """One file: (outcome, checksum, size, mtime, bytes transferred, bytes checksummed, faults)."""
    algorithm = job.algorithm
    of = checksums.of
    checksummed = 0
    level = job.sync_level
    if level == 3:
        try:
            theirs = dst.read_whole(task.dst, task.size, only_compared=True)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, BlockingIOError):
            theirs = None
        if theirs is not None:
            ours = src.read_whole(task.src, task.size, only_compared=True)
            if ours is None:
                return (FALLBACK,)
            checksummed = 2 * task.size
            if of(algorithm, ours) == of(algorithm, theirs):
                return (SKIPPED, None, 0, None, 0, checksummed, 0)
    elif level is not None and stat_in_sync(level, task, dst.stat(task.dst)):
        return (SKIPPED, None, 0, None, 0, 0, 0)
    data = src.read_whole(task.src, task.size)
    if data is None:
        return (FALLBACK,)
    hexdigest = of(algorithm, data) if job.verify else None
    verify = None
    if hexdigest is not None:
        def verify(back: bytes) -> bool:
            return of(algorithm, back) == hexdigest
    transferred = faults = 0
    while True:
        written = dst.write_whole(task.dst, job.token, data, verify)
        transferred += task.size
        if verify is not None:
            checksummed += task.size
        if written is not None:
            break
        faults += 1  # read back differently: written again
        if faults == job.max_tries:
            return (MISMATCH, None, 0, None, transferred, checksummed, faults)
    if job.preserve_timestamp and task.mtime is not None:
        dst.set_mtime(task.dst, task.mtime)
        written = dst.stat(task.dst)
    size, mtime = (task.size, None) if written is None else (written.size, written.mtime)
    return (COPIED, hexdigest, size, mtime, transferred, checksummed, faults)


def _batch(job: _Job, src: "DirectFiles | LocalStorage", dst: "DirectFiles | LocalStorage",
           tasks: list[FileTask]) -> tuple[tuple[int, int, int, int, int], list[tuple[int, int, int]],
                                           list[tuple[int, str | None, int, float | None]]]:
    """A batch's answer, compact (the parent books it in a few steps, whatever its size): the totals (files
    copied, skipped, bytes transferred, checksummed, faults); (index, outcome, faults) of each file that is not
    simply copied or skipped (FALLBACK, MISMATCH, or copied after faults); (index, checksum, size, mtime) of each
    file copied."""
    copied = skipped = transferred = checksummed = faults = 0
    unusual: list[tuple[int, int, int]] = []
    done: list[tuple[int, str | None, int, float | None]] = []
    for i, task in enumerate(tasks):
        try:
            answer = _file(job, src, dst, task)
        except Exception:
            answer = (FALLBACK,)
        outcome = answer[0]
        if outcome == FALLBACK:
            unusual.append((i, FALLBACK, 0))
            continue
        transferred += answer[4]
        checksummed += answer[5]
        if answer[6] or outcome == MISMATCH:
            faults += answer[6]
            unusual.append((i, outcome, answer[6]))
        if outcome == COPIED:
            copied += 1
            done.append((i, answer[1], answer[2], answer[3]))
        elif outcome == SKIPPED:
            skipped += 1
    return (copied, skipped, transferred, checksummed, faults), unusual, done


def _read_exactly(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        piece = os.read(fd, n - len(data))
        if not piece:
            return None
        data += piece
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _worker_main(job: _Job, tasks_fd: int, results_fd: int) -> None:
    src, dst = _direct(job.src.fork()), _direct(job.dst.fork())
    while True:
        header = _read_exactly(tasks_fd, _RANGE.size)
        if header is None:
            return  # the parent is done with us (or gone)
        start, end = _RANGE.unpack(header)
        payload = pickle.dumps(_batch(job, src, dst, job.tasks[start:end]), pickle.HIGHEST_PROTOCOL)
        _write_all(results_fd, _LENGTH.pack(len(payload)) + payload)


def _fork_worker(job: _Job) -> tuple[int, int, int]:
    """Start one worker: its pid, the parent's end of its task pipe and of its result pipe."""
    tasks_r, tasks_w = os.pipe()
    results_r, results_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        code = 0
        try:
            gc.disable()  # nothing inherited is ever finalized here (a database connection, say)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a terminal's ^C is its
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            keep = sorted((tasks_r, results_w))
            os.closerange(3, keep[0])  # other transfers' pipes included: their workers must see theirs close
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 1 << 20)
            _worker_main(job, tasks_r, results_w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(tasks_r)
    os.close(results_w)
    return pid, tasks_w, results_r


# --- in the parent ----------------------------------------------------------------------------------------------

def batches(tasks: list[FileTask], files: int = BATCH_FILES, size: int = BATCH_BYTES) -> list[tuple[int, int]]:
    """``tasks`` cut into ranges of at most ``files`` files and (beyond the first file) ``size`` bytes."""
    ranges = []
    start, total = 0, 0
    for i, task in enumerate(tasks):
        if i > start and (i - start >= files or total + task.size > size):
            ranges.append((start, i))
            start, total = i, 0
        total += task.size
    if start < len(tasks):
        ranges.append((start, len(tasks)))
    return ranges


class Shares:
    """Batches shared out among ``workers``: each takes from the front of a region of its own (the plan lists a
    folder's files together, so workers copy in folders of their own rather than queue for one folder's lock in the
    kernel), then, its region done, from the back of the region with the most left. Not thread-safe."""

    def __init__(self, ranges: list[tuple[int, int]], workers: int) -> None:
        self.ranges = ranges
        share = len(ranges) / workers
        self._regions = [[round(n * share), round((n + 1) * share)] for n in range(workers)]

    def take(self, n: int) -> tuple[int, int] | None:
        region = self._regions[n]
        if region[0] >= region[1]:
            region = max(self._regions, key=lambda r: r[1] - r[0])
            if region[0] >= region[1]:
                return None
            region[1] -= 1
            return self.ranges[region[1]]
        region[0] += 1
        return self.ranges[region[0] - 1]

    def drain(self) -> list[tuple[int, int]]:
        """Every batch not taken yet (none are left after)."""
        left = []
        for region in self._regions:
            left.extend(self.ranges[region[0]:region[1]])
            region[0] = region[1]
        return left


class _Driven:
    """A worker as the parent drives it: its pipes and the batches it has not answered yet."""

    def __init__(self, n: int, pid: int, tasks_fd: int, results_fd: int) -> None:
        self.n = n
        self.pid = pid
        self.tasks_fd = tasks_fd
        self.results_fd = results_fd
        self.in_flight: list[tuple[int, int]] = []  # handed to it, or held (below)
        self.alive = True
        self.held: tuple[int, int] | None = None  # a batch the bandwidth limit holds back until held_until
        self.held_until = 0.0


class ProcessLane:
    """The small files of one transfer, shared out in batches among ``processes`` workers, all driven by one
    thread of the parent that hands them batches and books what they answer."""

    def __init__(self, copying: "Copying", tasks: list[FileTask], processes: int) -> None:
        self.copying = copying
        self.tasks = tasks
        request = copying.request
        self.job = _Job(tasks, copying.src, copying.dst, copying.token,  # type: ignore[arg-type]
                        request.checksum_algorithm, request.sync_level, request.verify_checksum,
                        request.preserve_timestamp, copying.max_tries)
        rate = copying.settings.max_bytes_per_second
        self.ranges = batches(tasks, size=min(BATCH_BYTES, copying.chunk_size()) if rate else BATCH_BYTES)
        self.processes = max(1, min(processes, len(self.ranges)))
        self._shares = Shares(self.ranges, self.processes)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.pids: list[int] = []  # the workers started (tests look)

    def _take(self, n: int) -> tuple[int, int] | None:
        with self._lock:
            return self._shares.take(n)

    def start(self) -> None:
        workers: list[_Driven] = []
        for n in range(self.processes):
            try:
                pid, tasks_fd, results_fd = _fork_worker(self.job)
            except OSError as exc:  # no more processes: the workers that started do it all, or the parent
                logger.warning("transfer %s: could not start a worker process: %s", self.copying.token, exc)
                self._thread(self._by_hand, n, [])
                continue
            self.pids.append(pid)
            workers.append(_Driven(n, pid, tasks_fd, results_fd))
        if workers:
            self._thread(self._drive, workers)

    def _thread(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"aptk-transfer-{self.copying.token}-p{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:  # a driver may add a thread while it runs: seen here, being later
            thread.join()

    def _drive(self, workers: list["_Driven"]) -> None:
        """Hand every worker batches and book what they answer, on this one thread (fewer threads of the parent
        to wake and to pass the interpreter lock between); a worker that dies leaves its files to a thread that
        copies them in this process."""
        copying = self.copying
        stopped = copying.control.event
        live = {driven.results_fd: driven for driven in workers}
        waiting = select.poll()  # poll, not select: a busy server has descriptors past select's limit of 1024
        for fd in live:
            waiting.register(fd, select.POLLIN)
        current: _Driven | None = None
        try:
            for driven in workers:
                current = driven
                self._feed(driven)
                if not driven.in_flight or not driven.alive:
                    self._retire(driven, live, waiting)
            while live and not stopped.is_set():
                now = time.monotonic()
                held = [driven.held_until for driven in live.values() if driven.held is not None]
                timeout = min([POLL_SECONDS, *(max(0.0, until - now) for until in held)])
                for fd, _event in waiting.poll(timeout * 1000):
                    found = live.get(fd)
                    if found is None:
                        continue
                    current = driven = found
                    answer = self._answers(fd)
                    if answer is None:
                        driven.alive = False
                    else:
                        self._book(driven.in_flight[0], answer)  # if booking fails, the batch is done with below
                        driven.in_flight.pop(0)
                        self._feed(driven)
                    if not driven.in_flight or not driven.alive:
                        self._retire(driven, live, waiting)
                    if stopped.is_set():
                        break
                if held:  # batches held back by the bandwidth limit whose time has come
                    for driven in list(live.values()):
                        if driven.held is not None and driven.held_until <= time.monotonic():
                            current = driven
                            self._feed(driven)
        except Exception as exc:  # a bug: the transfer fails naming it rather than finishing without these files
            logger.exception("transfer %s: the worker processes' driver failed", copying.token)
            task = self.tasks[current.in_flight[0][0]] if current is not None and current.in_flight else self.tasks[0]
            copying.failed_item(ItemError("TransferError", f"{type(exc).__name__}: {exc}", task.src, task.dst))
        finally:
            for driven in list(live.values()):
                self._retire(driven, live, waiting)
            copying.finish(self._left_if_stopped())

    def _feed(self, driven: "_Driven") -> None:
        """Hand the worker batches until it has IN_FLIGHT (it never waits for the parent), none are left, or the
        transfer stops."""
        copying = self.copying
        stopped = copying.control.event
        throttle = copying.throttle
        while driven.alive and not stopped.is_set():
            found = driven.held
            if found is not None:  # held back by the bandwidth limit: sent once its time has come
                if driven.held_until > time.monotonic():
                    return
                driven.held = None
            else:
                if len(driven.in_flight) >= IN_FLIGHT:
                    return
                found = self._take(driven.n)
                if found is None:
                    return
                driven.in_flight.append(found)
                if throttle.rate > 0:
                    until = throttle.reserve(sum(t.size for t in self.tasks[found[0]:found[1]]))
                    if until > time.monotonic():
                        driven.held, driven.held_until = found, until
                        return
            try:
                _write_all(driven.tasks_fd, _RANGE.pack(*found))
            except OSError:  # the worker is gone
                driven.alive = False

    def _retire(self, driven: "_Driven", live: dict[int, "_Driven"], waiting: Any) -> None:
        """Done with a worker: it ends (its pipe closed after its last batch), or is killed at once (stopped, or
        gone); the files it did not answer are done with, or, if it died, copied by a thread of this process."""
        copying = self.copying
        live.pop(driven.results_fd, None)
        waiting.unregister(driven.results_fd)
        os.close(driven.tasks_fd)  # the worker ends after its batch in hand
        stopped = copying.control.event.is_set()
        if stopped or not driven.alive:
            self._stop(driven.pid)
        else:
            self._reap(driven.pid)
        os.close(driven.results_fd)
        if not driven.alive and not stopped:
            logger.warning("transfer %s: worker process %d died; its files are copied in this process",
                           copying.token, driven.pid)
            self._thread(self._by_hand, driven.n, driven.in_flight)
        else:
            copying.finish(sum(end - start for start, end in driven.in_flight))

    def _left_if_stopped(self) -> int:
        """Once stopped, the files never handed out are done with (by the first thread to ask)."""
        if not self.copying.control.stopped:
            return 0
        with self._lock:
            left = sum(end - start for start, end in self._shares.drain())
        return left

    def _by_hand(self, n: int, in_flight: list[tuple[int, int]]) -> None:
        """The files a dead worker did not answer, and then the rest, copied in this thread."""
        copying = self.copying
        pending = list(in_flight)
        in_flight.clear()
        while True:
            found = pending.pop(0) if pending else self._take(n)
            if found is None:
                return
            for task in self.tasks[found[0]:found[1]]:
                copying.one(task)

    def _answers(self, fd: int) -> Any:
        header = _read_exactly(fd, _LENGTH.size)
        if header is None:
            return None
        payload = _read_exactly(fd, _LENGTH.unpack(header)[0])
        return None if payload is None else pickle.loads(payload)

    def _book(self, found: tuple[int, int], answer: Any) -> None:
        copying = self.copying
        tasks = self.tasks[found[0]:found[1]]
        (copied, skipped, transferred_bytes, checksummed, faults), unusual, done = answer
        again: list[FileTask] = []
        for i, outcome, attempts in unusual:
            task = tasks[i]
            if outcome == FALLBACK:
                again.append(task)
                continue
            for attempt in range(1, attempts + 1):
                copying.mismatch_logged(task, attempt)
            if outcome == MISMATCH:
                copying.failed_item(copying.mismatch_error(task))
        copying.counters.add(files_transferred=copied, files_skipped=skipped,
                             bytes_transferred=transferred_bytes, bytes_checksummed=checksummed, faults=faults)
        if done:
            copying.progress.finished_later(lambda: [Done(tasks[i].dst, size, mtime, checksum)
                                                     for i, checksum, size, mtime in done])
        copying.finish(len(tasks) - len(again))
        for task in again:
            copying.one(task)

    def _reap(self, pid: int) -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _stop(self, pid: int) -> None:
        """The transfer stopped (or the worker is gone): the worker is killed at once, whatever file it is in. A
        file it was writing has no name yet (or only its hidden temporary one, which the transfer removes as it
        ends); one it finished is complete under its name."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(pid)

"""What a transfer reports: its counters, its ``details`` in the shape of a Globus transfer task, and progress
to the action at most once a second (after recording the files finished so far, so a rerun skips them)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any, Callable

from toolkit import RunContext

from providers.collections import Collection

from .errors import MAX_ERRORS_SHOWN, ItemError
from .request import TransferRequest
from .state import Done, DoneRecords

__all__ = ["Counters", "Progress", "Report", "conclude"]

PROGRESS_SECONDS = 1.0
FLUSH_SECONDS = 0.5
#: Finished files are first recorded once the copy has run this long: writing (and then deleting) a record of
#: each costs about as much as copying a small file again, so a transfer that ends sooner writes none, and a crash
#: loses at most this much of its work.
FIRST_FLUSH_SECONDS = 1.0


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"  # pragma: no cover


class Counters:
    """The task's counters: what planning set, plus what every copying thread counted, each in a tally of its
    own, so that counting a chunk takes no lock."""

    def __init__(self, delete_destination_extra: bool) -> None:
        self.lock = threading.Lock()
        self.base = {
            "files": 0, "files_transferred": 0, "files_skipped": 0, "directories": 0, "bytes_transferred": 0,
            "bytes_checksummed": 0, "faults": 0, "subtasks_failed": 0,
            "subtasks_unplanned": 0,  # failed items planning could not count among the files
        }
        if delete_destination_extra:
            self.base["files_deleted"] = 0
        self._local = threading.local()
        self._tallies: list[dict[str, int]] = []

    def set(self, **values: int) -> None:
        with self.lock:
            self.base.update(values)

    def _tally(self) -> dict[str, int]:
        tally: dict[str, int] | None = getattr(self._local, "tally", None)
        if tally is None:
            tally = self._local.tally = dict.fromkeys(self.base, 0)  # fixed keys: safe to read from others
            with self.lock:
                self._tallies.append(tally)
        return tally

    def add(self, **amounts: int) -> None:
        tally = self._tally()
        for key, value in amounts.items():
            tally[key] += value

    def totals(self) -> dict[str, int]:
        with self.lock:
            totals = dict(self.base)
            tallies = list(self._tallies)
        for tally in tallies:
            for key, value in list(tally.items()):
                totals[key] = totals.get(key, 0) + value
        return totals


class Report:
    """The action's ``details``: the request's options, the counters, the source errors skipped."""

    def __init__(self, action_id: str, request: TransferRequest, source: Collection, destination: Collection,
                 counters: Counters) -> None:
        self.action_id = action_id
        self.request = request
        self.source = source
        self.destination = destination
        self.counters = counters
        self.started = time.time()
        self.skipped: list[ItemError] = []
        self._lock = threading.Lock()

    def skip(self, error: ItemError) -> None:
        with self._lock:
            self.skipped.append(error)

    def details(self, status: str, code: str | None = None, description: str | None = None) -> dict[str, Any]:
        """The task document now; for an action that ended, with the ``code`` and ``description`` it ends with."""
        counters = self.counters.totals()
        elapsed = max(time.time() - self.started, 1e-3)
        request = self.request
        doc: dict[str, Any] = {
            "DATA_TYPE": "task",
            "type": "TRANSFER",
            "task_id": self.action_id,
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
            checksum_algorithm=request.checksum_algorithm,
        )
        failed = counters.pop("subtasks_failed")
        unplanned = counters.pop("subtasks_unplanned")
        doc.update(counters)
        doc["effective_bytes_per_second"] = int(counters["bytes_transferred"] / elapsed)
        doc["request_time"] = _iso(self.started)
        if request.deadline is not None:
            doc["deadline"] = _iso(request.deadline)
        total = counters["files"] + unplanned
        succeeded = counters["files_transferred"] + counters["files_skipped"]
        doc.update(
            subtasks_total=total, subtasks_succeeded=succeeded, subtasks_failed=failed, subtasks_canceled=0,
            subtasks_expired=0, subtasks_pending=max(0, total - succeeded - failed),
            nice_status="OK", is_ok=True,
        )
        with self._lock:
            skipped = list(self.skipped)
        if skipped:
            doc["skipped_source_errors"] = [e.document() for e in skipped[:MAX_ERRORS_SHOWN]]
            doc["skipped_source_errors_count"] = len(skipped)
        if status == "SUCCEEDED" or code is not None:
            conclude(doc, status, code, description)  # a FAILED one without its code: the run callback does it
        return doc

    def display_status(self) -> str:
        c = self.counters.totals()
        done = c["files_transferred"] + c["files_skipped"]
        return f"{done}/{c['files']} files, {_human(c['bytes_transferred'])}"[:64]


#: How a Globus task's ``fatal_error.code`` names an end that is not a failure of the copy itself.
FATAL_CODES = {"ActionCancelled": "CANCELED", "DeadlineExceeded": "DEADLINE_EXCEEDED"}


def conclude(doc: dict[str, Any], status: str, code: str | None = None, description: str | None = None,
             now: float | None = None) -> dict[str, Any]:
    """Make a task document (in place) say that the action ended ``status`` (``SUCCEEDED`` or ``FAILED``, with
    ``code`` and ``description``), as a Globus task does: no ``nice_status`` and ``is_ok`` (Globus's null: no
    document here carries null), ``fatal_error`` for a failure, ``completion_time``, and the files still pending
    counted as canceled (or expired, at a deadline)."""
    doc["status"] = status
    doc.pop("nice_status", None)
    doc.pop("is_ok", None)
    if "completion_time" not in doc:
        doc["completion_time"] = _iso(time.time() if now is None else now)
    pending = doc.get("subtasks_pending") or 0
    doc["subtasks_pending"] = 0
    if status == "FAILED":
        code = code or "TransferFailed"
        fatal = FATAL_CODES.get(code, code)
        doc["fatal_error"] = {"code": fatal, "description": description or code}
        bucket = "subtasks_expired" if fatal == "DEADLINE_EXCEEDED" else "subtasks_canceled"
        doc[bucket] = (doc.get(bucket) or 0) + pending
    else:
        doc.pop("fatal_error", None)
        doc["subtasks_succeeded"] = (doc.get("subtasks_succeeded") or 0) + pending
    return doc


class Progress:
    """Finished files recorded (:mod:`providers.transfer.state`) and progress reported, each at most so often."""

    def __init__(self, ctx: RunContext, report: Report, records: DoneRecords) -> None:
        self.ctx = ctx
        self.report = report
        self.records = records
        self._lock = threading.Lock()
        self._pending: list[Done] = []
        self._later: list[Callable[[], list[Done]]] = []
        self._last_progress = 0.0
        self._last_flush = time.monotonic()

    def finished(self, done: Done) -> None:
        """A file is complete under its name (recorded at the next flush)."""
        with self._lock:
            self._pending.append(done)

    def finished_many(self, done: list[Done]) -> None:
        """:meth:`finished` for several files at once."""
        if done:
            with self._lock:
                self._pending.extend(done)

    def finished_later(self, make: Callable[[], list[Done]]) -> None:
        """:meth:`finished_many` for files whose records ``make`` builds, if they are ever written (a transfer that
        ends within :data:`FIRST_FLUSH_SECONDS` builds none)."""
        with self._lock:
            self._later.append(make)

    def started(self) -> None:
        self.ctx.progress(details=self.report.details("ACTIVE"), display_status="starting")
        self._last_progress = time.monotonic()
        self._last_flush = self._last_progress + FIRST_FLUSH_SECONDS - FLUSH_SECONDS

    def tick(self, stopping: bool) -> None:
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_SECONDS:
            self.flush()
        if now - self._last_progress >= PROGRESS_SECONDS and not stopping:
            self._last_progress = now
            self.flush()  # what the details count as done is recorded first
            self.ctx.progress(details=self.report.details("ACTIVE"), display_status=self.report.display_status())

    def drop(self) -> None:
        """Forget the files not recorded yet (the action ended: no rerun will look for them)."""
        with self._lock:
            self._pending = []
            self._later = []

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        with self._lock:
            batch, self._pending = self._pending, []
            later, self._later = self._later, []
        for make in later:
            batch.extend(make())
        if batch:
            self.records.add(batch)

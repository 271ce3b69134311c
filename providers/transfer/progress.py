"""What a transfer reports: its counters, its ``details`` in the shape of a Globus transfer task, and progress
to the action at most once a second (after recording the files finished so far, so a rerun skips them)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from toolkit import RunContext

from providers.collections import Collection

from .errors import MAX_ERRORS_SHOWN, ItemError
from .request import TransferRequest
from .state import Done, DoneRecords

__all__ = ["CHECKSUM_ALGORITHM", "Counters", "Progress", "Report"]

CHECKSUM_ALGORITHM = "sha256"
PROGRESS_SECONDS = 1.0
FLUSH_SECONDS = 0.5


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
            "bytes_checksummed": 0, "faults": 0,
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

    def details(self, status: str) -> dict[str, Any]:
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
            checksum_algorithm=CHECKSUM_ALGORITHM,
        )
        doc.update(counters)
        doc["effective_bytes_per_second"] = int(counters["bytes_transferred"] / elapsed)
        doc["request_time"] = _iso(self.started)
        if status != "ACTIVE":
            doc["completion_time"] = _iso(time.time())
        with self._lock:
            skipped = list(self.skipped)
        if skipped:
            doc["skipped_source_errors"] = [e.document() for e in skipped[:MAX_ERRORS_SHOWN]]
            doc["skipped_source_errors_count"] = len(skipped)
        return doc

    def display_status(self) -> str:
        c = self.counters.totals()
        done = c["files_transferred"] + c["files_skipped"]
        return f"{done}/{c['files']} files, {_human(c['bytes_transferred'])}"[:64]


class Progress:
    """Finished files recorded (:mod:`providers.transfer.state`) and progress reported, each at most so often."""

    def __init__(self, ctx: RunContext, report: Report, records: DoneRecords) -> None:
        self.ctx = ctx
        self.report = report
        self.records = records
        self._lock = threading.Lock()
        self._pending: list[Done] = []
        self._last_progress = 0.0
        self._last_flush = time.monotonic()

    def finished(self, done: Done) -> None:
        """A file is complete under its name (recorded at the next flush)."""
        with self._lock:
            self._pending.append(done)

    def started(self) -> None:
        self.ctx.progress(details=self.report.details("ACTIVE"), display_status="starting")
        self._last_progress = time.monotonic()

    def tick(self, stopping: bool) -> None:
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_SECONDS:
            self.flush()
        if now - self._last_progress >= PROGRESS_SECONDS and not stopping:
            self._last_progress = now
            self.flush()  # what the details count as done is recorded first
            self.ctx.progress(details=self.report.details("ACTIVE"), display_status=self.report.display_status())

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self.records.add(batch)

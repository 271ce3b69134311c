"""The copy engine: plan every file first, then copy them on a few threads in bounded chunks.

1. **Plan** (:mod:`~providers.transfer.planning`, before any byte moves): every item looked at, recursive ones
   walked, paths confined, access rules checked on where each file really is. Any error that is not a skippable
   source error fails the action here.
2. **Delete** what the destination has and the source does not (``delete_destination_extra``, recursive items;
   :mod:`~providers.transfer.folders`).
3. **Make** the destination folders, one level at a time relative to the one before (the cost is linear in the
   depth), stopping between levels when the action is cancelled or passes its deadline.
4. **Copy** several files at once, each in bounded chunks, hashed and verified (:mod:`~providers.transfer.copying`).

Progress goes to the action's ``details`` at most once a second, in the shape of a Globus transfer task
(:mod:`~providers.transfer.progress`); finished files are recorded (:mod:`~providers.transfer.state`) so that a
rerun after a crash skips them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from typing import Any, Callable, Iterator

from toolkit import ActionCancelled, ActionFailed, RunContext

from providers.collections import Collection, CollectionError

from .control import Control
from .copying import Copying, Settings
from .errors import ItemError, failure
from .folders import abort_uploads, delete_extra, make_folders, partial_token, remove_partials
from .planning import FileTask, Plan, Planner
from .progress import Counters, Progress, Report
from .request import SYNC_NAMES, TransferRequest
from .state import Done, DoneRecords, Uploads
from .storage import AbortsUploads, OpenStorage, Storage, capable, open_storage

__all__ = ["FileTask", "ItemError", "Settings", "Transfer", "sync_level_name"]

logger = logging.getLogger("providers.transfer")


#: While transfers run, the interpreter's youngest generation is collected after this many new objects instead
#: of 700, and what existed before is frozen (``gc.freeze``): the objects of a plan are not traversed again and
#: again, a full collection no longer walks the whole server (90-150 ms measured for a transfer of 10,000 files),
#: and worker processes share the parent's memory without copying every page a collection would have touched.
#: A process that froze what it built at boot (an ``aptk serve`` worker) keeps that freeze: there only the
#: threshold is raised, since unfreezing after the transfer would undo the boot's freeze too.
GC_THRESHOLD = 20_000
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None
_gc_froze = False


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Garbage collection held back while at least one transfer runs in this process; restored after the
    last."""
    global _gc_users, _gc_saved, _gc_froze
    with _gc_lock:
        _gc_users += 1
        if _gc_users == 1:
            _gc_saved = gc.get_threshold()
            _gc_froze = gc.get_freeze_count() == 0
            if _gc_froze:
                gc.freeze()
            gc.set_threshold(max(GC_THRESHOLD, _gc_saved[0]), *_gc_saved[1:])
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                if _gc_froze:
                    gc.unfreeze()
                _gc_saved = None


class Transfer:
    """One run of one transfer action."""

    def __init__(self, ctx: RunContext, request: TransferRequest, source: Collection, destination: Collection,
                 settings: Settings, authorize: Callable[[str, str], str | None] | None = None,
                 open_storage: OpenStorage = open_storage) -> None:
        """``authorize(side, path)`` says why the caller may not use ``path`` (links resolved) on ``side``
        (``source``: read, ``destination``: write), or None if it may; None: no checks. ``open_storage``
        connects to a collection's storage (a test may give its own)."""
        self.ctx = ctx
        self.request = request
        self.source = source
        self.destination = destination
        self.settings = settings
        self.authorize = authorize
        self.open_storage = open_storage
        self.token = partial_token(ctx.action_id)
        self.counters = Counters(request.delete_destination_extra)
        self.report = Report(ctx.action_id, request, source, destination, self.counters)
        self.control = Control(ctx, request.deadline, self.report.details)
        self.records = DoneRecords(ctx.store.engine, ctx.action_id)
        self.uploads = Uploads(ctx.store.engine, ctx.action_id)
        self.progress = Progress(ctx, self.report, self.records)
        self._storages: list[Storage] = []  # every storage opened or forked, closed at the end
        self._storages_lock = threading.Lock()

    def details(self, status: str) -> dict[str, Any]:
        return self.report.details(status)

    def _fail(self, errors: list[ItemError], code: str | None = None, description: str | None = None) -> ActionFailed:
        return failure(errors, self.details("FAILED"), code, description)

    # --- the run ------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with quiet_gc():
            return self._run()

    def _run(self) -> dict[str, Any]:
        src, dst = self._connect()
        try:
            plan = self._plan(src, dst)
            self.ctx.check()
            self.progress.started()
            previous = self._previous_attempt()
            if self.request.delete_destination_extra:
                delete_extra(self.ctx, self.request, dst, plan, self.counters, self.control.checkpoint_planning,
                             self._fail)
            make_folders(dst, plan, self.control.checkpoint_planning, self._fail)
            copying = Copying(self.ctx, self.request, self.settings, self.control, self.counters, self.report,
                              self.progress, previous, src, dst, self.token, self._adopt, self.uploads)
            copying.run(plan.tasks)
            if self.control.reason == "deadline":
                raise self._fail(copying.errors, "DeadlineExceeded", "The transfer did not finish before its deadline.")
            self.ctx.check()
            if copying.errors:
                raise self._fail(copying.errors)
            if capable(dst, AbortsUploads):
                abort_uploads(dst, self.uploads)  # an upload an attempt that died had begun
            details = self.details("SUCCEEDED")
        except ActionCancelled:
            self.control.stop()
            self.progress.flush()
            self._remove_partials(dst)
            raise  # records stay: the process may be stopping, and the action may run again elsewhere
        except ActionFailed:
            self._clear_records()
            self._remove_partials(dst)
            raise
        finally:
            self._close()
        self._clear_records()
        return details

    def _clear_records(self) -> None:
        """The action ended: what it recorded goes (files not yet recorded are never written down)."""
        self.progress.drop()
        if self.records.written or self.ctx.attempt > 1:
            self.records.clear()

    def _remove_partials(self, dst: Storage) -> None:
        """What this action's attempts left half-written (an earlier, killed one's too) goes when it ends."""
        try:
            removed = remove_partials(dst, self.request, self.token, self.uploads)
        except Exception:  # pragma: no cover - best effort
            logger.exception("removing partial files failed")
            return
        if removed:
            logger.info("action %s: removed %d partial file(s)", self.ctx.action_id, removed)

    def _connect(self) -> tuple[Storage, Storage]:
        try:
            for collection in (self.source, self.destination):
                self._storages.append(self.open_storage(collection))
        except CollectionError as exc:
            self._close()
            raise ActionFailed("EndpointError", str(exc), **self.details("FAILED")) from None
        return self._storages[0], self._storages[1]

    def _plan(self, src: Storage, dst: Storage) -> Plan:
        plan = Planner(self.request, src, dst, self.control.checkpoint_planning, self.authorize).run()
        for error in plan.skipped:
            self.report.skip(error)
        skipped = len(plan.skipped)
        self.counters.set(files=len(plan.tasks) + skipped, files_skipped=skipped, directories=plan.source_dirs)
        if plan.fatal:
            self.counters.set(subtasks_failed=len(plan.fatal), subtasks_unplanned=len(plan.fatal))
            raise self._fail(plan.fatal)
        return plan

    def _previous_attempt(self) -> dict[str, Done]:
        """What an earlier attempt of this action finished (kept on a rerun), or, on the first, nothing (and
        records of actions long gone are purged)."""
        if self.ctx.attempt <= 1:
            self.records.purge_stale()
            return {}
        previous = self.records.load()
        if previous:
            self.ctx.log(f"Rerun: {len(previous)} file(s) finished by an earlier attempt are kept.")
        return previous

    def _adopt(self, storage: Storage) -> None:
        with self._storages_lock:
            self._storages.append(storage)

    def _close(self) -> None:
        for storage in self._storages:
            try:
                storage.close()
            except Exception:  # pragma: no cover - best effort
                logger.exception("closing a storage connection failed")
        self._storages = []


def sync_level_name(level: int | None) -> str | None:
    return None if level is None else SYNC_NAMES[level]

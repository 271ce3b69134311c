"""The scheduler every serving process runs: it claims due ticks (:mod:`.table`) and fires them at the target.

Each tick ends in one of three ways, each one line in the timer's ``/log``:

* ``TickRun``: a fresh action was started at the target, with ``request_id`` ``timer-<timer id>-<tick>``;
* ``TickSkipped``: the previous tick's action was still ACTIVE (or INACTIVE), or the tick was missed
  (:data:`~.schedule.MISFIRE_SECONDS`, downtime);
* ``TickFailed``: the target refused the run (4xx), or stayed unavailable (5xx, 429, connection refused) through
  the retries, which back off from 1 s and give up before the next tick (at most :data:`RETRY_WINDOW_SECONDS`);
  or there were no credentials to call it as the timer's creator, which pauses the timer (INACTIVE) until a
  ``/resume``: no later tick could do better, and retrying would only fill the log.

The timer action then ends SUCCEEDED when ``stop_after`` is reached, or FAILED after
``APTK_TIMERS_MAX_FAILURES`` failed ticks in a row.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Protocol

from toolkit.auth import Identity
from toolkit.documents import Status
from toolkit.settings import number

from . import table
from toolkit.calls import CallError, Calls, CredentialsMissing, RunRefused, Transient
from .schedule import MISFIRE_SECONDS, Interval, iso, last_index_at_or_before, parse_interval, tick_time

logger = logging.getLogger("providers.timers")

LAST_RUNS = 5
"""How many of the latest runs a timer's details list."""
RETRY_WINDOW_SECONDS = 300.0
"""The longest a tick keeps retrying a target that is unavailable (never past the next tick)."""
MAX_LOGGED_SKIPS = 100
"""After downtime, at most this many skipped ticks get a log line each; one more line counts the rest."""
HANDED_OVER = {"status": Status.ACTIVE, "runner": None}
HAND_OVER_WAIT_SECONDS = 1.0
"""A tick claimed while its timer's /run (or /resume) has not handed the action over yet is tried again this much
later (a /run takes milliseconds; one whose process died is taken up by the lease)."""
FINAL_RUN_STATES = frozenset({"SUCCEEDED", "FAILED", "RELEASED"})
"""A listed run in one of these is not read again (``RELEASED``: gone from the target, or no longer visible)."""
PAUSE_CODE = "CredentialsRequired"
DEFAULT_MAX_FAILURES = 5
DEFAULT_THREADS = 8


class TargetLike(Protocol):
    def run(self, identity: Identity, body: Any, *, request_id: str, label: str | None = None) -> dict[str, Any]: ...
    def status(self, identity: Identity, action_id: str) -> dict[str, Any]: ...


class CallsLike(Protocol):
    def target(self, url: str, origin: str | None = None) -> Any: ...


def request_id(timer_id: str, index: int) -> str:
    """The ``request_id`` of tick ``index``'s run: the same for every attempt at that tick, in any process."""
    return f"timer-{timer_id}-{index}"


def details(timer: table.Timer) -> dict[str, Any]:
    """A timer as its action's ``details`` show it."""
    interval = parse_interval(timer.interval, 0)
    document: dict[str, Any] = {
        "name": timer.name,
        "callback_url": timer.callback_url,
        "interval": interval.iso(),
        "start": iso(timer.start),
    }
    if timer.state == table.SCHEDULED:
        document["next_run"] = iso(timer.next_at)
    document.update(runs=timer.runs, skipped=timer.skipped, failed=timer.failed, last_runs=timer.last_runs)
    stop: dict[str, Any] = {}
    if timer.stop_n_runs is not None:
        stop["n_runs"] = timer.stop_n_runs
    if timer.stop_date is not None:
        stop["date"] = iso(timer.stop_date)
    if stop:
        document["stop_after"] = stop
    if timer.last_error:
        document["last_error"] = timer.last_error
    return document


def refresh_runs(target: TargetLike, identity: Identity, runs: list[dict[str, Any]], timer_id: str) -> None:
    """Read again, in place, the status of every listed run that is not final.

    A run the target no longer shows is ``RELEASED``; one it cannot say now keeps its status.
    :class:`CredentialsMissing` is raised: the caller decides what it means.
    """
    for run in runs:
        if run.get("status") in FINAL_RUN_STATES or not run.get("action_id"):
            continue
        try:
            run["status"] = target.status(identity, run["action_id"]).get("status", run.get("status"))
        except RunRefused:  # released, or no longer visible: it is not running on our account
            run["status"] = "RELEASED"
        except CredentialsMissing:
            raise
        except CallError as exc:
            logger.warning("timer %s: status of %s unknown (%s)", timer_id, run["action_id"], exc)


def log_skipped(store: Any, timer_id: str, missed: list[int], now: float, why: str) -> None:
    """One log line per skipped tick, at most :data:`MAX_LOGGED_SKIPS`; one more line counts the rest."""
    for index in missed[:MAX_LOGGED_SKIPS]:
        store.append_log(timer_id, now, "TickSkipped", f"Tick {index} was {why}.", {"tick": index},
                         where={"status": Status.ACTIVE})
    if len(missed) > MAX_LOGGED_SKIPS:
        rest = len(missed) - MAX_LOGGED_SKIPS
        store.append_log(timer_id, now, "TickSkipped", f"{rest} more ticks were {why}.", {"ticks": rest},
                         where={"status": Status.ACTIVE})


def pause_details(timer: table.Timer, index: int, exc: CredentialsMissing) -> dict[str, Any]:
    """What an INACTIVE timer's details add: what is missing, and what to do about it."""
    document: dict[str, Any] = {
        "code": PAUSE_CODE,
        "description": (
            f"Tick {index} could not call {timer.callback_url} as the timer's creator: {exc.description}. Give this "
            "deployment credentials for it (a client for its URL in APTK_CALL_CLIENTS that the target accepts"
            + (f", with the scope {exc.scope}" if exc.scope else "")
            + "), then resume the timer: it runs again from its next tick."
        )[:2000],
    }
    if exc.scope:
        document["required_scope"] = exc.scope
    return document


class Scheduler:
    """Claims and fires the due ticks of every timer in one database, for one process.

    ``calls`` (how targets are reached) and ``sleep`` (how retries wait; True if the process is stopping) are
    injected by tests; by default they are :class:`~toolkit.calls.Calls` for the runtime's app and a wait on
    ``stopping``.
    """

    def __init__(
        self,
        runtime: Any,
        *,
        calls: CallsLike | None = None,
        sleep: Callable[[float], bool] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.engine = runtime.store.engine
        self.clock = runtime.clock
        self.stopping = stopping or threading.Event()
        self.max_failures = number(runtime.config, "APTK_TIMERS_MAX_FAILURES", DEFAULT_MAX_FAILURES, kind=int,
                                   positive=True)
        self.threads = number(runtime.config, "APTK_TIMERS_THREADS", DEFAULT_THREADS, kind=int, positive=True)
        self._calls = calls
        self._sleep = sleep or self.stopping.wait
        self.cpu_seconds = 0.0

    @property
    def calls(self) -> CallsLike:
        if self._calls is None:
            self._calls = Calls.for_app(self.runtime.app)
        return self._calls

    # --- one pass -------------------------------------------------------------------------------------------

    def claim_due(self, now: float | None = None, limit: int = 500) -> list[tuple[table.Timer, int]]:
        """Claim the ticks due now (skipping the missed ones, ending timers past their date); what to fire."""
        now = self.clock() if now is None else now
        claimed: list[tuple[table.Timer, int]] = []
        on_time = table.claim_on_time(self.engine, now, self.runtime.lease_seconds, limit)
        if on_time is not None:  # the common case, in one statement; the late and the stale one by one below
            claimed.extend((timer, timer.next_index) for timer in on_time)
            limit -= len(on_time)
        if limit <= 0:
            return claimed
        for timer in table.due(self.engine, now, limit):
            try:
                held = self._claim(timer, now)
            except Exception:
                logger.exception("could not claim a tick of timer %s", timer.timer_id)
                continue
            if held is not None:
                claimed.append(held)
        return claimed

    def run_due(self, now: float | None = None) -> int:
        """Claim and fire every due tick, one after the other; how many were fired."""
        claimed = self.claim_due(now)
        for timer, index in claimed:
            self.fire(timer, index)
        return len(claimed)

    def _claim(self, timer: table.Timer, now: float) -> tuple[table.Timer, int] | None:
        """The timer as claimed and the tick to fire, or None (not ours, or nothing to fire now)."""
        interval = parse_interval(timer.interval, 0)
        if timer.pending_index is not None:  # its process stopped mid-tick: fire that tick again, same request_id
            index = timer.pending_index
            until = now + self._hold_seconds(timer)
            if not table.claim(self.engine, timer, index, until):
                return None
            return dataclasses.replace(timer, pending_until=until), index
        first = timer.next_index
        last = max(first, last_index_at_or_before(timer.start, interval, now))
        stop_date = timer.stop_date

        def allowed(index: int) -> bool:
            return stop_date is None or tick_time(timer.start, interval, index) <= stop_date

        on_time = now - tick_time(timer.start, interval, last) <= timer.on_time_seconds
        fire = last if allowed(last) and on_time else None
        missed = [i for i in range(first, last + 1) if i != fire and allowed(i)]
        if fire is not None:
            until = now + self._hold_seconds(timer)
            claimed: dict[str, Any] = {"next_index": fire, "next_at": tick_time(timer.start, interval, fire),
                       "skipped": timer.skipped + len(missed)}
            if not table.claim(self.engine, timer, fire, until, **claimed):
                return None
            log_skipped(self.store, timer.timer_id, missed, now, "missed")
            return dataclasses.replace(timer, pending_index=fire, pending_until=until, **claimed), fire
        following = last + 1
        finished = not allowed(following)
        changes: dict[str, Any] = {"skipped": timer.skipped + len(missed), "next_index": following,
                                   "next_at": tick_time(timer.start, interval, following)}
        if finished:
            changes["state"] = table.ENDED
        if not table.advance(self.engine, timer, **changes):
            return None
        log_skipped(self.store, timer.timer_id, missed, now, "missed")
        after = dataclasses.replace(timer, **changes)
        if finished:
            self._end(after, Status.SUCCEEDED, "StopDateReached", "The timer reached its stop_after date.")
        else:
            self._publish(after)
        return None

    def _hold_seconds(self, timer: table.Timer) -> float:
        # Beyond its retries, a tick is held as long as the toolkit's lease holds an action of a silent process.
        return timer.retry_seconds + self.runtime.lease_seconds

    @staticmethod
    def _retry_window(timer: table.Timer, interval: Interval, index: int, started: float) -> float:
        following = tick_time(timer.start, interval, index + 1)
        return max(0.0, min(RETRY_WINDOW_SECONDS, following - started))

    # --- firing ---------------------------------------------------------------------------------------------

    def fire(self, timer: table.Timer, index: int) -> None:
        """Fire tick ``index`` (claimed by this process) and record what happened."""
        started = time.process_time()
        try:
            self._fire(timer, index)
        except Exception:
            logger.exception("tick %s of timer %s failed unexpectedly", index, timer.timer_id)
        finally:
            self.cpu_seconds += time.process_time() - started

    def _fire(self, timer: table.Timer, index: int) -> None:
        interval = parse_interval(timer.interval, 0)
        action = self.store.get(timer.timer_id)
        if action is None or action.status is not Status.ACTIVE or action.runner is not None:
            if action is None or action.status is not Status.ACTIVE:
                table.end(self.engine, timer.timer_id)  # cancelled, past its deadline or released
            else:  # not handed over yet (its /run or /resume is under way): try the tick again in a moment
                table.hold(self.engine, timer.timer_id, index, self.clock() + HAND_OVER_WAIT_SECONDS)
                logger.info("timer %s is not scheduled yet; tick %s waits", timer.timer_id, index)
            return
        identity = Identity(id=timer.creator_id, principals=frozenset(timer.principals), scopes=frozenset())
        last_runs = [dict(run) for run in timer.last_runs]
        try:
            target = self.calls.target(timer.callback_url, origin=timer.origin)
        except RunRefused as exc:
            return self._failed(timer, interval, index, last_runs, "RunRefused", exc.description)
        try:
            refresh_runs(target, identity, last_runs, timer.timer_id)
        except CredentialsMissing as exc:
            return self._pause(timer, interval, index, last_runs, exc)
        if last_runs and last_runs[0].get("status") not in FINAL_RUN_STATES:
            previous = last_runs[0]
            self._record(timer, interval, index, "TickSkipped",
                         f"Tick {index} skipped: run {previous.get('action_id')} is still {previous.get('status')}.",
                         skipped=timer.skipped + 1, last_runs=last_runs)
            return
        tick_at = tick_time(timer.start, interval, index)
        give_up = max(self.clock(), tick_at) + self._retry_window(timer, interval, index, max(self.clock(), tick_at))
        delay = 1.0
        while True:
            try:
                status = target.run(identity, timer.callback_body, request_id=request_id(timer.timer_id, index),
                                    label=f"{timer.name[:40]} #{index}")
                break
            except Transient as exc:
                retry_after = getattr(exc, "retry_after", None)
                wait = max(delay, float(retry_after or 0))
                if self.clock() + wait > give_up:
                    return self._failed(timer, interval, index, last_runs, "TargetUnavailable",
                                        f"The target stayed unavailable: {exc.description}")
                if self._sleep(wait):
                    return  # stopping: the claim lapses and another process fires this tick again
                delay = min(delay * 2, 30.0)
            except RunRefused as exc:
                return self._failed(timer, interval, index, last_runs, "RunRefused",
                                    f"The target refused the run ({exc.status} {exc.code}): {exc.description}")
            except CredentialsMissing as exc:
                return self._pause(timer, interval, index, last_runs, exc)
        action_id = str(status.get("action_id", ""))
        run = {"tick": index, "action_id": action_id, "status": status.get("status", "ACTIVE"),
               "start_time": status.get("start_time") or iso(self.clock())}
        self._record(timer, interval, index, "TickRun", f"Tick {index} started action {action_id}.",
                     runs=timer.runs + 1, consecutive_failures=0, last_action_id=action_id,
                     last_runs=[run, *last_runs][:LAST_RUNS])

    def _failed(self, timer: table.Timer, interval: Interval, index: int, last_runs: list[dict[str, Any]],
                code: str, description: str) -> None:
        self._record(timer, interval, index, "TickFailed", f"Tick {index} failed: {code}: {description}"[:2000],
                     failed=timer.failed + 1, consecutive_failures=timer.consecutive_failures + 1,
                     last_error={"tick": index, "code": code, "description": description[:1000]},
                     last_runs=last_runs)

    def _pause(self, timer: table.Timer, interval: Interval, index: int, last_runs: list[dict[str, Any]],
               exc: CredentialsMissing) -> None:
        """No credentials to call the target as the creator: the timer goes INACTIVE until a ``/resume``.

        The tick counts as failed, but not towards ``APTK_TIMERS_MAX_FAILURES``: the timer waits for its creator
        (or the deployment's operator) rather than failing on its own.
        """
        following = index + 1
        changes: dict[str, Any] = {
            "state": table.PAUSED, "next_index": following, "next_at": tick_time(timer.start, interval, following),
            "failed": timer.failed + 1, "last_runs": last_runs,
            "last_error": {"tick": index, "code": "CredentialsMissing", "description": exc.description[:1000]},
        }
        if not table.record(self.engine, timer.timer_id, index, **changes):
            return  # cancelled meanwhile, or another process took the tick over
        after = dataclasses.replace(timer, pending_index=None, pending_until=None, **changes)
        self.store.append_log(timer.timer_id, self.clock(), "TickFailed",
                              f"Tick {index} failed: CredentialsMissing: {exc.description}"[:2000], {"tick": index},
                              where=HANDED_OVER)
        if self.runtime.pause(timer.timer_id, {**details(after), **pause_details(after, index, exc)}) is None:
            table.end(self.engine, timer.timer_id)  # the action ended meanwhile (cancelled, deadline)

    def _record(self, timer: table.Timer, interval: Interval, index: int, code: str, description: str,
                **changes: Any) -> None:
        following = index + 1
        changes.update(next_index=following, next_at=tick_time(timer.start, interval, following))
        runs = changes.get("runs", timer.runs)
        failures = changes.get("consecutive_failures", timer.consecutive_failures)
        ending: tuple[Status, str, str] | None = None
        if timer.stop_n_runs is not None and runs >= timer.stop_n_runs:
            ending = (Status.SUCCEEDED, "RunsReached", f"The timer ran {runs} times, as stop_after.n_runs asked.")
        elif failures >= self.max_failures:
            error = changes.get("last_error") or timer.last_error or {}
            ending = (Status.FAILED, "TooManyFailures",
                      f"{failures} ticks in a row failed; the last: {error.get('code')}: {error.get('description')}")
        elif timer.stop_date is not None and changes["next_at"] > timer.stop_date:
            ending = (Status.SUCCEEDED, "StopDateReached", "The timer reached its stop_after date.")
        if ending is not None:
            changes["state"] = table.ENDED
        if not table.record(self.engine, timer.timer_id, index, **changes):
            return  # cancelled meanwhile, or another process took the tick over
        after = dataclasses.replace(timer, pending_index=None, pending_until=None, **changes)
        now = self.clock()
        self.store.append_log(timer.timer_id, now, code, description, {"tick": index}, where=HANDED_OVER)
        if ending is not None:
            self._end(after, *ending)
        else:
            self._publish(after)

    def _publish(self, timer: table.Timer) -> None:
        if self.store.update(timer.timer_id, where=HANDED_OVER, details=details(timer)) is None:
            table.end(self.engine, timer.timer_id)  # the action ended meanwhile (cancelled, deadline)

    def _end(self, timer: table.Timer, status: Status, code: str, description: str) -> None:
        document = details(timer)
        if status is Status.FAILED:
            document.update(code=code, description=description[:2000])
        else:
            document["reason"] = description
        self.runtime.end(timer.timer_id, status, document)

    # --- the process's loop ---------------------------------------------------------------------------------

    def loop(self) -> None:
        """Fire due ticks until ``stopping`` is set, on a pool of ``APTK_TIMERS_THREADS`` threads."""
        pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="aptk-timers")
        in_flight: set[concurrent.futures.Future[None]] = set()
        try:
            while not self.stopping.is_set():
                in_flight = {f for f in in_flight if not f.done()}
                room = self.threads * 4 - len(in_flight)
                try:
                    claimed = self.claim_due(limit=room) if room > 0 else []
                    for timer, index in claimed:
                        in_flight.add(pool.submit(self.fire, timer, index))
                    wake = table.next_due(self.engine)
                except Exception:
                    logger.exception("the timer scheduler could not read its table; retrying")
                    wake = None
                now = self.clock()
                pause = 1.0 if wake is None else min(1.0, max(0.0, wake - now))
                if claimed and len(claimed) >= room:
                    pause = 0.01
                self.stopping.wait(max(0.01, pause))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

"""The bundled timers provider: run any action provider (or flow) on a schedule, as an action of its own.

``/run`` takes the target's ``/run`` URL and body, a ``start``, an ``interval`` and when to stop::

    {"name": "archive", "callback_url": "https://h/transfer/run", "callback_body": {...},
     "start": "2027-01-01T00:00:00Z", "interval": "PT1H", "stop_after": {"n_runs": 720}}

How it is built, and why:

* The timer is an action that stays ACTIVE while it is scheduled, but no thread waits for it. Its run callback
  (synchronous: it runs inside ``/run``) writes the timer to a table of the provider's own (:mod:`.table`) and
  *hands the action over* (:meth:`toolkit.RunContext.hand_over`): the action keeps no runner and no heartbeat.
  The toolkit's lease mechanism only takes up ACTIVE actions that have a runner whose heartbeat is stale, so it
  never reruns or fails a timer: a timer's life (months) is no callback's life, and a callback per timer would
  hold a thread per timer. A crash before the hand-over leaves an ordinary action with a runner: the lease runs
  the callback again (``recovery="rerun"``), which finds the timer already written and hands the action over.
* Every serving process runs one scheduler (:meth:`toolkit.ActionProvider.background`,
  :class:`.scheduler.Scheduler`). Each due tick is claimed with a compare-and-set on the timer's row, so exactly
  one process (worker, host) fires it, and fires it with ``request_id`` ``timer-<timer>-<tick>``: a process killed
  between starting the target's action and recording it leaves the tick claimed; once the claim lapses another
  process fires it again with the same ``request_id``, and the target answers with the action already started.
* The scheduler keeps ``details`` and ``/log`` up to date and ends the action with
  :meth:`toolkit.lifecycle.Runtime.end`: SUCCEEDED at ``stop_after``, FAILED after ``APTK_TIMERS_MAX_FAILURES``
  failed ticks in a row. ``/cancel`` ends it like any action, and the schedule stops with it (a running target
  action is left alone, unless the timer was made with ``cancel_running``).
* A tick that finds no credentials to call a remote target as the creator pauses the timer (INACTIVE, saying
  what is missing); ``/resume`` runs the callback again, which schedules the timer from its next tick.
* A target this deployment serves has ``callback_body`` checked against its input schema at ``/run``.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, has_request_context, request

from toolkit import (
    ActionProvider,
    BackgroundContext,
    BadActionRequest,
    HookContext,
    RunContext,
    Status,
)
from toolkit.auth import Identity
from toolkit.calls import CallError, Calls, RunRefused
from toolkit.documents import Action
from toolkit.settings import flag, number, register_settings, setting

from . import table
from .schedule import (
    MISFIRE_SECONDS,
    ScheduleError,
    first_index_at_or_after,
    iso,
    parse_interval,
    tick_time,
    to_epoch,
)
from .scheduler import FINAL_RUN_STATES, RETRY_WINDOW_SECONDS, Scheduler, details, log_skipped, refresh_runs

__all__ = ["provider"]

SETTINGS = ("APTK_TIMERS_MIN_INTERVAL", "APTK_TIMERS_MAX_FAILURES", "APTK_TIMERS_THREADS", "APTK_TIMERS_SCHEDULER",
            "APTK_TIMERS_URL")
"""Every setting of this provider (``APTK_TIMERS_URL`` is read by ``aptk timer``, the client)."""
register_settings(*SETTINGS)

DEFAULT_MIN_INTERVAL = 60.0

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["callback_url", "callback_body", "interval"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 128, "description": "A name for people."},
        "callback_url": {"type": "string", "minLength": 1, "maxLength": 2048,
                         "description": "The /run URL of the action provider (or flow) to run."},
        "callback_body": {"type": "object", "description": "The body of each run."},
        "start": {"type": "string", "maxLength": 64,
                  "description": "ISO 8601 date-time of the first run (UTC unless it says otherwise); default now."},
        "interval": {"type": ["string", "number"],
                     "description": "ISO 8601 duration (PT1H, P1D, P1M) or seconds between runs."},
        "cancel_running": {"type": "boolean",
                           "description": "Cancelling the timer also cancels the run it started that still runs "
                                          "(default false: that run is left alone)."},
        "stop_after": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "date": {"type": "string", "maxLength": 64, "description": "No run after this date-time."},
                "n_runs": {"type": "integer", "minimum": 1, "description": "End after this many runs."},
            },
        },
    },
}

provider = ActionProvider(
    name="timers",
    title="Timers",
    subtitle="Run any action provider or flow on a schedule",
    description=(
        "A timer is an ACTIVE action that starts a fresh action at callback_url at start + k * interval, "
        "skipping a tick whose previous run is still going, until stop_after. Cancel it to stop the schedule."
    ),
    keywords=["timer", "schedule", "cron", "globus"],
    input_schema=INPUT_SCHEMA,
    synchronous=True,  # the callback only writes the timer down and hands the action over
    recovery="rerun",
    maximum_deadline="P3650D",
)


class _Plan:
    """A /run body, checked: the numbers the timer's row is made of."""

    def __init__(self, body: dict[str, Any], config: Any, now: float) -> None:
        minimum = number(config, "APTK_TIMERS_MIN_INTERVAL", DEFAULT_MIN_INTERVAL, positive=True)
        url = body["callback_url"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadActionRequest("body.callback_url: must be an http(s) URL of an action provider's /run, e.g. "
                                   "https://example.org/hello/run.")
        try:
            self.interval = parse_interval(body["interval"], minimum)
            self.start = to_epoch(body["start"], "start") if "start" in body else now
            stop = body.get("stop_after", {})
            self.stop_date = to_epoch(stop["date"], "stop_after.date") if "date" in stop else None
        except ScheduleError as exc:
            raise BadActionRequest(f"body.{exc}") from None
        self.n_runs: int | None = stop.get("n_runs")
        try:
            self.first = first_index_at_or_after(self.start, self.interval, now)
            iso(tick_time(self.start, self.interval, self.first + 1))  # a schedule that runs off the calendar
        except (OverflowError, ValueError, OSError):
            raise BadActionRequest("body.interval: is too long: its ticks fall past the year 9999.") from None
        if self.stop_date is not None and tick_time(self.start, self.interval, self.first) > self.stop_date:
            raise BadActionRequest("body.stop_after.date: is before the timer's first run; nothing would run.")


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    _Plan(body, ctx.config, ctx.clock())
    _check_reachable(body["callback_url"], body["callback_body"], ctx.config)


def _origin() -> str | None:
    """The origin (and script root) of the request creating the timer: its targets there are in-process."""
    return request.host_url.rstrip("/") if has_request_context() else None


def _check_reachable(url: str, callback_body: Any, config: Any) -> None:
    """Refuse a target the schedulers could never call as the timer's creator (see the README, "Timers"), and
    a body its input schema refuses when this deployment serves it (a remote target's /run decides at a tick)."""
    calls = Calls.for_app(current_app)
    try:
        target = calls.target(url, origin=_origin())
    except RunRefused as exc:
        raise BadActionRequest(f"body.callback_url: {exc.description}") from None
    if target.local:
        try:
            target.check_body(callback_body, "body.callback_body")
        except RunRefused as exc:
            raise BadActionRequest(exc.description) from None
        return
    if str(setting(config, "APTK_AUTH", "dev")).lower() == "globus":
        raise BadActionRequest(
            "body.callback_url: is not served by this deployment, and under APTK_AUTH=globus a timer can call "
            "other deployments only with its creator's dependent tokens, which expire (no refresh tokens are "
            "kept); schedule it on the deployment that serves it.")
    if not any(client.serves(target.url) for client in calls.clients):
        raise BadActionRequest(
            f"body.callback_url: is not served by this deployment and no client is configured for {target.url} in "
            "APTK_CALL_CLIENTS; add one (or set APTK_PUBLIC_URL if this deployment serves it).")


@provider.run
def schedule(body: dict[str, Any], ctx: RunContext) -> dict[str, Any] | None:
    """Write the timer down and hand the action over to the schedulers (after a resume: schedule it again)."""
    existing = table.get(ctx.store.engine, ctx.action_id)
    if existing is not None:  # resumed, or run again after a crash before the hand-over
        if existing.state == table.PAUSED:
            return _resume(existing, ctx)
        ctx.hand_over(details=details(existing), display_status="Scheduled")
        return None
    plan = _Plan(body, ctx.config, ctx.clock())
    origin = _origin()
    timer = table.Timer(
        timer_id=ctx.action_id, creator_id=ctx.creator_id, principals=sorted(ctx.principals), origin=origin,
        name=body.get("name") or ctx.label or "timer", callback_url=body["callback_url"],
        callback_body=body["callback_body"], start=plan.start, interval=plan.interval.iso(),
        on_time_seconds=min(MISFIRE_SECONDS, plan.interval.approximate_seconds),
        retry_seconds=min(RETRY_WINDOW_SECONDS, plan.interval.approximate_seconds),
        stop_n_runs=plan.n_runs, stop_date=plan.stop_date, state=table.SCHEDULED, next_index=plan.first,
        next_at=tick_time(plan.start, plan.interval, plan.first),
    )
    table.insert(ctx.store.engine, timer)
    stored = table.get(ctx.store.engine, ctx.action_id) or timer
    ctx.hand_over(details=details(stored), display_status="Scheduled")
    return None


def _resume(timer: table.Timer, ctx: RunContext) -> dict[str, Any] | None:
    """A paused timer resumed: it runs again from its next tick; the ticks that passed meanwhile are skipped.

    Returns the final details if its ``stop_after.date`` passed while it was paused (it ends SUCCEEDED).
    """
    interval = parse_interval(timer.interval, 0)
    now = ctx.clock()
    following = max(timer.next_index, first_index_at_or_after(timer.start, interval, now))
    missed = [i for i in range(timer.next_index, following)
              if timer.stop_date is None or tick_time(timer.start, interval, i) <= timer.stop_date]
    changes: dict[str, Any] = {"next_index": following, "next_at": tick_time(timer.start, interval, following),
                               "skipped": timer.skipped + len(missed)}
    finished = timer.stop_date is not None and changes["next_at"] > timer.stop_date
    if not table.resume(ctx.store.engine, timer.timer_id, **changes):
        stored = table.get(ctx.store.engine, timer.timer_id) or timer  # resumed twice at once: the other won
        ctx.hand_over(details=details(stored), display_status="Scheduled")
        return None
    log_skipped(ctx.store, timer.timer_id, missed, now, "passed while the timer was paused")
    resumed = table.get(ctx.store.engine, timer.timer_id) or timer
    if finished:
        table.end(ctx.store.engine, timer.timer_id)
        return {**details(dataclasses.replace(resumed, state=table.ENDED)),
                "reason": "The timer reached its stop_after date while it was paused."}
    ctx.hand_over(details=details(resumed), display_status="Scheduled")
    return None


def _creator(action: Action) -> Identity:
    return Identity(id=action.creator_id, principals=frozenset(action.principals), scopes=frozenset())


@provider.finish
def final_runs(action: Action, ctx: HookContext) -> dict[str, Any] | None:
    """The timer's final details, with the status of each listed run that was still going read again."""
    runs = [dict(run) for run in action.details.get("last_runs") or []]
    timer = table.get(ctx.store.engine, action.action_id)
    if timer is None or all(run.get("status") in FINAL_RUN_STATES for run in runs):
        return None
    try:
        refresh_runs(Calls.from_context(ctx).target(timer.callback_url, origin=timer.origin), _creator(action),
                     runs, action.action_id)
    except CallError:
        return None
    return {**action.details, "last_runs": runs}


@provider.cancel
def stop_schedule(action: Action, ctx: HookContext) -> None:
    """Stop the schedule; with ``cancel_running``, cancel (as the creator) the runs that still go."""
    table.end(ctx.store.engine, action.action_id)
    if not action.body.get("cancel_running"):
        return
    runs = [dict(run) for run in action.details.get("last_runs") or []]
    going = [run for run in runs if run.get("status") not in FINAL_RUN_STATES and run.get("action_id")]
    timer = table.get(ctx.store.engine, action.action_id)
    if not going or timer is None:
        return
    now = ctx.clock()
    try:
        target = Calls.from_context(ctx).target(timer.callback_url, origin=timer.origin)
    except CallError as exc:
        ctx.store.append_log(action.action_id, now, "RunNotCancelled", f"Could not cancel the running runs: {exc}")
        return
    for run in going:
        try:
            run["status"] = target.cancel(_creator(action), run["action_id"]).get("status", run["status"])
            ctx.store.append_log(action.action_id, now, "RunCancelled",
                                 f"Cancelled run {run['action_id']} (tick {run.get('tick')}) at the target; it is "
                                 f"{run['status']}.", {"tick": run.get("tick"), "action_id": run["action_id"]})
        except CallError as exc:
            ctx.store.append_log(action.action_id, now, "RunNotCancelled",
                                 f"Could not cancel run {run['action_id']} (tick {run.get('tick')}): {exc}"[:2000],
                                 {"tick": run.get("tick"), "action_id": run["action_id"]})
    ctx.store.update(action.action_id, where={"status": Status.FAILED}, details={**action.details, "last_runs": runs})


@provider.background
def run_scheduler(ctx: BackgroundContext) -> None:
    """Fire due ticks from this process, unless ``APTK_TIMERS_SCHEDULER`` is off (an API-only host)."""
    if flag(ctx.config, "APTK_TIMERS_SCHEDULER", True):
        Scheduler(ctx.runtime, stopping=ctx.stopping).loop()

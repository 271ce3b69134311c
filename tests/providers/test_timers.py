"""The timers provider on an injected clock: schedule arithmetic, the policies, single firing, refusals.

The scheduler is driven by hand (``APTK_TIMERS_SCHEDULER`` off, :meth:`Scheduler.run_due`), against the real
hello provider served in the same app and a real SQLite store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import pytest

from providers.hello import provider as hello
from providers.timers import provider as timers
from providers.timers import table
from toolkit.calls import Calls, Transient
from providers.timers.schedule import (
    MISFIRE_SECONDS,
    ScheduleError,
    first_index_at_or_after,
    iso,
    parse_interval,
    tick_time,
)
from providers.timers.scheduler import Scheduler
from toolkit import Status, get_toolkit
from toolkit.server import create_app
from toolkit.testing import ManualClock, TokenAuthority

CREATOR = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
T0 = dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.timezone.utc).timestamp()
HELLO = "http://localhost/hello/run"


def epoch(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


# --- schedule arithmetic ----------------------------------------------------------------------------------------

def test_a_monthly_timer_keeps_to_the_day_of_its_start_without_drifting():
    monthly = parse_interval("P1M", 60)
    ticks = [iso(tick_time(T0, monthly, k)) for k in range(4)]
    assert ticks == ["2026-01-31T09:00:00Z", "2026-02-28T09:00:00Z", "2026-03-31T09:00:00Z", "2026-04-30T09:00:00Z"]


def test_an_interval_of_months_and_days_adds_both():
    interval = parse_interval("P1M1D", 60)
    assert iso(tick_time(epoch(2027, 1, 15), interval, 2)) == "2027-03-17T00:00:00Z"


def test_a_start_in_the_past_runs_first_at_the_next_tick_from_now():
    hourly = parse_interval("PT1H", 60)
    now = T0 + 5 * 3600 + 10
    index = first_index_at_or_after(T0, hourly, now)
    assert index == 6 and tick_time(T0, hourly, index) == T0 + 6 * 3600
    assert first_index_at_or_after(T0, hourly, T0 + 5 * 3600) == 5
    assert first_index_at_or_after(T0, hourly, T0 - 100) == 0


def test_month_ticks_are_found_from_any_time():
    monthly = parse_interval("P1M", 60)
    assert first_index_at_or_after(T0, monthly, epoch(2028, 3, 1)) == 26  # 2028-03-31
    assert iso(tick_time(T0, monthly, 25)) == "2028-02-29T09:00:00Z"  # a leap year
    assert iso(tick_time(T0, monthly, 26)) == "2028-03-31T09:00:00Z"


def test_an_interval_is_seconds_or_iso_and_at_least_the_minimum():
    assert parse_interval(90, 60).seconds == 90
    assert parse_interval("PT2H", 60).seconds == 7200
    with pytest.raises(ScheduleError, match=r"interval: must be at least 60 seconds"):
        parse_interval("PT30S", 60)
    with pytest.raises(ScheduleError, match=r"interval: 'hourly' is not an ISO 8601 duration"):
        parse_interval("hourly", 60)
    with pytest.raises(ScheduleError, match=r"interval: give an ISO 8601 duration"):
        parse_interval(True, 60)


# --- a site: timers and hello in one app, on a manual clock ---------------------------------------------------

class Site:
    def __init__(self, tmp_path, clock: ManualClock | None = None, authority: TokenAuthority | None = None,
                 **config: Any) -> None:
        self.clock = clock or ManualClock(T0)
        self.authority = authority or TokenAuthority()
        self.app = create_app(
            {"APTK_DATA_DIR": str(tmp_path / "data"), "APTK_TIMERS_SCHEDULER": "false", **config},
            providers=[("/timers", timers), ("/hello", hello)], verifier=self.authority.verifier, clock=self.clock)
        self.runtime = get_toolkit(self.app).runtime
        self.api = self.app.test_client()
        self.headers = self.headers_for(CREATOR)

    def headers_for(self, identity: str) -> dict[str, str]:
        token = self.authority.token(identity, scopes=[timers.globus_auth_scope, hello.globus_auth_scope])
        return {"Authorization": f"Bearer {token}"}

    def scheduler(self, **options: Any) -> Scheduler:
        options.setdefault("sleep", lambda seconds: self.clock.advance(seconds) and False)
        return Scheduler(self.runtime, **options)

    def create(self, expect: int = 202, **body: Any) -> dict[str, Any]:
        body = {"callback_url": HELLO, "callback_body": {"echo_string": "hi"}, "interval": 60, **body}
        response = self.api.post("/timers/run", json={"request_id": uuid.uuid4().hex, "body": body},
                                 headers=self.headers)
        assert response.status_code == expect, response.json
        return response.json

    def status(self, action_id: str, prefix: str = "/timers") -> dict[str, Any]:
        response = self.api.get(f"{prefix}/{action_id}/status", headers=self.headers)
        assert response.status_code == 200, response.json
        return response.json

    def log(self, action_id: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        marker = ""
        while True:
            page = self.api.get(f"/timers/{action_id}/log?limit=100{marker}", headers=self.headers).json
            entries.extend(page["entries"])
            if not page["has_next_page"]:
                return entries
            marker = f"&marker={page['marker']}"

    def ticks(self, action_id: str) -> list[tuple[str, int]]:
        """The timer's log, one (code, tick) per tick."""
        return [(e["code"], e["details"]["tick"]) for e in self.log(action_id)
                if e["code"].startswith("Tick") and "tick" in (e.get("details") or {})]

    def settle(self) -> None:
        """Wait (real time) until the hello actions started so far have finished, as they do in milliseconds."""
        give_up = time.monotonic() + 10
        while any(a["status"] == "ACTIVE" for a in self.hello_actions()) and time.monotonic() < give_up:
            time.sleep(0.01)

    def hello_actions(self) -> list[dict[str, Any]]:
        response = self.api.get("/hello/actions", headers=self.headers)
        assert response.status_code == 200
        page = response.json
        return page["actions"] if isinstance(page, dict) else page


@pytest.fixture
def site(tmp_path):
    made = Site(tmp_path)
    yield made
    made.runtime.stop()


def test_a_timer_is_an_active_action_with_its_schedule_in_details(site):
    timer = site.create(name="greet", interval="PT1M", stop_after={"n_runs": 3})
    assert timer["status"] == "ACTIVE"
    assert timer["details"] == {
        "name": "greet", "callback_url": HELLO, "interval": "PT1M", "start": iso(T0), "next_run": iso(T0),
        "runs": 0, "skipped": 0, "failed": 0, "last_runs": [], "stop_after": {"n_runs": 3},
    }


def test_each_tick_starts_one_action_with_a_request_id_of_the_tick_and_n_runs_ends_it(site):
    timer = site.create(stop_after={"n_runs": 3})
    scheduler = site.scheduler()
    for tick in range(3):
        site.settle()
        assert scheduler.run_due() == 1
        site.settle()
        assert scheduler.run_due() == 0  # nothing more is due until the next tick
        if tick < 2:
            assert site.status(timer["action_id"])["details"]["next_run"] == iso(T0 + 60 * (tick + 1))
        site.clock.advance(60)
    done = site.status(timer["action_id"])
    assert done["status"] == "SUCCEEDED"
    assert done["details"]["runs"] == 3 and done["details"]["reason"].startswith("The timer ran 3 times")
    runs = site.hello_actions()
    assert len(runs) == 3
    assert [r["action_id"] for r in done["details"]["last_runs"]] == [r["action_id"] for r in reversed(runs)]
    assert site.ticks(timer["action_id"]) == [("TickRun", 0), ("TickRun", 1), ("TickRun", 2)]
    site.settle()
    assert site.scheduler().run_due() == 0
    assert len(site.hello_actions()) == 3


def test_the_run_of_a_tick_is_started_as_the_timer_creator(site):
    timer = site.create()
    site.scheduler().run_due()
    run = site.status(timer["action_id"])["details"]["last_runs"][0]
    started = site.status(run["action_id"], "/hello")
    assert started["creator_id"] == f"urn:globus:auth:identity:{CREATOR}"
    assert started["label"] == "timer #0"


def test_a_tick_whose_previous_run_is_still_active_is_skipped_and_recorded(site):
    timer = site.create(callback_body={"echo_string": "hi", "sleep_time": 3600})
    scheduler = site.scheduler()
    scheduler.run_due()
    first = site.status(timer["action_id"])["details"]["last_runs"][0]["action_id"]
    site.clock.advance(60)
    scheduler.run_due()
    details = site.status(timer["action_id"])["details"]
    assert (details["runs"], details["skipped"]) == (1, 1)
    assert len(site.hello_actions()) == 1
    site.api.post(f"/hello/{first}/cancel", headers=site.headers)
    site.clock.advance(60)
    scheduler.run_due()
    details = site.status(timer["action_id"])["details"]
    assert (details["runs"], details["skipped"]) == (2, 1)
    assert details["last_runs"][1] == {**details["last_runs"][1], "action_id": first, "status": "FAILED"}
    assert site.ticks(timer["action_id"]) == [("TickRun", 0), ("TickSkipped", 1), ("TickRun", 2)]


def test_after_downtime_one_late_tick_runs_and_the_missed_ones_are_recorded_skipped(site):
    timer = site.create()
    scheduler = site.scheduler()
    site.settle()
    scheduler.run_due()
    site.clock.advance(10 * 60 + 5)  # ticks 1..10 passed; tick 10 is 5 s late
    site.settle()
    assert scheduler.run_due() == 1
    site.settle()
    assert scheduler.run_due() == 0
    details = site.status(timer["action_id"])["details"]
    assert (details["runs"], details["skipped"]) == (2, 9)
    assert len(site.hello_actions()) == 2
    assert site.ticks(timer["action_id"]) == [("TickRun", 0), *[("TickSkipped", k) for k in range(1, 10)],
                                              ("TickRun", 10)]


def test_a_tick_later_than_the_misfire_limit_is_skipped_and_the_next_waits_for_its_time(site):
    timer = site.create(interval=3600)
    scheduler = site.scheduler()
    site.settle()
    scheduler.run_due()
    site.clock.advance(3600 + MISFIRE_SECONDS + 1)
    site.settle()
    assert scheduler.run_due() == 0
    details = site.status(timer["action_id"])["details"]
    assert (details["runs"], details["skipped"], details["next_run"]) == (1, 1, iso(T0 + 7200))
    site.clock.advance(3600 - MISFIRE_SECONDS - 1)
    site.settle()
    assert scheduler.run_due() == 1
    assert len(site.hello_actions()) == 2


def test_a_stop_date_ends_the_timer_succeeded_after_its_last_tick(site):
    timer = site.create(stop_after={"date": iso(T0 + 150)})
    scheduler = site.scheduler()
    for _ in range(3):
        site.settle()
        scheduler.run_due()
        site.clock.advance(60)
    done = site.status(timer["action_id"])
    assert done["status"] == "SUCCEEDED" and done["details"]["runs"] == 3
    assert "next_run" not in done["details"]
    assert len(site.hello_actions()) == 3


def test_a_start_in_the_past_fires_from_the_next_tick_without_recording_skips(site):
    timer = site.create(start=iso(T0 - 3600 - 30))  # ticks at T0 - 3630 + 60k: the next is T0 + 30
    assert timer["details"]["next_run"] == iso(T0 + 30)
    scheduler = site.scheduler()
    assert scheduler.run_due() == 0
    site.clock.advance(30)
    assert scheduler.run_due() == 1
    assert site.status(timer["action_id"])["details"]["skipped"] == 0


class FlakyCalls:
    """Calls whose runs answer Transient ``failures`` times before reaching the real target."""

    def __init__(self, real: Any, failures: int, retry_after: float | None = None) -> None:
        self.real, self.failures, self.retry_after, self.attempts = real, failures, retry_after, 0

    def target(self, url: str, origin: str | None = None) -> Any:
        real = self.real.target(url, origin=origin)
        outer = self

        class Flaky:
            def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
                outer.attempts += 1
                if outer.attempts <= outer.failures:
                    error = Transient("503 ServiceUnavailable: the target is restarting")
                    error.retry_after = outer.retry_after
                    raise error
                return real.run(*args, **kwargs)

            def status(self, *args: Any) -> dict[str, Any]:
                return real.status(*args)

        return Flaky()


def test_transient_errors_are_retried_with_backoff_within_the_tick(site):
    timer = site.create(interval=600)
    calls = FlakyCalls(Calls.for_app(site.app), failures=3)
    site.settle()
    site.scheduler(calls=calls).run_due()
    assert calls.attempts == 4
    assert site.clock() == T0 + 1 + 2 + 4  # backoff 1 s, 2 s, 4 s
    details = site.status(timer["action_id"])["details"]
    assert (details["runs"], details["failed"]) == (1, 0)
    assert len(site.hello_actions()) == 1


def test_retry_after_is_honoured(site):
    site.create(interval=600)
    site.scheduler(calls=FlakyCalls(Calls.for_app(site.app), failures=1, retry_after=45)).run_due()
    assert site.clock() == T0 + 45


def test_a_target_unavailable_until_the_next_tick_fails_that_tick(site):
    timer = site.create(interval=60)
    calls = FlakyCalls(Calls.for_app(site.app), failures=10 ** 6)
    site.scheduler(calls=calls).run_due()
    assert site.clock() < T0 + 60
    details = site.status(timer["action_id"])["details"]
    assert (details["runs"], details["failed"]) == (0, 1)
    assert details["last_error"]["code"] == "TargetUnavailable"
    assert "the target is restarting" in details["last_error"]["description"]
    assert site.ticks(timer["action_id"]) == [("TickFailed", 0)]


def test_consecutive_refused_runs_end_the_timer_failed_with_the_last_error(tmp_path):
    remote = RemoteProvider(unavailable=0, refuse=True)
    site = remote_site(tmp_path, remote.url, f"{remote.url}/token", APTK_TIMERS_MAX_FAILURES="3")
    try:
        # A remote target's body is not checked at /run: its own /run refuses it at each tick.
        timer = site.create(callback_url=f"{remote.url}/remote/run", callback_body={"greeting": "no message"})
        scheduler = site.scheduler()
        for _ in range(3):
            scheduler.run_due()
            site.clock.advance(60)
        done = site.status(timer["action_id"])
        assert done["status"] == "FAILED"
        assert done["details"]["code"] == "TooManyFailures"
        assert done["details"]["description"].startswith("3 ticks in a row failed; the last: RunRefused")
        assert "'message' is a required property" in done["details"]["description"]
        assert done["details"]["failed"] == 3
        assert len(remote.runs) == 3
    finally:
        site.runtime.stop()
        remote.stop()


def test_a_run_between_failures_resets_the_count(tmp_path):
    site = Site(tmp_path, APTK_TIMERS_MAX_FAILURES="2")
    try:
        timer = site.create()
        flaky = FlakyCalls(Calls.for_app(site.app), failures=10 ** 6)
        site.settle()
        site.scheduler(calls=flaky).run_due()  # tick 0 fails
        site.clock.advance(T0 + 60 - site.clock())
        site.settle()
        site.scheduler().run_due()  # tick 1 runs
        site.clock.advance(T0 + 120 - site.clock())
        site.settle()
        site.scheduler(calls=flaky).run_due()  # tick 2 fails: one in a row
        details = site.status(timer["action_id"])
        assert details["status"] == "ACTIVE"
        assert (details["details"]["runs"], details["details"]["failed"]) == (1, 2), site.log(timer["action_id"])
        site.clock.advance(T0 + 180 - site.clock())
        site.settle()
        site.scheduler(calls=flaky).run_due()  # tick 3 fails: two in a row
        assert site.status(timer["action_id"])["status"] == "FAILED"
    finally:
        site.runtime.stop()


def test_exactly_one_of_several_processes_claims_a_tick(site):
    site.create()
    schedulers = [site.scheduler() for _ in range(4)]
    claimed = [s.claim_due() for s in schedulers]
    assert sorted(len(c) for c in claimed) == [0, 0, 0, 1]


def test_a_tick_held_by_a_dead_process_is_fired_again_with_the_same_request_id_and_runs_once(site):
    timer = site.create(interval=600)
    dead, alive = site.scheduler(), site.scheduler()
    [(row, index)] = dead.claim_due()
    dead.fire(row, index)  # it started the run, then died before... here: it recorded; replay as a crash:
    assert len(site.hello_actions()) == 1
    # A second timer whose claiming process dies before firing.
    other = site.create(interval=600)
    [(row, index)] = dead.claim_due()
    assert alive.claim_due() == []  # held
    site.clock.advance(600 + 61)
    again = [pair for pair in alive.claim_due() if pair[0].timer_id == other["action_id"]]
    assert [i for _, i in again] == [0]
    alive.fire(*again[0])
    dead.fire(row, index)  # the dead process wakes up and fires too: same request_id, same action
    ids = {r["action_id"] for r in site.hello_actions()}
    assert len(ids) == 2
    assert site.ticks(other["action_id"]) == [("TickRun", 0)]
    assert table.get(site.runtime.store.engine, timer["action_id"]).runs == 1


def test_cancel_stops_the_schedule_and_leaves_a_running_target_alone(site):
    timer = site.create(callback_body={"echo_string": "hi", "sleep_time": 3600})
    scheduler = site.scheduler()
    scheduler.run_due()
    response = site.api.post(f"/timers/{timer['action_id']}/cancel", headers=site.headers)
    assert response.status_code == 200 and response.json["status"] == "FAILED"
    assert response.json["details"]["code"] == "ActionCancelled"
    site.clock.advance(120)
    assert scheduler.run_due() == 0
    [running] = site.hello_actions()
    assert running["status"] == "ACTIVE"
    assert table.get(site.runtime.store.engine, timer["action_id"]).state == table.ENDED


def test_a_timer_made_with_cancel_running_cancels_its_running_run_when_cancelled(site):
    timer = site.create(callback_body={"echo_string": "hi", "sleep_time": 3600}, cancel_running=True)
    site.scheduler().run_due()
    [running] = site.hello_actions()
    assert running["status"] == "ACTIVE"
    response = site.api.post(f"/timers/{timer['action_id']}/cancel", headers=site.headers)
    assert response.status_code == 200 and response.json["details"]["code"] == "ActionCancelled"
    # The cancel answer already shows what the timer cancelled in turn, as /status does from then on.
    assert response.json["details"]["last_runs"][0]["status"] == "FAILED"
    cancelled = site.status(running["action_id"], "/hello")
    assert (cancelled["status"], cancelled["details"]["code"]) == ("FAILED", "ActionCancelled")
    after = site.status(timer["action_id"])
    assert after["status"] == "FAILED"
    assert after["details"]["last_runs"][0] == {**after["details"]["last_runs"][0], "action_id": running["action_id"],
                                                "status": "FAILED"}
    [line] = [e for e in site.log(timer["action_id"]) if e["code"] == "RunCancelled"]
    assert line["description"] == f"Cancelled run {running['action_id']} (tick 0) at the target; it is FAILED."


def test_cancel_running_must_be_a_boolean(site):
    refused = site.create(expect=400, cancel_running="yes")
    assert refused["description"].startswith("body.cancel_running:")


def test_the_final_details_show_the_status_of_a_run_that_ended_since_the_last_tick(site):
    timer = site.create(callback_body={"echo_string": "hi", "sleep_time": 3600})
    site.scheduler().run_due()
    [running] = site.hello_actions()
    assert site.status(timer["action_id"])["details"]["last_runs"][0]["status"] == "ACTIVE"
    assert site.api.post(f"/hello/{running['action_id']}/cancel", headers=site.headers).status_code == 200
    response = site.api.post(f"/timers/{timer['action_id']}/cancel", headers=site.headers)
    assert response.json["details"]["last_runs"][0]["status"] == "FAILED"  # read again as the timer ended
    assert site.status(timer["action_id"])["details"]["last_runs"][0]["status"] == "FAILED"


def test_a_tick_claimed_before_the_run_handed_the_timer_over_is_tried_again_a_second_later(site):
    timer = site.create()
    store = site.runtime.store
    # As if its /run were still between writing the timer down and handing the action over.
    store.update(timer["action_id"], where={"status": Status.ACTIVE}, runner="another-process")
    scheduler = site.scheduler()
    assert scheduler.run_due() == 1
    assert site.hello_actions() == []
    assert table.get(store.engine, timer["action_id"]).pending_until == site.clock() + 1
    store.update(timer["action_id"], where={"status": Status.ACTIVE}, runner=None)  # the hand-over
    site.clock.advance(1.5)
    assert scheduler.run_due() == 1
    assert site.status(timer["action_id"])["details"]["runs"] == 1
    assert site.ticks(timer["action_id"]) == [("TickRun", 0)]


def test_the_lease_never_takes_up_a_timer(site):
    timer = site.create()
    site.clock.advance(10 * site.runtime.lease_seconds + 30)  # 330 s: ticks 0..5 have passed
    site.runtime.sweep()
    assert site.status(timer["action_id"])["status"] == "ACTIVE"
    assert site.scheduler().run_due() == 1  # tick 5, 30 s late; 0..4 were missed
    assert site.status(timer["action_id"])["details"]["skipped"] == 5


def test_another_user_cannot_see_or_cancel_a_timer(site):
    timer = site.create()
    other = site.headers_for(OTHER)
    assert site.api.get(f"/timers/{timer['action_id']}/status", headers=other).status_code == 403
    assert site.api.post(f"/timers/{timer['action_id']}/cancel", headers=other).status_code == 403


@pytest.mark.parametrize(("body", "message"), [
    ({"interval": 30}, "body.interval: must be at least 60 seconds on this deployment."),
    ({"interval": "every hour"}, "body.interval: 'every hour' is not an ISO 8601 duration"),
    ({"interval": [60]}, "interval"),
    ({"interval": "P9999Y"}, "body.interval: is too long: its ticks fall past the year 9999."),
    ({"interval": 1e300}, "body.interval: is too long"),
    ({"start": "tomorrow"}, "body.start: 'tomorrow' is not an ISO 8601 date-time"),
    ({"stop_after": {"date": iso(T0 - 10)}}, "body.stop_after.date: is before the timer's first run"),
    ({"stop_after": {"n_runs": 0}}, "n_runs"),
    ({"callback_url": "ftp://example.org/run"}, "body.callback_url: must be an http(s) URL"),
    ({"callback_url": "https://elsewhere.example.org/hello/run"},
     "body.callback_url: is not served by this deployment and no client is configured for "
     "https://elsewhere.example.org/hello in APTK_CALL_CLIENTS"),
    ({"callback_url": "http://localhost/nothing/run"}, "body.callback_url: is not served by this deployment"),
    ({"callback_body": "hi"}, "callback_body"),
    ({"every": 60}, "every"),
    # The target is served here: its input schema applies to callback_body at once.
    ({"callback_body": {"greeting": "hi"}}, "body.callback_body: 'echo_string' is a required property"),
    ({"callback_body": {"echo_string": 5}}, "body.callback_body.echo_string: 5 is not of type 'string'"),
    ({"callback_body": {"echo_string": "hi", "sleep_time": -1}},
     "body.callback_body.sleep_time: -1 is less than the minimum of 0"),
])
def test_bad_bodies_are_refused_with_a_precise_400(site, body, message):
    refused = site.create(expect=400, **body)
    assert refused["code"] == "BadActionRequest"
    assert message in refused["description"]
    assert site.runtime.store.find(statuses={Status.ACTIVE}, providers=["timers"]) == []
    assert table.due(site.runtime.store.engine, T0 + 10 ** 9, 10) == []  # no timer row either


def test_the_minimum_interval_is_a_setting(tmp_path):
    site = Site(tmp_path, APTK_TIMERS_MIN_INTERVAL="1")
    try:
        assert site.create(interval=2)["status"] == "ACTIVE"
        assert "at least 1 seconds" in site.create(expect=400, interval=0.5)["description"]
    finally:
        site.runtime.stop()


def wait_until(predicate, timeout: float = 10) -> bool:
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("on", [True, False])
def test_each_process_fires_ticks_in_the_background_unless_the_scheduler_is_off(tmp_path, on):
    site = Site(tmp_path, APTK_TIMERS_SCHEDULER="true" if on else "false")
    try:
        timer = site.create()  # due now: the first tick

        def first_tick_ran() -> bool:
            # The site's clock stands still: move it as real time would, so that a tick the scheduler claimed while
            # the /run was still handing the timer over (and so put off by a second) comes due again.
            site.clock.advance(0.05)
            return site.status(timer["action_id"])["details"]["runs"] == 1

        ran = wait_until(first_tick_ran, timeout=10 if on else 1.5)
        assert ran is on
        assert len(site.hello_actions()) == (1 if on else 0)
    finally:
        site.runtime.stop()


class SlowCalls:
    """Calls whose runs take a while, counting how many are under way at once."""

    def __init__(self, real: Any) -> None:
        self.real, self.lock, self.now, self.most, self.done = real, threading.Lock(), 0, 0, 0

    def target(self, url: str, origin: str | None = None) -> Any:
        real, outer = self.real.target(url, origin=origin), self

        class Slow:
            def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
                with outer.lock:
                    outer.now += 1
                    outer.most = max(outer.most, outer.now)
                time.sleep(0.3)
                try:
                    return real.run(*args, **kwargs)
                finally:
                    with outer.lock:
                        outer.now -= 1
                        outer.done += 1

            def status(self, *args: Any) -> dict[str, Any]:
                return real.status(*args)

        return Slow()


def test_a_process_starts_at_most_its_threads_runs_at_once(tmp_path):
    site = Site(tmp_path, APTK_TIMERS_THREADS="2")
    stopping = threading.Event()
    try:
        for _ in range(6):
            site.create()
        calls = SlowCalls(Calls.for_app(site.app))
        scheduler = Scheduler(site.runtime, calls=calls, stopping=stopping)
        loop = threading.Thread(target=scheduler.loop, daemon=True)
        loop.start()
        assert wait_until(lambda: calls.done == 6)
        assert calls.most == 2
    finally:
        stopping.set()
        site.runtime.stop()


def test_on_postgresql_two_hosts_claim_each_tick_once_and_run_it(tmp_path, postgres_server):
    url = postgres_server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")
    first = Site(tmp_path / "one", APTK_DATABASE_URL=url)
    sites = [first, Site(tmp_path / "two", first.clock, first.authority, APTK_DATABASE_URL=url)]
    try:
        timer = sites[0].create(stop_after={"n_runs": 2})
        for _ in range(2):
            claimed = [s.scheduler().claim_due() for s in sites + sites]
            assert sorted(len(c) for c in claimed) == [0, 0, 0, 1]
            [(row, index)] = next(c for c in claimed if c)
            sites[1].scheduler().fire(row, index)
            sites[0].settle()
            sites[0].clock.advance(60)
        assert sites[0].status(timer["action_id"])["status"] == "SUCCEEDED"
        assert len(sites[1].hello_actions()) == 2
    finally:
        for site in sites:
            site.runtime.stop()


class RemoteProvider:
    """A remote action provider on loopback (and its token endpoint) that answers 503 ``unavailable`` times.

    ``refuse``: its /run answers 400 (its schema wants ``message``); ``grant``: whether its token endpoint gives
    tokens (False: ``invalid_client``); ``reject_tokens``: its /run answers 401; ``running``: its runs stay ACTIVE until cancelled, and its /cancel
    answers ``cancel_answer`` (200: the run is FAILED).
    """

    def __init__(self, unavailable: int, refuse: bool = False, running: bool = False) -> None:
        from flask import Flask, jsonify, request
        from werkzeug.serving import make_server

        self.unavailable, self.refuse, self.grant, self.runs = unavailable, refuse, True, []
        self.running, self.cancel_answer, self.cancelled, self.reject_tokens = running, 200, [], False
        app = Flask("remote")

        def status(action_id: str) -> dict[str, Any]:
            going = self.running and action_id not in self.cancelled
            return {"action_id": action_id, "status": "ACTIVE" if going else "FAILED" if self.running else
                    "SUCCEEDED", "creator_id": "x", "details": {}, "start_time": iso(T0)}

        @app.get("/remote/<action_id>/status")
        def read(action_id: str):
            return jsonify(status(action_id))

        @app.post("/remote/<action_id>/cancel")
        def cancel(action_id: str):
            if self.cancel_answer != 200:
                return jsonify({"code": "ServiceUnavailable", "description": "down for maintenance"}), 503
            self.cancelled.append(action_id)
            return jsonify(status(action_id))

        @app.post("/token")
        def token():
            if not self.grant:
                return jsonify({"error": "invalid_client", "error_description": "client secret expired"}), 401
            return jsonify({"access_token": "remote-token", "token_type": "Bearer", "expires_in": 3600})

        @app.post("/remote/run")
        def run():
            self.runs.append(request.get_json())
            if len(self.runs) <= self.unavailable:
                return jsonify({"code": "ServiceUnavailable", "description": "restarting"}), 503
            if self.reject_tokens:
                return jsonify({"code": "AuthenticationFailed", "description": "token revoked"}), 401
            if self.refuse:
                return jsonify({"code": "BadActionRequest",
                                "description": "body: 'message' is a required property"}), 400
            return jsonify(status("r" + str(len(self.runs)))), 202

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def remote_site(tmp_path, remote_url: str, token_url: str, **config: Any) -> Site:
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"url": remote_url + "/", "token_url": token_url, "client_id": "timers",
                                    "client_secret": "s3cret", "scope": "urn:remote"}]))
    return Site(tmp_path, **{"APTK_CALL_CLIENTS": str(clients), "APTK_TIMERS_MAX_FAILURES": "2", **config})


@contextlib.contextmanager
def remote_and_site(tmp_path, *, unavailable: int = 0, **behaviour: Any) -> Iterator[tuple["RemoteProvider", Site]]:
    """A remote provider over HTTP (``behaviour`` sets its attributes, e.g. ``grant=False``) and a timers site whose
    client for it gets tokens at its token endpoint; both stopped afterwards."""
    remote = RemoteProvider(unavailable=unavailable)
    for name, value in behaviour.items():
        setattr(remote, name, value)
    site = remote_site(tmp_path, remote.url, f"{remote.url}/token")
    try:
        yield remote, site
    finally:
        site.runtime.stop()
        remote.stop()


def test_a_remote_target_answering_503_is_retried_within_the_tick_over_http(tmp_path):
    with remote_and_site(tmp_path, unavailable=2) as (remote, site):
        timer = site.create(callback_url=f"{remote.url}/remote/run", interval=600)
        site.scheduler().run_due()
        assert len(remote.runs) == 3
        assert {r["request_id"] for r in remote.runs} == {f"timer-{timer['action_id']}-0"}  # one request, retried
        details = site.status(timer["action_id"])["details"]
        assert (details["runs"], details["failed"]) == (1, 0)
        assert details["last_runs"][0]["action_id"] == "r3"


def test_a_remote_target_refusing_connections_fails_its_ticks_and_then_the_timer(tmp_path):
    remote = RemoteProvider(unavailable=0)  # only its token endpoint is used
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    site = remote_site(tmp_path, closed, f"{remote.url}/token")
    try:
        timer = site.create(callback_url=f"{closed}/remote/run", interval=60)
        scheduler = site.scheduler()
        for tick in range(2):
            site.clock.advance(T0 + 60 * tick - site.clock())
            scheduler.run_due()
        done = site.status(timer["action_id"])
        assert done["status"] == "FAILED" and done["details"]["code"] == "TooManyFailures"
        assert done["details"]["last_error"]["code"] == "TargetUnavailable"
        assert "s3cret" not in json.dumps(done) and "remote-token" not in json.dumps(done)
    finally:
        site.runtime.stop()
        remote.stop()


def test_a_tick_without_credentials_pauses_the_timer_until_resumed_then_it_goes_on_from_its_next_tick(tmp_path):
    # The client's secret no longer works at the token endpoint.
    with remote_and_site(tmp_path, grant=False) as (remote, site):
        timer = site.create(callback_url=f"{remote.url}/remote/run", interval=60)
        timer_id = timer["action_id"]
        scheduler = site.scheduler()
        assert scheduler.run_due() == 1
        paused = site.status(timer_id)
        assert paused["status"] == "INACTIVE"
        assert paused["details"]["code"] == "CredentialsRequired"
        assert paused["details"]["required_scope"] == "urn:remote"
        description = paused["details"]["description"]
        assert description.startswith(f"Tick 0 could not call {remote.url}/remote/run as the timer's creator: no token "
                                      "for client timers: the authorization server refused: client secret expired.")
        assert "APTK_CALL_CLIENTS" in description and "resume the timer" in description
        assert (paused["details"]["failed"], paused["details"]["last_error"]["code"]) == (1, "CredentialsMissing")
        assert "next_run" not in paused["details"]
        assert "s3cret" not in json.dumps(paused)
        for _ in range(3):  # not retried: no tick fires while it is paused
            site.clock.advance(60)
            assert scheduler.run_due() == 0
        assert remote.runs == []
        assert site.ticks(timer_id) == [("TickFailed", 0)]

        remote.grant = True
        site.clock.advance(20)  # T0 + 200: ticks 1..3 passed while paused
        resumed = site.api.post(f"/timers/{timer_id}/resume", headers=site.headers)
        assert resumed.status_code == 200, resumed.json
        assert resumed.json["status"] == "ACTIVE"
        assert "code" not in resumed.json["details"]
        assert resumed.json["details"]["next_run"] == iso(T0 + 240)
        assert resumed.json["details"]["skipped"] == 3
        assert scheduler.run_due() == 0  # no burst of the ticks that passed
        site.clock.advance(40)
        assert scheduler.run_due() == 1
        assert [r["request_id"] for r in remote.runs] == [f"timer-{timer_id}-4"]
        details = site.status(timer_id)["details"]
        assert (details["runs"], details["skipped"], details["failed"]) == (1, 3, 1)
        assert site.ticks(timer_id) == [("TickFailed", 0), ("TickSkipped", 1), ("TickSkipped", 2),
                                        ("TickSkipped", 3), ("TickRun", 4)]


def test_a_target_refusing_the_clients_tokens_pauses_the_timer_too(tmp_path):
    with remote_and_site(tmp_path, reject_tokens=True) as (remote, site):
        timer = site.create(callback_url=f"{remote.url}/remote/run")
        site.scheduler().run_due()
        paused = site.status(timer["action_id"])
        assert (paused["status"], paused["details"]["code"]) == ("INACTIVE", "CredentialsRequired")
        assert "the provider refused the credentials: token revoked" in paused["details"]["description"]
        assert len(remote.runs) == 2  # a fresh token was tried once


def test_a_paused_timer_whose_stop_date_passed_ends_succeeded_when_resumed(tmp_path):
    with remote_and_site(tmp_path, grant=False) as (remote, site):
        timer = site.create(callback_url=f"{remote.url}/remote/run", stop_after={"date": iso(T0 + 120)})
        site.scheduler().run_due()
        assert site.status(timer["action_id"])["status"] == "INACTIVE"
        site.clock.advance(600)
        resumed = site.api.post(f"/timers/{timer['action_id']}/resume", headers=site.headers).json
        assert resumed["status"] == "SUCCEEDED"
        assert resumed["details"]["reason"] == "The timer reached its stop_after date while it was paused."
        assert resumed["details"]["skipped"] == 2
        assert table.get(site.runtime.store.engine, timer["action_id"]).state == table.ENDED


def test_a_paused_timer_can_be_cancelled(tmp_path):
    with remote_and_site(tmp_path, grant=False) as (remote, site):
        timer = site.create(callback_url=f"{remote.url}/remote/run")
        site.scheduler().run_due()
        cancelled = site.api.post(f"/timers/{timer['action_id']}/cancel", headers=site.headers).json
        assert (cancelled["status"], cancelled["details"]["code"]) == ("FAILED", "ActionCancelled")
        assert table.get(site.runtime.store.engine, timer["action_id"]).state == table.ENDED
        assert site.api.post(f"/timers/{timer['action_id']}/resume", headers=site.headers).status_code == 409


def test_a_flows_callback_body_is_checked_against_that_flows_input_schema(tmp_path):
    from providers.flows import provider as flows

    directory = tmp_path / "flows"
    directory.mkdir()
    (directory / "greeter.json").write_text(json.dumps({
        "title": "Greeter", "runnable_by": ["all_authenticated_users"],
        "input_schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "definition": {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}}))
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path / "data"), "APTK_TIMERS_SCHEDULER": "false",
                      "APTK_FLOWS_DIR": str(directory)},
                     providers=[("/timers", timers), ("/flows", flows)], verifier=authority.verifier)
    headers = {"Authorization": f"Bearer {authority.token(CREATOR, scopes=[timers.globus_auth_scope])}"}
    try:
        def create(body: dict[str, Any]) -> Any:
            return app.test_client().post("/timers/run", headers=headers, json={"request_id": uuid.uuid4().hex, "body": {
                "callback_url": "http://localhost/flows/greeter/run", "callback_body": body, "interval": 3600}})

        refused = create({"name": 5})
        assert refused.status_code == 400
        assert refused.json["description"] == "body.callback_body.name: 5 is not of type 'string'"
        assert create({"name": "Ada"}).status_code == 202
    finally:
        get_toolkit(app).runtime.stop()


@pytest.mark.parametrize("answer", [200, 503])
def test_cancel_running_cancels_a_remote_run_over_http_or_logs_why_not(tmp_path, answer):
    remote = RemoteProvider(unavailable=0, running=True)
    remote.cancel_answer = answer
    site = remote_site(tmp_path, remote.url, f"{remote.url}/token")
    try:
        timer = site.create(callback_url=f"{remote.url}/remote/run", cancel_running=True)
        site.scheduler().run_due()
        assert site.status(timer["action_id"])["details"]["last_runs"][0]["status"] == "ACTIVE"
        response = site.api.post(f"/timers/{timer['action_id']}/cancel", headers=site.headers)
        assert response.status_code == 200 and response.json["details"]["code"] == "ActionCancelled"
        [line] = [e for e in site.log(timer["action_id"]) if e["code"].startswith("Run")]
        last_run = site.status(timer["action_id"])["details"]["last_runs"][0]
        if answer == 200:
            assert remote.cancelled == ["r1"]
            assert line["description"] == "Cancelled run r1 (tick 0) at the target; it is FAILED."
            assert last_run["status"] == "FAILED"
        else:
            assert line["code"] == "RunNotCancelled"
            assert line["description"].startswith("Could not cancel run r1 (tick 0): ")
            assert "down for maintenance" in line["description"]
            assert last_run["status"] == "ACTIVE"
    finally:
        site.runtime.stop()
        remote.stop()

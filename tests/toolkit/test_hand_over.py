"""Actions a callback hands over (kept ACTIVE by the provider, never by a process) and background tasks."""

from __future__ import annotations

import threading
import time

import pytest

from toolkit import ActionProvider, BackgroundContext, RunContext, Status, get_toolkit
from toolkit.testing import provider_client


def handing_over(**options) -> ActionProvider:
    provider = ActionProvider(title="Kept", input_schema={"type": "object"}, **options)

    @provider.run
    def keep(body, ctx: RunContext):
        ctx.hand_over(details={"kept": True}, display_status="Scheduled")
        return {"ignored": True}

    return provider


def test_a_handed_over_action_stays_active_with_its_details_and_no_runner(tmp_path, clock):
    client = provider_client(handing_over(synchronous=True), tmp_path, clock=clock)
    status = client.run({})
    assert (status["status"], status["details"], status["display_status"]) == ("ACTIVE", {"kept": True},
                                                                              "Scheduled")
    stored = get_toolkit(client.app).runtime.store.get(status["action_id"])
    assert (stored.runner, stored.heartbeat) == (None, None)


def test_the_lease_never_takes_up_a_handed_over_action(tmp_path, clock):
    client = provider_client(handing_over(synchronous=True, recovery="rerun"), tmp_path, clock=clock)
    action_id = client.run({})["action_id"]
    runtime = get_toolkit(client.app).runtime
    clock.advance(100 * runtime.lease_seconds)
    runtime.sweep()
    stored = runtime.store.get(action_id)
    assert (stored.status, stored.attempts) == (Status.ACTIVE, 1)


def test_end_completes_a_handed_over_action_through_the_finish_hook(tmp_path, clock):
    provider = handing_over(synchronous=True)
    provider.finish(lambda action, ctx: {**action.details, "finished_by_hook": action.status.value})
    client = provider_client(provider, tmp_path, clock=clock)
    action_id = client.run({})["action_id"]
    runtime = get_toolkit(client.app).runtime
    ended = runtime.end(action_id, Status.SUCCEEDED, {"runs": 3})
    assert ended is not None and ended.status is Status.SUCCEEDED
    status = client.status(action_id)
    assert status["details"] == {"runs": 3, "finished_by_hook": "SUCCEEDED"}
    assert "completion_time" in status
    assert runtime.end(action_id, Status.FAILED, {}) is None  # already ended: nothing changes
    with pytest.raises(ValueError):
        runtime.end(action_id, Status.ACTIVE, {})


def test_pause_makes_a_handed_over_action_inactive_and_resume_runs_its_callback_again(tmp_path, clock):
    provider = ActionProvider(title="Kept", input_schema={"type": "object"}, synchronous=True)
    resumed: list[bool] = []

    @provider.run
    def keep(body, ctx: RunContext):
        resumed.append(ctx.resumed)
        ctx.hand_over(details={**ctx.details, "kept": len(resumed)})

    client = provider_client(provider, tmp_path, clock=clock)
    action_id = client.run({})["action_id"]
    runtime = get_toolkit(client.app).runtime
    paused = runtime.pause(action_id, {"kept": 1, "code": "CredentialsRequired", "description": "log in again",
                                       "required_scope": "urn:x"})
    assert paused is not None and paused.status is Status.INACTIVE
    status = client.status(action_id)
    assert (status["status"], status["details"]["code"], status["details"]["required_scope"]) == (
        "INACTIVE", "CredentialsRequired", "urn:x")
    assert runtime.pause(action_id, {}) is None  # no longer ACTIVE in the provider's hands
    again = client.resume(action_id)
    assert (again["status"], again["details"]) == ("ACTIVE", {"kept": 2})
    assert resumed == [False, True]


def test_a_cancelled_handed_over_action_cannot_be_ended_again(tmp_path, clock):
    client = provider_client(handing_over(synchronous=True), tmp_path, clock=clock)
    action_id = client.run({})["action_id"]
    client.cancel(action_id)
    assert get_toolkit(client.app).runtime.end(action_id, Status.SUCCEEDED, {}) is None
    assert client.status(action_id)["details"]["code"] == "ActionCancelled"


def test_an_asynchronous_callback_may_hand_over_too(tmp_path, clock):
    client = provider_client(handing_over(synchronous=False), tmp_path, clock=clock)
    action_id = client.run({})["action_id"]
    give_up = time.monotonic() + 5
    while client.status(action_id).get("display_status") != "Scheduled" and time.monotonic() < give_up:
        time.sleep(0.02)
    assert client.status(action_id)["status"] == "ACTIVE"
    assert get_toolkit(client.app).runtime.store.get(action_id).runner is None


def test_a_background_task_runs_in_the_started_process_until_it_stops(tmp_path, clock):
    provider = handing_over(synchronous=True)
    seen: list[BackgroundContext] = []
    stopped = threading.Event()

    @provider.background
    def task(ctx: BackgroundContext) -> None:
        seen.append(ctx)
        ctx.stopping.wait()
        stopped.set()

    client = provider_client(provider, tmp_path, clock=clock)
    runtime = get_toolkit(client.app).runtime
    assert seen == []  # nothing runs before the runtime starts
    runtime.start()
    give_up = time.monotonic() + 5
    while not seen and time.monotonic() < give_up:
        time.sleep(0.01)
    assert len(seen) == 1 and seen[0].runtime is runtime and seen[0].app is client.app
    assert seen[0].clock() == clock()
    runtime.start()  # idempotent: no second thread
    time.sleep(0.05)
    assert len(seen) == 1
    runtime.stop()
    assert stopped.is_set()


def test_hand_over_of_an_action_that_ended_meanwhile_raises_cancelled(tmp_path, clock):
    provider = ActionProvider(title="Late", input_schema={"type": "object"})
    outcome: list[str] = []
    started, go = threading.Event(), threading.Event()

    @provider.run
    def late(body, ctx: RunContext):
        started.set()
        go.wait(10)
        try:
            ctx.hand_over()
        except Exception as exc:
            outcome.append(type(exc).__name__)
            raise

    client = provider_client(provider, tmp_path, clock=clock)
    action_id = client.run({})["action_id"]
    assert started.wait(10)  # a callback cancelled before it starts never runs at all
    client.cancel(action_id)
    go.set()
    give_up = time.monotonic() + 10
    while not outcome and time.monotonic() < give_up:
        time.sleep(0.01)
    assert outcome == ["ActionCancelled"]
    assert client.status(action_id)["status"] == "FAILED"


def test_every_runs_work_at_its_interval_survives_a_failing_turn_and_stops_with_the_process(tmp_path, caplog):
    import threading

    from toolkit import BackgroundContext

    calls: list[int] = []
    stopping = threading.Event()

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database away")
        if len(calls) == 3:
            stopping.set()

    context = BackgroundContext(runtime=None, stopping=stopping)  # type: ignore[arg-type]
    worker = threading.Thread(target=context.every, args=(0.01, work, "sweeping"))
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and len(calls) == 3  # the failing first turn did not end the loop
    assert "sweeping failed; trying again in 0.01 s" in caplog.text

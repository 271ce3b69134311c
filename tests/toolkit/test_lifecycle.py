"""How actions move between states: progress, cancel, pause and resume, deadlines, expiry, recovery."""

import datetime as dt
import threading
import time
import uuid

import pytest

from toolkit import Action, ActionConflict, ActionInactive, ActionProvider, Status
from toolkit.client import ClientError
from toolkit.testing import provider_client


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def wait_for(predicate, timeout=5.0):
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


class Gate:
    """A callback that reports progress, then blocks until released or cancelled."""

    def __init__(self, **options):
        self.provider = ActionProvider(title="Gate", input_schema={"type": "object"}, **options)
        self.go = threading.Event()
        self.started = threading.Event()
        self.saw_cancel = threading.Event()
        self.runs = []
        self.provider.run(self._run)

    def _run(self, body, ctx):
        self.runs.append(ctx.attempt)
        ctx.progress(details={"done": 1}, display_status="halfway")
        self.started.set()
        while not self.go.is_set():
            if ctx.cancelled:
                self.saw_cancel.set()
                return {"late": True}  # must not overwrite the cancellation
            time.sleep(0.01)
        if body.get("pause") and not ctx.resumed:
            raise ActionInactive(
                "NeedsConsent", "Grant consent, then resume.", required_scope="urn:x", resolution_url="https://x/y"
            )
        return {"done": 2}


@pytest.fixture
def gate():
    return Gate()


def test_progress_is_visible_while_the_callback_runs(gate, tmp_path):
    client = provider_client(gate.provider, tmp_path)
    action = client.run({})["action_id"]
    assert gate.started.wait(5)
    status = client.status(action)
    assert (status["status"], status["details"], status["display_status"]) == ("ACTIVE", {"done": 1}, "halfway")
    gate.go.set()
    final = client.wait(action, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"done": 2})
    assert "display_status" not in final


def test_cancel_reaches_the_running_callback_and_fails_the_action(gate, tmp_path):
    client = provider_client(gate.provider, tmp_path)
    action = client.run({})["action_id"]
    assert gate.started.wait(5)
    status = client.cancel(action)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ActionCancelled"
    assert status["details"]["done"] == 1  # what the callback reported is kept
    assert gate.saw_cancel.wait(5)
    time.sleep(0.1)
    assert client.status(action)["details"]["code"] == "ActionCancelled"


def test_cancel_hook_runs_once_cancelled(gate, tmp_path):
    cancelled = []
    gate.provider.cancel(lambda action, identity: cancelled.append((action.action_id, action.status)))
    client = provider_client(gate.provider, tmp_path)
    action = client.run({})["action_id"]
    client.cancel(action)
    assert cancelled == [(action, Status.FAILED)]


def test_inactive_then_resume_runs_the_callback_again(gate, tmp_path):
    client = provider_client(gate.provider, tmp_path)
    gate.go.set()
    action = client.run({"pause": True})["action_id"]
    paused = client.wait(action, until=["INACTIVE"], timeout=5)
    assert paused["details"] == {
        "code": "NeedsConsent",
        "description": "Grant consent, then resume.",
        "required_scope": "urn:x",
        "resolution_url": "https://x/y",
    }
    assert client.resume(action)["status"] in ("ACTIVE", "SUCCEEDED")
    assert client.wait(action, timeout=5)["details"] == {"done": 2}
    assert gate.runs == [1, 2]
    assert [e["code"] for e in client.log(action, limit=20)["entries"]] == [
        "ActionStarted", "ActionInactive", "ActionResumed", "ActionSucceeded"
    ]


def test_resume_hook_may_refuse(gate, tmp_path):
    def refuse(action, identity):
        raise ActionConflict("Not yet.")

    gate.provider.resume(refuse)
    gate.go.set()
    client = provider_client(gate.provider, tmp_path)
    action = client.run({"pause": True})["action_id"]
    client.wait(action, until=["INACTIVE"], timeout=5)
    with pytest.raises(ClientError) as caught:
        client.resume(action)
    assert (caught.value.status, caught.value.description) == (409, "Not yet.")
    assert client.status(action)["status"] == "INACTIVE"


def test_resume_of_completed_action_is_409(gate, tmp_path):
    gate.go.set()
    client = provider_client(gate.provider, tmp_path)
    action = client.run({})["action_id"]
    client.wait(action, timeout=5)
    with pytest.raises(ClientError) as caught:
        client.resume(action)
    assert caught.value.status == 409


def test_release_of_active_or_inactive_action_is_409(gate, tmp_path):
    client = provider_client(gate.provider, tmp_path)
    action = client.run({})["action_id"]
    with pytest.raises(ClientError) as caught:
        client.release(action)
    assert caught.value.status == 409
    gate.go.set()


def test_deadline_fails_the_action_and_stops_the_callback(gate, tmp_path, clock):
    client = provider_client(gate.provider, tmp_path, clock=clock)
    action = client.run({}, deadline=iso(clock.now + 60))["action_id"]
    assert gate.started.wait(5)
    clock.advance(61)
    status = client.status(action)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "DeadlineExceeded"
    assert status["details"]["done"] == 1
    assert gate.saw_cancel.wait(5)


def test_deadline_is_enforced_by_the_sweep_without_any_request(gate, tmp_path, clock):
    client = provider_client(gate.provider, tmp_path, clock=clock)
    action = client.run({"pause": True}, deadline=iso(clock.now + 60))["action_id"]
    gate.go.set()
    client.wait(action, until=["INACTIVE"], timeout=5)
    runtime = client.app.extensions["aptk"].runtime
    clock.advance(61)
    runtime.sweep()
    assert runtime.store.get(action).status is Status.FAILED


def test_completed_actions_disappear_after_release_after(tmp_path, clock):
    gate = Gate(synchronous=True)
    gate.go.set()
    client = provider_client(gate.provider, tmp_path, clock=clock)
    short = client.run({}, release_after="PT1H")["action_id"]
    default = client.run({})["action_id"]
    runtime = client.app.extensions["aptk"].runtime
    clock.advance(3601)
    with pytest.raises(ClientError) as caught:
        client.status(short)
    assert caught.value.status == 404
    assert client.status(default)["release_after"] == "P30D"
    runtime.sweep()
    assert runtime.store.get(short) is None  # purged, not just hidden
    clock.advance(30 * 86400)
    runtime.sweep()
    assert runtime.store.get(default) is None


def orphan(client, clock, provider, attempts=1) -> str:
    """An ACTIVE action whose process died long ago (its heartbeat stopped)."""
    runtime = client.app.extensions["aptk"].runtime
    runtime.start()
    action = Action(
        action_id=uuid.uuid4().hex, provider=provider.name, request_id=f"r{attempts}", request_hash="h",
        creator_id=client.status(client.run({"ready": True})["action_id"])["creator_id"],
        status=Status.ACTIVE, body={}, start_time=clock.now - 100, attempts=attempts, runner="gone:1:dead",
        heartbeat=clock.now - 100,
    )
    runtime.store.create(action, log=(clock.now - 100, "ActionStarted", "Action started"), now=clock.now)
    return action.action_id


class Quick:
    def __init__(self, **options):
        self.provider = ActionProvider(title="Quick", input_schema={"type": "object"}, **options)
        self.calls = []
        self.provider.run(lambda body, ctx: self.calls.append(ctx.attempt) or {"attempt": ctx.attempt})


def test_action_of_a_dead_process_is_run_again_when_the_provider_says_rerun(tmp_path, clock):
    quick = Quick(recovery="rerun", max_attempts=3)
    client = provider_client(quick.provider, tmp_path, clock=clock)
    action = orphan(client, clock, quick.provider)
    client.app.extensions["aptk"].runtime.sweep()
    final = client.wait(action, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"attempt": 2})
    assert "ActionRecovered" in [e["code"] for e in client.log(action, limit=20)["entries"]]


def test_action_of_a_dead_process_fails_with_worker_lost_by_default(tmp_path, clock):
    quick = Quick()
    client = provider_client(quick.provider, tmp_path, clock=clock)
    action = orphan(client, clock, quick.provider)
    client.app.extensions["aptk"].runtime.sweep()
    final = client.status(action)
    assert (final["status"], final["details"]["code"]) == ("FAILED", "WorkerLost")


def test_rerun_stops_after_max_attempts(tmp_path, clock):
    quick = Quick(recovery="rerun", max_attempts=2)
    client = provider_client(quick.provider, tmp_path, clock=clock)
    action = orphan(client, clock, quick.provider, attempts=2)
    client.app.extensions["aptk"].runtime.sweep()
    assert client.status(action)["details"]["code"] == "WorkerLost"


def test_live_actions_are_not_taken_over(gate, tmp_path, clock):
    client = provider_client(gate.provider, tmp_path, clock=clock)
    action = client.run({})["action_id"]
    assert gate.started.wait(5)
    runtime = client.app.extensions["aptk"].runtime
    clock.advance(runtime.lease_seconds / 2)
    runtime.sweep()
    assert client.status(action)["status"] == "ACTIVE"
    assert gate.runs == [1]
    gate.go.set()

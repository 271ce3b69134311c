"""How actions move between states: progress, cancel, pause and resume, deadlines, expiry, recovery."""

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from toolkit import Action, ActionConflict, ActionInactive, ActionProvider, Status, get_toolkit, runners
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
    gate.provider.cancel(lambda action, ctx: cancelled.append((action.action_id, action.status)))
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
    def refuse(action, ctx):
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
    runtime = get_toolkit(client.app).runtime
    clock.advance(61)
    runtime.sweep()
    assert runtime.store.get(action).status is Status.FAILED


def test_completed_actions_disappear_after_release_after(tmp_path, clock):
    gate = Gate(synchronous=True)
    gate.go.set()
    client = provider_client(gate.provider, tmp_path, clock=clock)
    short = client.run({}, release_after="PT1H")["action_id"]
    default = client.run({})["action_id"]
    runtime = get_toolkit(client.app).runtime
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


def orphan(client, clock, provider, attempts=1, request_id=None, runner="gone:1:dead", heartbeat=None) -> str:
    """An ACTIVE action whose process died long ago (its heartbeat stopped), unless ``runner`` and ``heartbeat``
    say otherwise: the row is created as it is meant to be, so that no sweep ever sees it in between."""
    runtime = get_toolkit(client.app).runtime
    runtime.start()
    action = Action(
        action_id=uuid.uuid4().hex, provider=provider.name, request_id=request_id or f"r{attempts}", request_hash="h",
        creator_id=client.status(client.run({"ready": True})["action_id"])["creator_id"],
        status=Status.ACTIVE, body={}, start_time=clock.now - 100, attempts=attempts, runner=runner,
        heartbeat=clock.now - 100 if heartbeat is None else heartbeat,
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
    get_toolkit(client.app).runtime.sweep()
    final = client.wait(action, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"attempt": 2})
    assert "ActionRecovered" in [e["code"] for e in client.log(action, limit=20)["entries"]]


def test_action_of_a_dead_process_fails_with_worker_lost_by_default(tmp_path, clock):
    quick = Quick()
    client = provider_client(quick.provider, tmp_path, clock=clock)
    action = orphan(client, clock, quick.provider)
    get_toolkit(client.app).runtime.sweep()
    final = client.status(action)
    assert (final["status"], final["details"]["code"]) == ("FAILED", "WorkerLost")


def test_rerun_stops_after_max_attempts(tmp_path, clock):
    quick = Quick(recovery="rerun", max_attempts=2)
    client = provider_client(quick.provider, tmp_path, clock=clock)
    action = orphan(client, clock, quick.provider, attempts=2)
    get_toolkit(client.app).runtime.sweep()
    assert client.status(action)["details"]["code"] == "WorkerLost"


def local_orphan(client, clock, provider, runner: str) -> str:
    """An ACTIVE action held by ``runner``, with a heartbeat of just now (its lease far from over)."""
    return orphan(client, clock, provider, request_id=runner, runner=runner, heartbeat=clock.now)


def local_runner(pid: int, start: int | None = None) -> str:
    start = runners.process_start(pid) if start is None else start
    return f"{runners.host_key()}:{pid}:{start}:abcdef12:{socket.gethostname()}"


@pytest.mark.skipif(not runners.host_key(), reason="needs /proc to tell processes apart")
def test_an_action_of_a_process_of_this_host_that_is_gone_is_taken_up_at_once(tmp_path, clock):
    quick = Quick(recovery="rerun", max_attempts=3)
    client = provider_client(quick.provider, tmp_path, clock=clock)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    runner = local_runner(child.pid)
    child.wait()
    action = local_orphan(client, clock, quick.provider, runner)
    get_toolkit(client.app).runtime.sweep()  # the clock has not moved: no lease ran out
    final = client.wait(action, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"attempt": 2})


@pytest.mark.skipif(not runners.host_key(), reason="needs /proc to tell processes apart")
def test_an_action_of_a_live_process_of_this_host_is_never_taken_up_but_a_reused_pid_is(tmp_path, clock):
    quick = Quick()
    client = provider_client(quick.provider, tmp_path, clock=clock)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for(lambda: runners.process_start(child.pid))
        live = local_orphan(client, clock, quick.provider, local_runner(child.pid))
        reused = local_orphan(client, clock, quick.provider, local_runner(child.pid, runners.process_start(child.pid) - 1))
        elsewhere = local_orphan(client, clock, quick.provider, "0123456789abcdef:1:1:abcdef12:other-host")
        get_toolkit(client.app).runtime.sweep()
        assert client.status(live)["status"] == "ACTIVE"
        assert client.status(elsewhere)["status"] == "ACTIVE"  # another host's process: only its lease tells
        assert client.status(reused)["details"]["code"] == "WorkerLost"
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not runners.host_key(), reason="needs /proc to tell processes apart")
def test_a_zombie_holds_nothing(tmp_path, clock):
    quick = Quick()
    client = provider_client(quick.provider, tmp_path, clock=clock)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    runner = local_runner(wait_for(lambda: runners.process_start(child.pid) and child.pid))
    wait_for(lambda: open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z")  # exited, unreaped
    try:
        action = local_orphan(client, clock, quick.provider, runner)
        get_toolkit(client.app).runtime.sweep()
        assert client.status(action)["details"]["code"] == "WorkerLost"
    finally:
        child.wait()


def test_live_actions_are_not_taken_over(gate, tmp_path, clock):
    client = provider_client(gate.provider, tmp_path, clock=clock)
    action = client.run({})["action_id"]
    assert gate.started.wait(5)
    runtime = get_toolkit(client.app).runtime
    clock.advance(runtime.lease_seconds / 2)
    runtime.sweep()
    assert client.status(action)["status"] == "ACTIVE"
    assert gate.runs == [1]
    gate.go.set()


# --- fair scheduling -------------------------------------------------------------------------------------------


class Hog:
    """A callback that sleeps until cancelled (``{"hold": true}``) or returns at once; counts its starts."""

    def __init__(self):
        self.provider = ActionProvider(title="Hog", input_schema={"type": "object"}, recovery="rerun")
        self.started = []
        self.lock = threading.Lock()
        self.provider.run(self._run)

    def _run(self, body, ctx):
        with self.lock:
            self.started.append(ctx.action_id)
        if body.get("hold"):
            ctx.progress(display_status="holding")
            ctx.sleep(86400)
        return {"done": True}


def test_a_second_caller_starts_at_once_while_one_caller_hogs_every_thread(tmp_path):
    hog = Hog()
    alice = provider_client(hog.provider, tmp_path)  # 8 threads, at most 4 running per caller
    bob = alice.as_identity()
    held = [alice.run({"hold": True})["action_id"] for _ in range(24)]
    wait_for(lambda: len(hog.started) == 4)

    began = time.monotonic()
    quick = bob.run({})["action_id"]
    assert bob.wait(quick, timeout=5, max_interval=0.05)["status"] == "SUCCEEDED"
    assert time.monotonic() - began < 2
    assert len(set(hog.started) & set(held)) == 4  # alice still runs only her share

    # Those waiting say so, and stay ACTIVE (their deadline still applies).
    queued = [a for a in held if a not in hog.started]
    statuses = wait_for(lambda: [s for s in map(alice.status, queued) if s.get("display_status") == "Queued"]
                        if all(alice.status(a).get("display_status") == "Queued" for a in queued) else None)
    assert {(s["status"], s["display_status"]) for s in statuses} == {("ACTIVE", "Queued")}

    # Cancelling what waits ends it for good: its callback never runs, not even once the caller's slots free.
    for action in queued:
        assert alice.cancel(action)["details"]["code"] == "ActionCancelled"
    for action in hog.started[:4]:
        alice.cancel(action)
    another = alice.run({})["action_id"]
    assert alice.wait(another, timeout=5)["status"] == "SUCCEEDED"
    time.sleep(0.3)
    assert set(hog.started) & set(queued) == set()
    assert {alice.status(a)["status"] for a in queued} == {"FAILED"}
    assert "display_status" not in alice.status(queued[0])
    assert [e["code"] for e in alice.log(queued[0], limit=10)["entries"]] == ["ActionStarted", "ActionFailed"]


def test_the_per_caller_limit_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("APTK_MAX_RUNNING_PER_IDENTITY", "2")
    hog = Hog()
    alice = provider_client(hog.provider, tmp_path)
    held = [alice.run({"hold": True})["action_id"] for _ in range(3)]
    wait_for(lambda: len(hog.started) == 2)
    third = next(a for a in held if a not in hog.started)
    wait_for(lambda: alice.status(third).get("display_status") == "Queued")
    time.sleep(0.2)
    assert len(hog.started) == 2
    alice.cancel(hog.started[0])
    wait_for(lambda: third in hog.started)  # its turn came: it runs now, and no longer says Queued
    assert wait_for(lambda: alice.status(third).get("display_status") == "holding")
    for action in held[1:]:
        if alice.status(action)["status"] == "ACTIVE":
            alice.cancel(action)


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_per_caller_limit_that_is_not_a_positive_number_stops_start_up(tmp_path, monkeypatch, value):
    from toolkit import ConfigurationError

    monkeypatch.setenv("APTK_MAX_RUNNING_PER_IDENTITY", value)
    with pytest.raises(ConfigurationError, match="APTK_MAX_RUNNING_PER_IDENTITY"):
        provider_client(Hog().provider, tmp_path)


def test_queued_actions_are_heartbeated_and_taken_up_when_their_process_dies(tmp_path, monkeypatch, clock):
    monkeypatch.setenv("APTK_MAX_RUNNING_PER_IDENTITY", "1")
    hog = Hog()
    alice = provider_client(hog.provider, tmp_path, clock=clock)
    runtime = get_toolkit(alice.app).runtime
    first, waiting = (alice.run({"hold": True})["action_id"] for _ in range(2))
    wait_for(lambda: alice.status(waiting).get("display_status") == "Queued")
    clock.advance(runtime.lease_seconds - 1)
    wait_for(lambda: runtime.store.get(waiting).heartbeat == clock.now)  # alive while it waits

    # The process dies (nothing runs its queue any more): after the lease, another process takes both up.
    runtime.stop()
    runtime.store.heartbeat(runtime.runner_id, clock.now, [first, waiting])
    other = provider_client(hog.provider, tmp_path, clock=clock)
    other_runtime = get_toolkit(other.app).runtime
    other_runtime.start()
    clock.advance(runtime.lease_seconds + 1)
    other_runtime.sweep()
    recovered = runtime.store.get(waiting)
    assert (recovered.status, recovered.attempts, recovered.runner) == (Status.ACTIVE, 2, other_runtime.runner_id)
    assert "ActionRecovered" in [e.code for e in runtime.store.log_page(waiting, 0, 10)]
    other_runtime.stop()


def test_the_executor_takes_turns_between_providers_and_callers():
    from toolkit.executor import ThreadExecutor

    executor = ThreadExecutor(1, max_running_per_identity=1)
    order = []
    gate = threading.Event()
    executor.submit(gate.wait, identity="a", provider="p")  # holds the only thread
    wait_for(lambda: executor.waiting() == 0)
    for provider, identity in [("p", "a"), ("p", "a"), ("p", "b"), ("q", "a"), ("q", "c"), ("p", "b")]:
        executor.submit(lambda k=(provider, identity): order.append(k), identity=identity, provider=provider)
    assert executor.waiting() == 6
    gate.set()
    wait_for(lambda: len(order) == 6)
    # Providers alternate; within a provider, callers alternate.
    assert order == [("p", "a"), ("q", "a"), ("p", "b"), ("q", "c"), ("p", "a"), ("p", "b")]
    executor.shutdown(wait=True)


# --- a retried run finds its action, whatever changed since -------------------------------------------------------


class Checked:
    """A synchronous provider whose check hook refuses once ``refuse`` is set (as an ACL CREATE would once
    the rule exists)."""

    def __init__(self, **options):
        from toolkit import BadActionRequest

        self.provider = ActionProvider(title="Checked", input_schema={"type": "object"}, synchronous=True, **options)
        self.refuse = False
        self.checks = 0

        @self.provider.check
        def check(body, ctx):
            self.checks += 1
            if self.refuse:
                raise BadActionRequest("exists already")

        self.provider.run(lambda body, ctx: {"made": body.get("n", 0)})


def test_a_retry_after_the_deadline_passed_gets_the_same_action(tmp_path, clock):
    client = provider_client(Checked().provider, tmp_path, clock=clock)
    first = client.run({"n": 1}, request_id="r1", deadline=iso(clock.now + 60))
    clock.advance(120)
    http, auth = client.app.test_client(), {"Authorization": client.session.headers["Authorization"]}
    again = http.post("/provider/run", headers=auth, json={
        "request_id": "r1", "body": {"n": 1}, "deadline": iso(clock.now - 60)})
    assert again.status_code == 200
    assert again.json["action_id"] == first["action_id"]
    assert again.json["status"] == "SUCCEEDED"
    fresh = http.post("/provider/run", headers=auth, json={
        "request_id": "r2", "body": {"n": 1}, "deadline": iso(clock.now - 60)})
    assert (fresh.status_code, fresh.json["description"]) == (400, "deadline: is in the past.")


def test_a_retry_gets_its_action_without_asking_the_check_hook(tmp_path):
    checked = Checked()
    client = provider_client(checked.provider, tmp_path)
    first = client.run({"n": 1}, request_id="r1")
    checked.refuse = True
    http, auth = client.app.test_client(), {"Authorization": client.session.headers["Authorization"]}
    again = http.post("/provider/run", headers=auth, json={"request_id": "r1", "body": {"n": 1}})
    assert (again.status_code, again.json["action_id"]) == (200, first["action_id"])
    assert checked.checks == 1
    refused = http.post("/provider/run", headers=auth, json={"request_id": "r2", "body": {"n": 1}})
    assert (refused.status_code, refused.json["description"]) == (400, "exists already")


def test_a_different_request_with_a_used_request_id_is_409_before_anything_else(tmp_path, clock):
    checked = Checked()
    client = provider_client(checked.provider, tmp_path, clock=clock)
    first = client.run({"n": 1}, request_id="r1")["action_id"]
    checked.refuse = True
    http, auth = client.app.test_client(), {"Authorization": client.session.headers["Authorization"]}
    for different in ({"request_id": "r1", "body": {"n": 2}},
                      {"request_id": "r1", "body": {"n": 1}, "label": "other"},
                      {"request_id": "r1", "body": {"n": 1}, "deadline": iso(clock.now - 1)}):
        response = http.post("/provider/run", headers=auth, json=different)
        assert (response.status_code, response.json["code"]) == (409, "ActionConflict"), different
        assert first in response.json["description"]


def test_only_the_same_caller_finds_an_action_by_request_id_and_runnable_by_still_applies(tmp_path):
    group = str(uuid.uuid4())
    checked = Checked(runnable_by=[f"urn:globus:groups:id:{group}"])
    client = provider_client(checked.provider, tmp_path)
    member = client.as_identity(groups=[group])
    first = member.run({"n": 1}, request_id="r1")["action_id"]

    someone = client.as_identity(groups=[group])  # same request_id, another caller: their own new action
    theirs = someone.run({"n": 1}, request_id="r1")
    assert theirs["action_id"] != first

    left_group = member.as_identity(member.status(first)["creator_id"].rsplit(":", 1)[-1])
    with pytest.raises(ClientError) as caught:
        left_group.run({"n": 1}, request_id="r1")
    assert caught.value.status == 403


# --- details across pause and resume; nothing written to an ended action ------------------------------------------


class Pausing:
    """Pauses on its first run with progress counters in the pause's details; on resume it records what it sees
    in ctx.details and waits until released."""

    def __init__(self):
        self.provider = ActionProvider(title="Pausing", input_schema={"type": "object"})
        self.go = threading.Event()
        self.seen = []
        self.contexts = []

        @self.provider.run
        def run(body, ctx):
            self.contexts.append(ctx)
            if not ctx.resumed:
                ctx.progress(details={"files_done": 3})
                raise ActionInactive("NeedsConsent", "Grant consent, then resume.", required_scope="urn:x",
                                     resolution_url="https://x/y", files_done=3)
            self.seen.append(dict(ctx.details))
            while not self.go.is_set():
                ctx.sleep(0.01)
            ctx.progress(details={"files_done": 5})
            self.seen.append(dict(ctx.details))
            return {"files_done": 5, "finished": True}


def test_on_resume_the_pause_reason_goes_and_the_rest_of_the_details_stay(tmp_path):
    pausing = Pausing()
    client = provider_client(pausing.provider, tmp_path)
    action = client.run({})["action_id"]
    paused = client.wait(action, until=["INACTIVE"], timeout=5)
    assert paused["details"]["code"] == "NeedsConsent"

    resumed = client.resume(action)
    assert (resumed["status"], resumed["details"]) == ("ACTIVE", {"files_done": 3})
    wait_for(lambda: pausing.seen)
    assert pausing.seen == [{"files_done": 3}]  # what the callback sees is what /status shows
    assert client.status(action)["details"] == {"files_done": 3}
    pausing.go.set()
    assert client.wait(action, timeout=5)["details"] == {"files_done": 5, "finished": True}
    assert pausing.seen[1] == {"files_done": 5}  # after progress, ctx.details is what was reported


def test_a_pause_with_nothing_but_its_reason_resumes_with_empty_details(gate, tmp_path):
    gate.go.set()
    client = provider_client(gate.provider, tmp_path)
    action = client.run({"pause": True})["action_id"]
    client.wait(action, until=["INACTIVE"], timeout=5)
    gate.go.clear()
    gate.started.clear()
    assert "code" not in client.resume(action)["details"]  # {} or, already, the callback's progress
    assert gate.started.wait(5)
    assert client.status(action)["details"] == {"done": 1}  # its own progress, not the pause's code
    gate.go.set()
    assert client.wait(action, timeout=5)["details"] == {"done": 2}


def test_the_log_refuses_writes_once_the_action_ended(tmp_path):
    from toolkit import ActionCancelled

    provider = ActionProvider(title="Logger", input_schema={"type": "object"})
    contexts = []
    release = threading.Event()

    @provider.run
    def run(body, ctx):
        contexts.append(ctx)
        ctx.log("working")
        if body.get("hold"):
            release.wait(5)
            ctx.log("still working")  # cancelled meanwhile: refused
        return {}

    client = provider_client(provider, tmp_path)
    done = client.run({})["action_id"]
    client.wait(done, timeout=5)
    with pytest.raises(ActionCancelled):
        contexts[0].log("after the end")
    assert [e["description"] for e in client.log(done, limit=10)["entries"]] == [
        "Action started", "working", "Action SUCCEEDED"]

    held = client.run({"hold": True})["action_id"]
    wait_for(lambda: len(client.log(held, limit=10)["entries"]) == 2)  # "working" is written: cancel now
    client.cancel(held)
    release.set()
    time.sleep(0.3)
    entries = [e["code"] for e in client.log(held, limit=10)["entries"]]
    assert entries == ["ActionStarted", "Log", "ActionFailed"]
    with pytest.raises(ActionCancelled):
        contexts[1].log("later")
    assert contexts[1].cancelled


def test_log_and_write_commits_log_lines_with_the_providers_rows_while_the_run_owns_its_action(tmp_path):
    import sqlalchemy as sa

    from toolkit import ActionCancelled
    from toolkit.store import create_tables

    metadata = sa.MetaData()
    notes = sa.Table("test_log_and_write_notes", metadata, sa.Column("note", sa.String(16), primary_key=True))
    provider = ActionProvider(title="Writer", input_schema={"type": "object"})
    contexts = []
    release = threading.Event()

    def note(ctx, text):
        return lambda cursor: cursor.execute(f"INSERT INTO test_log_and_write_notes (note) VALUES "
                                             f"({ctx.store.placeholder})", (text,))

    @provider.run
    def run(body, ctx):
        contexts.append(ctx)
        create_tables(ctx.store.engine, metadata)
        ctx.log_and_write([(ctx.clock(), "one", {"n": 1}), (ctx.clock(), "two", None)], then=note(ctx, "first"))
        release.wait(5)
        ctx.log_and_write([(ctx.clock(), "three", None)], then=note(ctx, "late"))  # cancelled meanwhile
        return {}

    client = provider_client(provider, tmp_path)
    action = client.run({})["action_id"]
    wait_for(lambda: contexts)
    wait_for(lambda: len(client.log(action, limit=10)["entries"]) == 3)
    client.cancel(action)
    release.set()
    time.sleep(0.3)
    entries = client.log(action, limit=10)["entries"]
    assert [(e["description"], e.get("details")) for e in entries][:3] == [
        ("Action started", None), ("one", {"n": 1}), ("two", None)]
    assert "three" not in [e["description"] for e in entries]
    with contexts[0].store.engine.connect() as conn:
        assert list(conn.execute(sa.select(notes.c.note)).scalars()) == ["first"]
    with pytest.raises(ActionCancelled):
        contexts[0].log_and_write([(0.0, "after", None)])


def test_a_retry_the_schema_would_now_refuse_still_gets_its_action(tmp_path, monkeypatch):
    from toolkit import BadActionRequest

    quick = Quick()  # no check hook: a retry is found when validation refuses it, or at the insert
    client = provider_client(quick.provider, tmp_path)
    first = client.run({"v": 1}, request_id="r1")["action_id"]

    def stricter(body):  # the provider was upgraded with a schema that refuses what it took before
        raise BadActionRequest("body.v: is no longer accepted.")

    monkeypatch.setattr(quick.provider, "validate_body", stricter)
    http, auth = client.app.test_client(), {"Authorization": client.session.headers["Authorization"]}
    again = http.post("/provider/run", headers=auth, json={"request_id": "r1", "body": {"v": 1}})
    assert (again.status_code, again.json["action_id"]) == (200, first)
    other = http.post("/provider/run", headers=auth, json={"request_id": "r1", "body": {"v": 2}})
    assert (other.status_code, other.json["code"]) == (409, "ActionConflict")
    new = http.post("/provider/run", headers=auth, json={"request_id": "r2", "body": {"v": 1}})
    assert (new.status_code, new.json["description"]) == (400, "body.v: is no longer accepted.")


def test_answer_within_lets_run_answer_a_quick_callback_finished(tmp_path):
    from toolkit import ActionFailed

    provider = ActionProvider(title="Quick", input_schema={"type": "object"}, answer_within=2.0)

    @provider.run
    def run(body, ctx):
        time.sleep(body.get("sleep", 0))
        if body.get("fail"):
            raise ActionFailed("Nope", "failed quickly")
        return {"done": True}

    client = provider_client(provider, tmp_path)
    assert client.run({})["status"] == "SUCCEEDED"
    failed = client.run({"fail": True})
    assert failed["status"] == "FAILED" and failed["details"]["code"] == "Nope"
    started = time.monotonic()
    slow = client.run({"sleep": 3})
    assert slow["status"] == "ACTIVE" and 2.0 <= time.monotonic() - started < 2.9
    assert client.introspect()["synchronous"] is False
    with pytest.raises(Exception, match="answer_within"):
        ActionProvider(title="Bad", input_schema={"type": "object"}, answer_within=-1)


def test_a_stopped_runtime_is_not_started_again_by_a_late_request(tmp_path):
    provider = ActionProvider(title="Late", input_schema={"type": "object"})
    provider.run(lambda body, ctx: {})
    client = provider_client(provider, tmp_path)
    action = client.run({}, wait=True)
    runtime = get_toolkit(client.app).runtime
    assert runtime._thread is not None and runtime._thread.is_alive()
    client.close()  # stops the runtime, as a server's shutdown does
    client.status(action["action_id"])  # a request still answered after the stop
    assert not runtime._thread.is_alive()  # the actions handed over stay handed over


def test_a_stop_that_comes_while_the_runtime_starts_its_threads_stops_it_cleanly(tmp_path, monkeypatch):
    """A worker told to quit while it boots (gunicorn's SIGQUIT during start-up) stops a runtime whose threads are
    not all started yet: that is not an error, and no thread keeps running afterwards."""
    from toolkit.testing import close_app, provider_app

    provider = ActionProvider(title="Booting", input_schema={"type": "object"})
    provider.run(lambda body, ctx: {})
    ticks = []

    @provider.background
    def tick(ctx):
        while not ctx.stopping.wait(0.01):
            ticks.append(1)

    app, _ = provider_app(provider, tmp_path)
    runtime = get_toolkit(app).runtime
    real_start = threading.Thread.start

    def start(thread):
        if thread.name.startswith("aptk-") and thread.name != "aptk-maintenance":
            runtime.stop()  # the signal arrives between the maintenance thread and the background ones
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        runtime.start()  # raised "cannot join thread before it is started" from inside stop()
    finally:
        monkeypatch.undo()
    time.sleep(0.1)
    assert not runtime._thread.is_alive()
    assert all(not thread.is_alive() for thread in runtime._background)
    close_app(app)


def test_action_ids_are_uuid7_in_the_order_actions_were_created(tmp_path):
    """Ids sort by creation (the indexes keyed on them grow at one end) and say no more than the start time."""
    gate = Gate(synchronous=True)
    gate.go.set()
    client = provider_client(gate.provider, tmp_path)
    ids = []
    for _ in range(5):
        ids.append(client.run({})["action_id"])
        time.sleep(0.002)  # a millisecond apart at least: within one, the order is random
    assert ids == sorted(ids)
    parsed = [uuid.UUID(hex=i) for i in ids]
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    started = client.status(ids[0])["start_time"]
    millis = int(ids[0][:12], 16)
    assert abs(dt.datetime.fromisoformat(started).timestamp() * 1000 - millis) < 1000
    assert len(set(i[13:] for i in ids)) == 5  # the random part differs


def test_a_forked_process_draws_other_random_bits_for_its_ids():
    from toolkit.lifecycle import new_action_id

    new_action_id()  # this thread now holds random bytes a child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_action_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child[13:] != new_action_id()[13:]

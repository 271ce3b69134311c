"""The finish hook: it sees every way an action ends, and what it returns is what /status shows from then on."""

import datetime as dt
import threading
import time
import uuid

from toolkit import Action, ActionFailed, ActionInactive, ActionProvider, HookContext, Status, get_toolkit
from toolkit.testing import provider_client

CALLER = str(uuid.uuid4())


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


class Ending:
    """A provider whose run reports progress and waits, and whose finish hook marks the details it is shown."""

    def __init__(self, *, answer=lambda ending: {**ending.details, "ended": ending.status.value}, **options):
        self.provider = ActionProvider(title="Ending", input_schema={"type": "object"}, **options)
        self.seen: list[tuple[Status, dict, float | None, str, type]] = []
        self.running = threading.Event()

        @self.provider.run
        def run(body, ctx):
            ctx.progress(details={"done": 1})
            if body.get("pause") and not ctx.resumed:
                raise ActionInactive("Wait", "Resume me.")
            if body.get("fail"):
                raise ActionFailed("Broken", "It broke.", done=1)
            self.running.set()
            while body.get("wait") and not ctx.cancelled:
                time.sleep(0.01)
            return {"done": 2}

        @self.provider.finish
        def finish(ending: Action, ctx: HookContext):
            self.seen.append((ending.status, dict(ending.details), ending.completion_time, ctx.identity.id,
                              type(ctx)))
            return answer(ending)


def test_the_hook_gives_the_details_of_an_action_whose_callback_returned(tmp_path, clock):
    ending = Ending()
    client = provider_client(ending.provider, tmp_path, identity=CALLER, clock=clock)
    final = client.run({}, wait=True, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"done": 2, "ended": "SUCCEEDED"})
    status, details, completed, caller, context = ending.seen[0]
    assert (status, details, context) == (Status.SUCCEEDED, {"done": 2}, HookContext)
    assert caller == f"urn:globus:auth:identity:{CALLER}"  # no caller: the creator
    assert completed == clock.now


def test_the_hook_gives_the_details_of_an_action_whose_callback_failed(tmp_path):
    ending = Ending()
    client = provider_client(ending.provider, tmp_path)
    final = client.run({"fail": True}, wait=True, timeout=5)
    assert final["status"] == "FAILED"
    assert final["details"] == {"code": "Broken", "description": "It broke.", "done": 1, "ended": "FAILED"}


def test_the_hook_gives_the_details_of_a_cancelled_action_in_the_cancel_answer(tmp_path):
    ending = Ending()
    client = provider_client(ending.provider, tmp_path, identity=CALLER)
    action = client.run({"wait": True})["action_id"]
    assert ending.running.wait(5)
    cancelled = client.cancel(action)
    assert cancelled["status"] == "FAILED"
    assert cancelled["details"]["ended"] == "FAILED"
    assert cancelled["details"]["code"] == "ActionCancelled"
    assert client.status(action)["details"] == cancelled["details"]
    assert [s[0] for s in ending.seen] == [Status.FAILED]  # the run's late return changes nothing
    assert ending.seen[0][3] == f"urn:globus:auth:identity:{CALLER}"


def test_the_hook_gives_the_details_of_an_action_past_its_deadline(tmp_path, clock):
    ending = Ending()
    client = provider_client(ending.provider, tmp_path, clock=clock)
    action = client.run({"wait": True}, deadline=iso(clock.now + 60))["action_id"]
    assert ending.running.wait(5)
    clock.advance(61)
    get_toolkit(client.app).runtime.sweep()
    status = client.status(action)
    assert (status["status"], status["details"]["code"]) == ("FAILED", "DeadlineExceeded")
    assert (status["details"]["done"], status["details"]["ended"]) == (1, "FAILED")
    assert ending.seen[0][2] == clock.now


def test_the_hook_gives_the_details_of_an_action_whose_process_was_lost(tmp_path, clock):
    ending = Ending()
    client = provider_client(ending.provider, tmp_path, clock=clock)
    runtime = get_toolkit(client.app).runtime
    runtime.start()
    creator = client.run({}, wait=True, timeout=5)["creator_id"]
    lost = Action(
        action_id=uuid.uuid4().hex, provider=ending.provider.name, request_id="lost", request_hash="h",
        creator_id=creator, status=Status.ACTIVE, body={}, details={"done": 1}, start_time=clock.now - 100,
        attempts=1, runner="gone:1:dead", heartbeat=clock.now - 100,
    )
    runtime.store.create(lost, log=(clock.now - 100, "ActionStarted", "Action started"), now=clock.now)
    runtime.sweep()
    status = client.status(lost.action_id)
    assert (status["status"], status["details"]["code"]) == ("FAILED", "WorkerLost")
    assert (status["details"]["done"], status["details"]["ended"]) == (1, "FAILED")  # what it reported stays


def test_a_hook_returning_none_keeps_the_details_and_is_not_called_for_a_pause(tmp_path):
    ending = Ending(answer=lambda ending: None)
    client = provider_client(ending.provider, tmp_path)
    paused = client.wait(client.run({"pause": True})["action_id"], until=["INACTIVE"], timeout=5)
    assert paused["details"]["code"] == "Wait"
    assert ending.seen == []
    final = client.run({}, wait=True, timeout=5)
    assert final["details"] == {"done": 2}
    assert len(ending.seen) == 1


def test_a_failing_hook_is_logged_and_the_toolkit_details_stay(tmp_path, caplog):
    def broken(ending):
        raise RuntimeError("hook bug")

    ending = Ending(answer=broken)
    client = provider_client(ending.provider, tmp_path)
    final = client.run({}, wait=True, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"done": 2})
    assert "finish hook of ending failed" in caplog.text


def test_details_that_are_not_json_are_refused_and_the_toolkit_details_stay(tmp_path, caplog):
    ending = Ending(answer=lambda ending: {"when": object()})
    client = provider_client(ending.provider, tmp_path)
    final = client.run({}, wait=True, timeout=5)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"done": 2})
    assert "finish hook of ending failed" in caplog.text

"""RunContext.origin: the root URL of the request that started (or resumed) a run; None after a crash."""

import uuid

from toolkit import Action, ActionInactive, ActionProvider, Status, get_toolkit
from toolkit.testing import provider_client


def test_origin_is_the_root_url_of_the_starting_request_and_none_after_a_crash(tmp_path):
    seen = []
    provider = ActionProvider(title="Origins", input_schema={"type": "object"}, recovery="rerun")

    @provider.run
    def run(body, ctx):
        seen.append(ctx.origin)
        if body.get("pause") and not ctx.resumed:
            raise ActionInactive("Wait", "resume me")
        return {}

    with provider_client(provider, tmp_path) as client:
        client.run({}, wait=True)
        paused = client.run({"pause": True})["action_id"]
        client.wait(paused, until=["INACTIVE"])
        client.resume(paused)
        client.wait(paused)
        assert seen == ["http://testserver", "http://testserver", "http://testserver"]
        runtime = get_toolkit(client.app).runtime
        orphan = Action(action_id=uuid.uuid4().hex, provider=provider.name, request_id="r", request_hash="h",
                        creator_id=client.status(paused)["creator_id"], status=Status.ACTIVE, body={}, start_time=1.0,
                        attempts=1, runner="gone:1:dead", heartbeat=1.0)
        runtime.store.create(orphan, log=(1.0, "ActionStarted", "Action started"), now=1.0)
        runtime.sweep()
        client.wait(orphan.action_id)
        assert seen[-1] is None

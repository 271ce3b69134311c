"""Flow runs under the real `aptk serve`: killed with -9 and restarted, and calling a provider on another server."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import support
from tests.e2e.conftest import start_server  # noqa: F401 - a fixture
from tests.e2e.support import Api, Server
from tests.oidc.fixture import CALLER, HELLO_SCOPE, JWT_RESOURCE

pytestmark = pytest.mark.slow

FLOWS_SCOPE = "urn:aptk:scope:flows"
ALICE = "6a3b0c84-0000-4000-8000-000000000001"


def flows_dir(base: Path, flows: dict[str, dict[str, Any]]) -> Path:
    directory = base / "flows"
    directory.mkdir(exist_ok=True)
    for flow_id, definition in flows.items():
        (directory / f"{flow_id}.json").write_text(json.dumps({
            "title": f"Flow {flow_id}", "definition": definition, "runnable_by": ["all_authenticated_users"]}))
    return directory


def hello(url: str, sleep: float, next_state: str | None, result: str) -> dict[str, Any]:
    state: dict[str, Any] = {"Type": "Action", "ActionUrl": url, "ResultPath": f"$.{result}",
                             "Parameters": {"echo_string": result, "sleep_time": sleep}}
    state.update({"Next": next_state} if next_state else {"End": True})
    return state


def states_of(api: Api, action_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/{action_id}/status")
    assert response.status_code == 200, response.text
    return response.json()["details"].get("states", [])


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


def test_a_run_killed_during_a_child_and_between_states_finishes_with_one_child_per_state(
        tmp_path, monkeypatch):
    """Also: the flow's file changes while the server is down; the run goes on with the definition it began with."""
    port = support.free_port()
    monkeypatch.setattr(support, "free_port", lambda: port)  # the same URL after each restart
    origin = f"http://127.0.0.1:{port}"
    definition = {"StartAt": "First", "States": {
        "First": hello(f"{origin}/hello", 3, "Note", "first"),
        "Note": {"Type": "Pass", "Result": "noted", "ResultPath": "$.note", "Next": "Pause"},
        "Pause": {"Type": "Wait", "Seconds": 4, "Next": "Second"},
        "Second": hello(f"{origin}/hello", 0, None, "second"),
    }}
    env = {"APTK_FLOWS_DIR": str(flows_dir(tmp_path, {"durable": definition})), "APTK_PUBLIC_URL": origin}
    server = Server(tmp_path / "data", tmp_path, workers=2, env=env)
    try:
        server.start()
        token = server.token(ALICE, scopes=[FLOWS_SCOPE, support.HELLO_SCOPE])
        flow = Api(f"{origin}/flows/durable", token)
        response = flow.run({})
        assert response.status_code == 202, response.text
        run_id = response.json()["action_id"]

        # kill -9 while the first child runs
        first = wait_until(lambda: (s := states_of(flow, run_id)) and s[0].get("child_action_id"),
                           what="the first child started")
        server.kill()
        server.start()
        # kill -9 between states: during the Wait, after the first child ended
        wait_until(lambda: [s["name"] for s in states_of(flow, run_id)][-1:] == ["Pause"], timeout=60,
                   what="the Wait state")
        server.kill()
        changed = {"StartAt": "First", "States": {  # "Second" is gone: the Wait now leads to "Other"
            **{k: v for k, v in definition["States"].items() if k != "Second"},
            "Pause": {"Type": "Wait", "Seconds": 4, "Next": "Other"},
            "Other": {"Type": "Pass", "Result": "other", "ResultPath": "$.other", "End": True}}}
        flows_dir(tmp_path, {"durable": changed})
        server.start()

        done = flow.wait_for(run_id, ["SUCCEEDED", "FAILED"], timeout=60)
        assert done["status"] == "SUCCEEDED", done
        output = done["details"]["output"]
        assert output["first"]["action_id"] == first
        assert output["first"]["details"] == {"hello": "first"} and output["second"]["details"] == {"hello": "second"}
        assert [s["name"] for s in done["details"]["states"]] == ["First", "Note", "Pause", "Second"]
        assert done["details"]["flow_version"] == 1
        assert Api(f"{origin}/flows", token).get("/durable").json()["flow_version"] == 2
        children = Api(f"{origin}/hello", token).get("/actions", params={
            "status": "ACTIVE,INACTIVE,SUCCEEDED,FAILED"}).json()
        children = children["actions"] if isinstance(children, dict) else children
        assert sorted(c["details"].get("hello") for c in children) == ["first", "second"]  # one child per state
    finally:
        server.stop()


def test_a_remote_provider_on_another_server_is_called_with_client_credentials(
        tmp_path, oidc_server, start_server):  # noqa: F811
    remote = start_server(workers=1, env={
        "APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": oidc_server.issuer, "APTK_AUTH_AUDIENCE": JWT_RESOURCE})
    clients = tmp_path / "call-clients.json"
    clients.write_text(json.dumps([{
        "url": f"{remote.url}/", "issuer": oidc_server.issuer, "client_id": oidc_server.client_id(CALLER),
        "client_secret": "${FLOW_CALLER_SECRET}", "scope": HELLO_SCOPE, "resource": JWT_RESOURCE}]))
    definition = {"StartAt": "Far", "States": {"Far": hello(f"{remote.url}/hello", 2, None, "far")}}
    local = start_server(workers=1, env={
        "APTK_FLOWS_DIR": str(flows_dir(tmp_path, {"remote": definition})), "APTK_CALL_CLIENTS": str(clients),
        "APTK_CALL_POLL_MAX_SECONDS": "1", "FLOW_CALLER_SECRET": oidc_server.client_secret(CALLER)})
    token = local.token(ALICE, scopes=[FLOWS_SCOPE])
    flow = Api(f"{local.url}/flows/remote", token)
    response = flow.run({}, request_id=str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    done = flow.wait_for(response.json()["action_id"], ["SUCCEEDED", "FAILED"], timeout=60)
    assert done["status"] == "SUCCEEDED", done
    child = done["details"]["output"]["far"]
    assert child["details"] == {"hello": "far"}
    assert child["creator_id"] == f"urn:globus:auth:identity:{oidc_server.client_id(CALLER)}"
    # released on the remote server once it succeeded
    remote_api = Api(f"{remote.url}/hello", oidc_server.token(CALLER, resource=JWT_RESOURCE, scope=HELLO_SCOPE))
    assert remote_api.get(f"/{child['action_id']}/status").status_code == 404
    secret = oidc_server.client_secret(CALLER)
    for path in (local.stderr_path, local.stdout_path):
        assert path is not None and secret not in path.read_text(errors="replace")
    log = flow.get(f"/{done['action_id']}/log", params={"limit": 100}).json()
    assert secret not in json.dumps(log) and secret not in json.dumps(done)

"""A run walks the definition it started with: updates of its flow (API, files of APTK_FLOWS_DIR) while it waits
change only the runs started after them; the run and the flow document say which version that is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.flows import provider as flows_provider
from providers.hello import provider as hello_provider
from tests.providers.conftest import wait_for
from toolkit.server import create_app
from toolkit.testing import TokenAuthority, close_app

from .conftest import OTHER, Site, deployment, make_site


def napping(then: str, result: str) -> dict[str, Any]:
    """A flow that waits 2 s at Nap, then goes to ``then``, a Pass state storing ``result`` at $.which."""
    return {"StartAt": "Nap", "States": {
        "Nap": {"Type": "Wait", "Seconds": 2, "Next": then},
        then: {"Type": "Pass", "Result": result, "ResultPath": "$.which", "End": True}}}


def waiting_at_nap(client: Any, action_id: str) -> None:
    wait_for(lambda: client.status(action_id).get("display_status") == "Nap", timeout=10)


def test_a_run_waiting_at_a_wait_state_finishes_on_the_definition_it_started_with(site):
    owner = site.session()
    deployed = owner.deploy(deployment(id="v", definition=napping("Old", "old"), input_schema={"type": "object"}))
    assert (deployed["version"], deployed["flow_version"]) == (1, 1)
    runner = site.flow("v", OTHER)
    first = runner.run({})
    waiting_at_nap(runner, first["action_id"])
    assert runner.status(first["action_id"])["details"]["flow_version"] == 1
    changed = owner.call("PUT", "/v", json={"definition": napping("New", "new")})  # "Old" is gone
    assert changed.status_code == 200 and changed.json()["flow_version"] == 2
    assert owner.call("GET", "/v").json()["flow_version"] == 2
    second = runner.run({})
    done = runner.wait(first["action_id"], timeout=30, max_interval=0.1)
    assert done["status"] == "SUCCEEDED", done
    assert done["details"]["output"] == {"which": "old"}
    assert [s["name"] for s in done["details"]["states"]] == ["Nap", "Old"]
    assert done["details"]["flow_version"] == 1
    later = runner.wait(second["action_id"], timeout=30, max_interval=0.1)
    assert later["status"] == "SUCCEEDED", later
    assert later["details"]["output"] == {"which": "new"}
    assert [s["name"] for s in later["details"]["states"]] == ["Nap", "New"]
    assert later["details"]["flow_version"] == 2


def test_a_run_keeps_its_definition_when_the_file_of_its_flow_changes(tmp_path):
    directory = tmp_path / "flows"
    directory.mkdir()
    path = directory / "v.json"

    def write(definition: dict[str, Any]) -> None:
        path.write_text(json.dumps({"title": "V", "definition": definition, "visible_to": ["public"],
                                    "runnable_by": ["all_authenticated_users"]}))

    write(napping("Old", "old"))
    site = make_site(tmp_path, APTK_FLOWS_DIR=str(directory), APTK_FLOWS_DIR_INTERVAL=0)
    try:
        runner = site.flow("v", OTHER)
        first = runner.run({})
        waiting_at_nap(runner, first["action_id"])
        write(napping("New", "new"))
        assert wait_for(lambda: site.session().call("GET", "/v").json()["flow_version"] == 2, timeout=10)
        second = runner.run({})
        done = runner.wait(first["action_id"], timeout=30, max_interval=0.1)
        assert (done["status"], done["details"]["output"], done["details"]["flow_version"]) == (
            "SUCCEEDED", {"which": "old"}, 1), done
        later = runner.wait(second["action_id"], timeout=30, max_interval=0.1)
        assert (later["status"], later["details"]["output"], later["details"]["flow_version"]) == (
            "SUCCEEDED", {"which": "new"}, 2), later
    finally:
        close_app(site.app)


@pytest.fixture
def with_hello(tmp_path):
    """The flows provider beside hello, which it calls in-process."""
    authority = TokenAuthority()
    (tmp_path / "data").mkdir()
    app = create_app({"APTK_DATA_DIR": str(tmp_path / "data"), "APTK_PUBLIC_URL": "http://testserver"},
                     providers=[("/flows", flows_provider), ("/hello", hello_provider)], verifier=authority.verifier)
    yield Site(app, authority, tmp_path / "data")
    close_app(app)


def asking(then: str, result: str) -> dict[str, Any]:
    """A flow whose hello child waits to be resumed, then goes to ``then``."""
    return {"StartAt": "Ask", "States": {
        "Ask": {"Type": "Action", "ActionUrl": "http://testserver/hello",
                "Parameters": {"echo_string": "x", "require_resume": True}, "ResultPath": "$.hello", "Next": then},
        then: {"Type": "Pass", "Result": result, "ResultPath": "$.which", "End": True}}}


def test_a_run_paused_by_an_inactive_child_resumes_on_the_definition_it_started_with(with_hello):
    site = with_hello
    owner = site.session()
    owner.deploy(deployment(id="p", definition=asking("After", "old"), input_schema={"type": "object"}))
    scopes = [flows_provider.globus_auth_scope, hello_provider.globus_auth_scope]
    runner = site.flow("p", OTHER, scopes=scopes)
    first = runner.run({})
    paused = wait_for(lambda: (s := runner.status(first["action_id"]))["status"] == "INACTIVE" and s)
    assert paused["details"]["flow_version"] == 1
    assert owner.call("PUT", "/p", json={"definition": asking("Renamed", "new")}).status_code == 200
    runner.resume(first["action_id"])
    done = runner.wait(first["action_id"], timeout=30, max_interval=0.1)
    assert done["status"] == "SUCCEEDED", done
    assert ([s["name"] for s in done["details"]["states"]], done["details"]["output"]["which"]) == (
        ["Ask", "After"], "old")
    second = runner.run({})
    wait_for(lambda: runner.status(second["action_id"])["status"] == "INACTIVE")
    runner.resume(second["action_id"])
    later = runner.wait(second["action_id"], timeout=30, max_interval=0.1)
    assert ([s["name"] for s in later["details"]["states"]], later["details"]["output"]["which"],
            later["details"]["flow_version"]) == (["Ask", "Renamed"], "new", 2)

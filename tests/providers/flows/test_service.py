"""The flows API: deploying, listing, showing, updating and deleting flows, with precise 400s and authorization
from outside; each deployed flow described as a provider at /flows/<id>/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from providers.flows import deployments

from .conftest import ADMIN, GROUP, NAME_SCHEMA, OTHER, OWNER, PASS_SUCCEED, SCOPE, deployment, urn


def test_deploy_answers_201_with_the_flow_document_and_the_flow_is_a_provider(site):
    owner = site.session()
    flow = owner.deploy(deployment(id="greeter", subtitle="Says hello", keywords=["demo"]))
    assert flow["id"] == "greeter" and flow["owner"] == urn(OWNER)
    assert (flow["title"], flow["subtitle"], flow["keywords"]) == ("Greeter", "Says hello", ["demo"])
    assert flow["definition"] == PASS_SUCCEED and flow["input_schema"] == NAME_SCHEMA
    assert flow["url"].endswith("://testserver/flows/greeter/") and flow["version"] == 1
    assert flow["globus_auth_scope"] == SCOPE
    assert "null" not in json.dumps(flow)
    anonymous = site.app.test_client().get("/flows/greeter/")  # visible_to public: no token needed
    assert anonymous.status_code == 200 and anonymous.json["visible_to"] == ["public"]
    description = site.flow("greeter", OTHER).introspect()
    assert description["title"] == "Greeter" and description["subtitle"] == "Says hello"
    assert description["input_schema"] == NAME_SCHEMA
    assert description["synchronous"] is False and description["types"] == ["Action"]
    assert description["globus_auth_scope"] == SCOPE
    assert "all_authenticated_users" in description["runnable_by"] and urn(OWNER) in description["runnable_by"]
    assert description["administered_by"] == [urn(OWNER)]


def test_deploy_says_where_the_flow_is_served(site):
    answer = site.session().call("POST", json=deployment(id="here"))
    assert answer.status_code == 201 and answer.headers["Location"].endswith("/flows/here/")


def test_a_list_page_holds_20_flows_unless_asked_otherwise(site):
    owner = site.session()
    for i in range(21):
        owner.deploy(deployment(id=f"f{i:02d}"))
    page = owner.call("GET").json()
    assert (len(page["flows"]), page["limit"], page["has_next_page"], page["marker"]) == (20, 20, True, "f19")


def test_a_deployment_without_id_gets_one(site):
    flow = site.session().deploy(deployment())
    assert deployments.FLOW_ID.fullmatch(flow["id"]) and len(flow["id"]) == 36
    assert site.session().call("GET", f"/{flow['id']}").json()["id"] == flow["id"]


@pytest.mark.parametrize("document, message", [
    ({"definition": PASS_SUCCEED}, "title: is required."),
    ({"title": "", "definition": PASS_SUCCEED}, "title: must be a non-empty string."),
    ({"title": "T"}, "definition: is required."),
    ({"title": "T", "definition": [1]}, "definition: must be a JSON object (a flow definition)."),
    ({"title": "T", "definition": PASS_SUCCEED, "input_schema": {"type": "objekt"}},
     "input_schema.type: is not a valid JSON Schema: 'objekt' is not valid under any of the given schemas"),
    ({"title": "T", "definition": PASS_SUCCEED, "input_schema": []}, "input_schema: must be a JSON Schema object."),
    ({"title": "T", "definition": PASS_SUCCEED, "visible_to": "public"},
     "visible_to: must be a list of principal URNs."),
    ({"title": "T", "definition": PASS_SUCCEED, "runnable_by": ["public"]},
     "runnable_by[0]: "),
    ({"title": "T", "definition": PASS_SUCCEED, "flow_owner": "me"},
     "Unknown field 'flow_owner'; a flow deployment takes "),
    ({"id": "no/slash", "title": "T", "definition": PASS_SUCCEED}, "id: 'no/slash' is not a flow id"),
    ({"title": "T", "definition": PASS_SUCCEED, "keywords": [""]},
     "keywords: must be a list of strings of 1 to 64 characters."),
])
def test_a_bad_deployment_is_a_400_saying_what_is_wrong(site, document, message):
    answer = site.session().call("POST", json=document)
    assert answer.status_code == 400
    assert answer.json()["code"] == "BadActionRequest"
    assert answer.json()["description"].startswith(message), answer.json()["description"]
    assert site.session().call("GET").json()["flows"] == []  # nothing half-written


def test_an_invalid_definition_is_a_400_listing_every_error_of_the_language(site):
    broken = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nowhere"},
                                         "B": {"Type": "Bogus", "End": True},
                                         "C": {"Type": "Action", "ActionUrl": "ftp://x", "End": True}}}
    from providers.flows.language import DefinitionError, validate

    with pytest.raises(DefinitionError) as caught:
        validate(broken, input_schema={"type": "object"})
    answer = site.session().call("POST", json=deployment(definition=broken))
    assert answer.status_code == 400
    body = answer.json()
    assert body["errors"] == caught.value.errors and len(body["errors"]) >= 3
    assert body["description"] == "definition: " + "; ".join(caught.value.errors)
    assert 'States.A.Next: "Nowhere" is not a state' in body["errors"]


def test_body_errors_and_limits(tmp_path):
    from .conftest import make_site
    from toolkit.testing import close_app

    site = make_site(tmp_path, APTK_MAX_BODY_BYTES=2000)
    try:
        api = site.session()
        too_big = api.call("POST", json=deployment(description="x" * 3000))
        assert too_big.status_code == 413 and too_big.json()["code"] == "RequestTooLarge"
        empty = api.call("POST", data=b"", headers={"Content-Type": "application/json"})
        assert (empty.status_code, empty.json()["description"]) == (
            400, "The request has no body; send a flow deployment as JSON.")
        bad = api.call("POST", data=b"{nope", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["description"].startswith("The request body is not valid JSON")
        not_object = api.call("POST", json=[1])
        assert not_object.json()["description"] == "The request body must be a JSON object (a flow deployment)."
    finally:
        close_app(site.app)


def test_the_api_needs_a_token_with_the_scope(site):
    from .conftest import Api

    anonymous = Api(site.app, "")
    anonymous.http.headers.pop("Authorization")
    assert anonymous.call("GET").status_code == 401
    assert anonymous.call("GET").headers["WWW-Authenticate"].startswith("Bearer")
    wrong_scope = site.session(scopes=["urn:aptk:scope:hello"])
    answer = wrong_scope.call("POST", json=deployment())
    assert answer.status_code == 403 and "scope" in answer.json()["description"]


def test_id_conflict_is_a_409(site):
    site.session().deploy(deployment(id="one"))
    answer = site.session(OTHER).call("POST", json=deployment(id="one"))
    assert (answer.status_code, answer.json()["description"]) == (409, "A flow with id 'one' is already deployed.")


def test_who_sees_what(site):
    owner = site.session()
    owner.deploy(deployment(id="open"))
    owner.deploy(deployment(id="private", visible_to=[], runnable_by=[]))
    owner.deploy(deployment(id="group", visible_to=[f"urn:globus:groups:id:{GROUP}"], runnable_by=[]))
    owner.deploy(deployment(id="runners", visible_to=[], runnable_by=[urn(OTHER)]))
    owner.deploy(deployment(id="admin", visible_to=[], runnable_by=[], administered_by=[urn(ADMIN)]))

    def listed(api):
        return [f["id"] for f in api.call("GET").json()["flows"]]

    assert listed(owner) == ["admin", "group", "open", "private", "runners"]
    assert listed(site.session(OTHER)) == ["open", "runners"]
    assert listed(site.session(OTHER, groups=[GROUP])) == ["group", "open", "runners"]
    assert listed(site.session(ADMIN)) == ["admin", "open"]
    hidden = site.session(OTHER).call("GET", "/private")
    assert (hidden.status_code, hidden.json()) == (
        404, {"code": "FlowNotFound", "description": "No flow 'private' (or you may not see it)."})
    assert site.session(ADMIN).call("GET", "/admin").status_code == 200
    # the flow as a provider: visibility and runnable_by from outside
    from toolkit.client import ClientError

    with pytest.raises(ClientError) as caught:
        site.flow("private", OTHER).introspect()
    assert caught.value.status == 403
    with pytest.raises(ClientError) as caught:
        site.flow("group", OTHER, groups=[GROUP]).run({"name": "x"})
    assert (caught.value.status, caught.value.description) == (403, "You are not in this provider's runnable_by list.")
    with pytest.raises(ClientError) as caught:
        site.flow("nothing-here", OWNER).introspect()
    assert (caught.value.status, caught.value.code) == (404, "ProviderNotFound")


def test_list_pages_with_a_marker(site):
    owner = site.session()
    for i in range(5):
        owner.deploy(deployment(id=f"f{i}"))
    owner.deploy(deployment(id="hidden", visible_to=[], runnable_by=[]))
    other = site.session(OTHER)
    first = other.call("GET", params={"limit": 2}).json()
    assert [f["id"] for f in first["flows"]] == ["f0", "f1"] and first["has_next_page"] is True
    second = other.call("GET", params={"limit": 2, "marker": first["marker"]}).json()
    third = other.call("GET", params={"limit": 2, "marker": second["marker"]}).json()
    assert [f["id"] for f in second["flows"] + third["flows"]] == ["f2", "f3", "f4"]
    assert third["has_next_page"] is False and "marker" not in third
    for params, message in [({"limit": 0}, "limit: must be an integer between 1 and 100."),
                            ({"limit": "x"}, "limit: must be an integer between 1 and 100."),
                            ({"marker": "a/b"}, "marker: 'a/b' is not a marker this API returned."),
                            ({"filter": "x"}, "Unknown query parameter 'filter'; this route takes limit, marker.")]:
        answer = other.call("GET", params=params)
        assert (answer.status_code, answer.json()["description"]) == (400, message)


def test_update_by_owner_and_administrators_only(site):
    owner = site.session()
    owner.deploy(deployment(id="f", administered_by=[urn(ADMIN)]))
    refused = site.session(OTHER).call("PUT", "/f", json={"title": "Mine"})
    assert (refused.status_code, refused.json()["description"]) == (
        403, "Only the owner and administered_by of flow 'f' may change it.")
    changed = site.session(ADMIN).call("PUT", "/f", json={"title": "Renamed", "input_schema": {"type": "object"}})
    assert changed.status_code == 200
    assert (changed.json()["title"], changed.json()["version"]) == ("Renamed", 2)
    assert changed.json()["definition"] == PASS_SUCCEED  # what was not given is kept
    assert site.flow("f", OTHER).introspect()["title"] == "Renamed"  # the provider follows at once
    assert site.flow("f", OTHER).introspect()["input_schema"] == {"type": "object"}
    bad = owner.call("PUT", "/f", json={"definition": {"StartAt": "X", "States": {}}})
    assert bad.status_code == 400 and bad.json()["description"].startswith("definition: ")
    assert owner.call("GET", "/f").json()["version"] == 2  # unchanged
    renamed = owner.call("PUT", "/f", json={"id": "g"})
    assert (renamed.status_code, renamed.json()["description"]) == (400, "id: a flow's id cannot change (this is 'f').")
    assert owner.call("PUT", "/missing", json={"title": "x"}).status_code == 404


def test_delete_by_owner_only(site):
    owner = site.session()
    owner.deploy(deployment(id="f"))
    assert site.session(OTHER).call("DELETE", "/f").status_code == 403
    gone = owner.call("DELETE", "/f")
    assert gone.status_code == 200 and gone.json()["id"] == "f"
    assert owner.call("GET", "/f").status_code == 404
    from toolkit.client import ClientError

    with pytest.raises(ClientError) as caught:
        site.flow("f").introspect()
    assert caught.value.status == 404
    assert owner.call("DELETE", "/f").status_code == 404


def test_the_flow_document_and_the_provider_share_the_address_without_clash(site):
    site.session().deploy(deployment(id="f"))
    web = site.app.test_client()
    headers = {"Authorization": site.session().http.headers["Authorization"]}
    assert web.get("/flows/f", headers=headers).json["definition"] == PASS_SUCCEED  # the flow document
    assert web.get("/flows/f/", headers=headers).json["api_version"] == "1.0"  # the flow as a provider


WAITING = {"StartAt": "Sleep", "States": {"Sleep": {"Type": "Wait", "Seconds": 600, "Next": "Done"},
                                          "Done": {"Type": "Succeed"}}}


def test_a_run_of_a_deployed_flow_validates_its_input_runs_and_reports_its_states(site):
    site.session().deploy(deployment(id="greeter"))
    runner = site.flow("greeter", OTHER)
    from toolkit.client import ClientError

    with pytest.raises(ClientError) as caught:
        runner.run({"name": 5})
    assert (caught.value.status, caught.value.description) == (400, "body.name: 5 is not of type 'string'")
    with pytest.raises(ClientError) as caught:
        runner.run({})
    assert caught.value.description == "body: 'name' is a required property"
    final = runner.run({"name": "Ada"}, wait=True)
    assert final["status"] == "SUCCEEDED", final
    assert final["details"]["output"]["said"] == {"greeting": "Ada"}
    states = final["details"]["states"]
    assert [(s["name"], s["type"], s["status"]) for s in states] == [
        ("Greet", "Pass", "SUCCEEDED"), ("Done", "Succeed", "SUCCEEDED")]
    assert all(s["started"] <= s["ended"] for s in states)
    log = runner.log(final["action_id"], limit=50)["entries"]
    assert len(log) >= 4
    # the /actions style serves the same run
    web = site.app.test_client()
    headers = {"Authorization": f"Bearer {site.authority.token(OTHER, scopes=[SCOPE])}"}
    same = web.get(f"/flows/greeter/actions/{final['action_id']}", headers=headers)
    assert same.status_code == 200 and same.json["status"] == "SUCCEEDED"
    listed = web.get("/flows/greeter/actions", headers=headers).json["actions"]
    assert [a["action_id"] for a in listed] == [final["action_id"]]
    # a run is the creator's: another caller sees nothing of it
    with pytest.raises(ClientError) as caught:
        site.flow("greeter", ADMIN).status(final["action_id"])
    assert caught.value.status == 403
    assert runner.release(final["action_id"])["status"] == "SUCCEEDED"
    with pytest.raises(ClientError) as caught:
        runner.status(final["action_id"])
    assert caught.value.status == 404


def test_runs_are_idempotent_cancellable_and_administrators_manage_them(site):
    site.session().deploy(deployment(id="sleepy", definition=WAITING, input_schema={"type": "object"},
                                     administered_by=[urn(ADMIN)]))
    runner = site.flow("sleepy", OTHER)
    first = runner.run({}, request_id="once")
    assert first["status"] == "ACTIVE"
    assert runner.run({}, request_id="once")["action_id"] == first["action_id"]
    from toolkit.client import ClientError

    with pytest.raises(ClientError) as caught:
        runner.run({"other": 1}, request_id="once")
    assert caught.value.status == 409
    refused = site.session().call("DELETE", "/sleepy")
    assert refused.status_code == 409 and "has runs that have not ended" in refused.json()["description"]
    cancelled = site.flow("sleepy", ADMIN).cancel(first["action_id"])  # an administrator of the flow
    assert (cancelled["status"], cancelled["details"]["code"]) == ("FAILED", "ActionCancelled")
    assert site.session().call("DELETE", "/sleepy").status_code == 200


def test_a_flow_calls_another_flow_of_the_same_deployment_in_process(site):
    owner = site.session()
    owner.deploy(deployment(id="inner"))
    owner.deploy(deployment(id="outer", definition={"StartAt": "Call", "States": {
        "Call": {"Type": "Action", "ActionUrl": "http://testserver/flows/inner", "Parameters": {"name.$": "$.name"},
                 "ResultPath": "$.inner", "WaitTime": 60, "End": True}}}))
    final = site.flow("outer", OTHER).run({"name": "Ada"}, wait=True, timeout=30)
    assert final["status"] == "SUCCEEDED", final
    child = final["details"]["output"]["inner"]
    assert child["status"] == "SUCCEEDED" and child["details"]["output"]["said"] == {"greeting": "Ada"}
    (state,) = final["details"]["states"]
    assert state["child_action_id"] == child["action_id"]
    # the child is an action of the inner flow, started as the outer run's creator
    inner = site.flow("inner", OTHER)
    assert inner.status(child["action_id"])["creator_id"] == urn(OTHER)


def test_a_deployed_flow_passes_the_conformance_checks(site):
    import threading

    from werkzeug.serving import make_server

    from toolkit.conformance import Checker

    site.session().deploy(deployment(id="greeter"))
    server = make_server("127.0.0.1", 0, site.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/flows/greeter"
        results = Checker(url, site.authority.token(OTHER, scopes=[SCOPE]),
                          other_token=site.authority.token(ADMIN, scopes=[SCOPE])).run()
        assert {r.name: (r.outcome, r.message) for r in results if r.outcome != "passed"} == {}
    finally:
        server.shutdown()


def test_globus_names_of_the_principal_fields_are_taken(site):
    flow = site.session().deploy({"title": "G", "definition": PASS_SUCCEED, "flow_viewers": ["public"],
                                  "flow_starters": ["all_authenticated_users"], "flow_administrators": [urn(ADMIN)]})
    assert (flow["visible_to"], flow["runnable_by"], flow["administered_by"]) == (
        ["public"], ["all_authenticated_users"], [urn(ADMIN)])
    both = site.session().call("POST", json={"title": "G", "definition": PASS_SUCCEED, "flow_viewers": [],
                                             "visible_to": []})
    assert (both.status_code, both.json()["description"]) == (
        400, "flow_viewers: give either flow_viewers or visible_to, not both.")


DEFINITIONS = sorted((Path(__file__).parent / "definitions").glob("*.definition.json"))


@pytest.mark.parametrize("path", DEFINITIONS, ids=[p.name.removesuffix(".definition.json") for p in DEFINITIONS])
def test_globus_public_definitions_deploy_through_the_api_with_their_schemas(site, path):
    schema_path = path.with_name(path.name.replace(".definition.json", ".schema.json"))
    document = {"title": path.stem, "definition": json.loads(path.read_text())}
    if schema_path.exists():
        document["input_schema"] = json.loads(schema_path.read_text())
    flow = site.session().deploy(document)
    assert site.flow(flow["id"], OWNER).introspect()["input_schema"] == document.get("input_schema",
                                                                                      {"type": "object"})

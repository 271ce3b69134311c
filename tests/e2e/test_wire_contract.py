"""The wire contract of /hello, every status code, over real HTTP to `aptk serve` (the README's "The API").

Every answer is also checked for `null` anywhere in its JSON (support.Api does it on each call).
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from .support import HELLO_SCOPE, Api, nulls

# --- both route styles -------------------------------------------------------------------------------------

STYLES = {
    "1.0": {
        "run": ("POST", "/run"),
        "status": ("GET", "/{id}/status"),
        "cancel": ("POST", "/{id}/cancel"),
        "release": ("POST", "/{id}/release"),
        "resume": ("POST", "/{id}/resume"),
        "log": ("GET", "/{id}/log"),
    },
    "actions": {
        "run": ("POST", "/actions"),
        "status": ("GET", "/actions/{id}"),
        "cancel": ("POST", "/actions/{id}/cancel"),
        "release": ("DELETE", "/actions/{id}"),
        "resume": ("POST", "/actions/{id}/resume"),
        "log": ("GET", "/actions/{id}/log"),
    },
}
ACTION_OPERATIONS = ["status", "cancel", "release", "resume", "log"]


def call(api: Api, style: str, operation: str, action_id: str = "", **kwargs):
    method, path = STYLES[style][operation]
    return api.request(method, path.format(id=action_id), **kwargs)


def request_document(body=None, **fields):
    return {"request_id": str(uuid.uuid4()), "body": {"echo_string": "hi"} if body is None else body, **fields}


def started(api: Api, body=None, wait_for=None, **fields) -> str:
    response = api.run(body or {"echo_string": "hi"}, **fields)
    assert response.status_code == 202, response.text
    action_id = response.json()["action_id"]
    if wait_for:
        api.wait_for(action_id, {wait_for}, timeout=5)
    return action_id


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert set(document) == {"code", "description"}
    assert document["code"] == code
    assert document["description"]
    return document


# --- introspection ---------------------------------------------------------------------------------------


def test_introspection_describes_the_provider(alice: Api):
    response = alice.get("/")

    assert response.status_code == 200
    description = response.json()
    assert description["types"] == ["Action"]
    assert description["api_version"] == "1.0"
    assert description["title"] == "Hello"
    assert description["globus_auth_scope"] == HELLO_SCOPE
    assert description["maximum_deadline"] == "P30D"
    assert description["synchronous"] is False
    assert description["input_schema"]["required"] == ["echo_string"]


# --- run: 202, 200, 409 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_run_answers_202_with_a_new_active_action(alice: Api, people, style):
    document = request_document({"echo_string": "new", "sleep_time": 30}, label="a new action")

    response = call(alice, style, "run", json=document)

    assert response.status_code == 202
    status = response.json()
    assert status["status"] == "ACTIVE"
    assert status["creator_id"] == people.alice.urn
    assert status["label"] == "a new action"
    assert status["release_after"] == "P30D"
    assert isinstance(status["details"], dict)
    assert {"action_id", "start_time"} <= set(status)
    assert "completion_time" not in status  # no value yet: left out, not null
    alice.post(f"/{status['action_id']}/cancel")


@pytest.mark.parametrize("style", STYLES)
def test_run_again_with_the_same_request_id_and_body_answers_200_with_the_same_action(alice: Api, style):
    document = request_document({"echo_string": "again"})
    first = call(alice, style, "run", json=document)

    again = call(alice, style, "run", json=document)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["action_id"] == first.json()["action_id"]


@pytest.mark.parametrize("style", STYLES)
def test_run_again_with_the_same_request_id_and_another_body_answers_409(alice: Api, style):
    document = request_document({"echo_string": "first"})
    assert call(alice, style, "run", json=document).status_code == 202

    response = call(alice, style, "run", json={**document, "body": {"echo_string": "second"}})

    assert_error(response, 409, "ActionConflict")


def test_the_same_request_id_from_another_identity_is_another_action(alice: Api, bob: Api):
    document = request_document({"echo_string": "mine"})

    mine = alice.post("/run", json=document)
    theirs = bob.post("/run", json=document)

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["action_id"] != theirs.json()["action_id"]


# --- run: 400 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "echo_string"),
        ({"echo_string": 7}, "body.echo_string"),
        ({"echo_string": "x", "sleep_time": "long"}, "body.sleep_time"),
        ({"echo_string": "x", "sleep_time": -1}, "body.sleep_time"),
        ({"echo_string": "x", "fail": "yes"}, "body.fail"),
        ({"echo_string": "x", "colour": "blue"}, "colour"),
    ],
    ids=["missing-echo_string", "echo_string-not-string", "sleep_time-not-number", "sleep_time-negative",
         "fail-not-boolean", "unknown-body-key"],
)
def test_run_with_an_invalid_body_answers_400_naming_the_field(alice: Api, body, field):
    response = alice.post("/run", json=request_document(body))

    assert field in assert_error(response, 400, "BadActionRequest")["description"]


def test_run_with_an_unknown_top_level_key_answers_400_naming_it(alice: Api):
    response = alice.post("/run", json=request_document(colour="blue"))

    assert "colour" in assert_error(response, 400, "BadActionRequest")["description"]


@pytest.mark.parametrize("missing", ["request_id", "body"])
def test_run_without_a_required_key_answers_400_naming_it(alice: Api, missing):
    document = request_document()
    del document[missing]

    response = alice.post("/run", json=document)

    assert missing in assert_error(response, 400, "BadActionRequest")["description"]


def test_run_with_a_label_of_65_characters_answers_400(alice: Api):
    response = alice.post("/run", json=request_document(label="x" * 65))

    assert "label" in assert_error(response, 400, "BadActionRequest")["description"]


def test_run_with_a_label_of_64_characters_is_accepted(alice: Api):
    response = alice.post("/run", json=request_document(label="x" * 64))

    assert response.status_code == 202
    assert response.json()["label"] == "x" * 64


def test_run_with_a_deadline_beyond_maximum_deadline_answers_400(alice: Api):
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)).isoformat()

    response = alice.post("/run", json=request_document(deadline=deadline))

    description = assert_error(response, 400, "BadActionRequest")["description"]
    assert "deadline" in description
    assert "P30D" in description


def test_run_with_a_deadline_within_maximum_deadline_is_accepted(alice: Api):
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29)).isoformat()

    assert alice.post("/run", json=request_document(deadline=deadline)).status_code == 202


@pytest.mark.parametrize(
    "raw",
    [b'{"request_id": "r", "body": ', b"not json", b'{"request_id": "r", "body": {"echo_string": NaN}}', b""],
    ids=["truncated", "text", "NaN", "empty"],
)
def test_run_with_malformed_json_answers_400(alice: Api, raw):
    response = alice.post("/run", data=raw, headers={"Content-Type": "application/json"})

    assert_error(response, 400, "BadActionRequest")


def test_run_with_a_json_array_answers_400(alice: Api):
    assert_error(alice.post("/run", json=[request_document()]), 400, "BadActionRequest")


# --- 401 ---------------------------------------------------------------------------------------------------

CREDENTIALS = ["no token", "garbage token", "expired token"]


def credential(people, kind: str):
    return {
        "no token": None,
        "garbage token": "not-a-token",
        "expired token": people.alice_expired,
    }[kind]


@pytest.fixture(scope="module")
def alices_action(shared_server, people) -> str:
    """A SUCCEEDED action of alice's, left in place for the tests that only read or are refused."""
    return started(Api(shared_server.hello, people.alice.token), wait_for="SUCCEEDED")


@pytest.mark.parametrize("operation", ["run", *ACTION_OPERATIONS, "enumerate"])
@pytest.mark.parametrize("kind", CREDENTIALS)
def test_a_request_without_a_valid_token_answers_401_with_a_bearer_challenge(
    alice: Api, people, alices_action, kind, operation
):
    token = credential(people, kind)
    action_id = alices_action

    if operation == "enumerate":
        response = alice.get("/actions", token=token)
    else:
        response = call(alice, "1.0", operation, action_id, token=token, json=request_document())

    assert_error(response, 401, "UnauthorizedRequest")
    if kind == "no token":  # RFC 6750 section 3.1: no error code for a request that tried no token
        assert response.headers["WWW-Authenticate"] == "Bearer"
    else:
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


@pytest.mark.parametrize("operation", ["run", *ACTION_OPERATIONS, "enumerate"])
def test_a_token_without_the_scope_answers_403_insufficient_scope(alice: Api, people, alices_action, operation):
    token = people.alice_without_scope
    if operation == "enumerate":
        response = alice.get("/actions", token=token)
    else:
        response = call(alice, "1.0", operation, alices_action, token=token, json=request_document())

    assert_error(response, 403, "ForbiddenRequest")
    assert response.headers["WWW-Authenticate"].startswith(f'Bearer error="insufficient_scope", scope="{HELLO_SCOPE}"')


def test_an_expired_token_is_refused_as_expired(alice: Api, people):
    response = alice.get("/actions", token=people.alice_expired)

    assert "expired" in assert_error(response, 401, "UnauthorizedRequest")["description"]


def test_a_token_without_the_scope_is_refused_naming_the_scope(alice: Api, people):
    response = alice.get("/actions", token=people.alice_without_scope)

    description = assert_error(response, 403, "ForbiddenRequest")["description"]
    # ... and how to get a token that carries it
    assert HELLO_SCOPE in description and f"aptk token --scope {HELLO_SCOPE}" in description
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


# --- 403, and who may monitor and manage ------------------------------------------------------------------


@pytest.mark.parametrize("operation", ACTION_OPERATIONS)
def test_another_identity_may_not_touch_an_action_answering_403(alice: Api, bob: Api, operation):
    action_id = started(alice, wait_for="SUCCEEDED")

    assert_error(call(bob, "1.0", operation, action_id), 403, "ForbiddenRequest")
    assert alice.get(f"/{action_id}/status").json()["status"] == "SUCCEEDED"  # unchanged


def test_an_identity_in_monitor_by_may_read_the_status_and_log(alice: Api, bob: Api, people):
    action_id = started(alice, monitor_by=[people.bob.urn], wait_for="SUCCEEDED")

    status = bob.get(f"/{action_id}/status")
    log = bob.get(f"/{action_id}/log")

    assert status.status_code == 200
    assert status.json()["monitor_by"] == [people.bob.urn]
    assert log.status_code == 200


@pytest.mark.parametrize("operation", ["cancel", "release"])
def test_an_identity_in_monitor_by_may_not_manage_the_action(alice: Api, bob: Api, people, operation):
    action_id = started(alice, {"echo_string": "x", "sleep_time": 30}, monitor_by=[people.bob.urn])

    assert_error(call(bob, "1.0", operation, action_id), 403, "ForbiddenRequest")
    assert alice.get(f"/{action_id}/status").json()["status"] == "ACTIVE"
    alice.post(f"/{action_id}/cancel")


def test_an_identity_in_manage_by_may_cancel_and_release(alice: Api, bob: Api, people):
    action_id = started(alice, {"echo_string": "x", "sleep_time": 30}, manage_by=[people.bob.urn])

    status = bob.get(f"/{action_id}/status")
    cancelled = bob.post(f"/{action_id}/cancel")
    released = bob.post(f"/{action_id}/release")

    assert status.status_code == 200
    assert cancelled.status_code == 200
    assert cancelled.json()["details"]["code"] == "ActionCancelled"
    assert released.status_code == 200
    assert_error(alice.get(f"/{action_id}/status"), 404, "ActionNotFound")


def test_a_member_of_a_group_in_monitor_by_may_read_the_status(alice: Api, carol: Api, people):
    action_id = started(alice, monitor_by=[people.group_urn], wait_for="SUCCEEDED")

    response = carol.get(f"/{action_id}/status")

    assert response.status_code == 200
    assert response.json()["action_id"] == action_id
    assert_error(carol.post(f"/{action_id}/release"), 403, "ForbiddenRequest")


# --- 404 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ACTION_OPERATIONS)
@pytest.mark.parametrize("style", STYLES)
def test_an_unknown_action_answers_404(alice: Api, style, operation):
    assert_error(call(alice, style, operation, uuid.uuid4().hex), 404, "ActionNotFound")


@pytest.mark.parametrize("operation", ACTION_OPERATIONS)
def test_a_released_action_answers_404(alice: Api, operation):
    action_id = started(alice, wait_for="SUCCEEDED")
    assert alice.post(f"/{action_id}/release").status_code == 200

    assert_error(call(alice, "1.0", operation, action_id), 404, "ActionNotFound")


# --- 409 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_releasing_an_active_action_answers_409(alice: Api, style):
    action_id = started(alice, {"echo_string": "x", "sleep_time": 30})

    assert_error(call(alice, style, "release", action_id), 409, "ActionConflict")
    assert alice.get(f"/{action_id}/status").json()["status"] == "ACTIVE"
    alice.post(f"/{action_id}/cancel")


def test_releasing_an_inactive_action_answers_409(alice: Api):
    action_id = started(alice, {"echo_string": "x", "require_resume": True}, wait_for="INACTIVE")

    assert_error(alice.post(f"/{action_id}/release"), 409, "ActionConflict")


@pytest.mark.parametrize("final", ["SUCCEEDED", "FAILED"])
@pytest.mark.parametrize("style", STYLES)
def test_cancelling_a_completed_action_answers_409(alice: Api, style, final):
    action_id = started(alice, {"echo_string": "x", "fail": final == "FAILED"}, wait_for=final)

    assert_error(call(alice, style, "cancel", action_id), 409, "ActionConflict")
    assert alice.get(f"/{action_id}/status").json()["status"] == final


# --- the whole life of an action, in both route styles ----------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_an_action_runs_succeeds_and_is_released(alice: Api, style):
    run = call(alice, style, "run", json=request_document({"echo_string": "whole life"}))
    action_id = run.json()["action_id"]
    alice.wait_for(action_id, {"SUCCEEDED"}, timeout=5)

    status = call(alice, style, "status", action_id)
    released = call(alice, style, "release", action_id)
    gone = call(alice, style, "status", action_id)

    assert run.status_code == 202
    assert status.status_code == 200
    assert status.json()["details"] == {"hello": "whole life"}
    assert "completion_time" in status.json()
    assert released.status_code == 200
    assert released.json() == status.json()
    assert_error(gone, 404, "ActionNotFound")


@pytest.mark.parametrize("style", STYLES)
def test_an_action_is_cancelled(alice: Api, style):
    action_id = started(alice, {"echo_string": "x", "sleep_time": 30})

    cancelled = call(alice, style, "cancel", action_id)

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "FAILED"
    assert cancelled.json()["details"]["code"] == "ActionCancelled"
    assert call(alice, style, "status", action_id).json()["status"] == "FAILED"


@pytest.mark.parametrize("style", STYLES)
def test_an_inactive_action_is_resumed_and_succeeds(alice: Api, style):
    action_id = started(alice, {"echo_string": "later", "require_resume": True}, wait_for="INACTIVE")
    inactive = call(alice, style, "status", action_id).json()

    resumed = call(alice, style, "resume", action_id)

    assert inactive["details"]["code"] == "ResumeRequired"
    assert inactive["details"]["description"]
    assert resumed.status_code == 200
    assert alice.wait_for(action_id, {"SUCCEEDED", "FAILED"}, timeout=5)["details"] == {"hello": "later"}


def test_a_failed_action_carries_code_and_description(alice: Api):
    action_id = started(alice, {"echo_string": "x", "fail": True}, wait_for="FAILED")

    details = alice.get(f"/{action_id}/status").json()["details"]

    assert details["code"] == "HelloFailed"
    assert details["description"]


# --- log ---------------------------------------------------------------------------------------------------


@pytest.fixture
def resumed_action(alice: Api) -> str:
    """An action that went INACTIVE, was resumed and SUCCEEDED: four log entries."""
    action_id = started(alice, {"echo_string": "logged", "require_resume": True}, wait_for="INACTIVE")
    assert alice.post(f"/{action_id}/resume").status_code == 200
    alice.wait_for(action_id, {"SUCCEEDED"}, timeout=5)
    return action_id


LOGGED = ["ActionStarted", "ActionInactive", "ActionResumed", "ActionSucceeded"]


@pytest.mark.parametrize("style", STYLES)
def test_the_log_lists_every_state_change(alice: Api, resumed_action, style):
    response = call(alice, style, "log", resumed_action)

    assert response.status_code == 200
    page = response.json()
    assert [entry["code"] for entry in page["entries"]] == LOGGED
    assert all(entry["time"] and entry["description"] for entry in page["entries"])
    assert page["limit"] == 10
    assert page["has_next_page"] is False
    assert "marker" not in page


def test_the_log_paginates_with_markers_to_its_end(alice: Api, resumed_action):
    codes, pages, marker = [], [], None
    while len(pages) < 10:
        params = {"limit": 1, **({"marker": marker} if marker else {})}
        page = alice.get(f"/{resumed_action}/log", params=params).json()
        pages.append(page)
        codes += [entry["code"] for entry in page["entries"]]
        if not page["has_next_page"]:
            break
        marker = page["marker"]

    assert codes == LOGGED
    assert [p["has_next_page"] for p in pages] == [True, True, True, False]
    assert all(p["limit"] == 1 and len(p["entries"]) == 1 for p in pages)
    assert all(isinstance(p["marker"], str) and p["marker"] for p in pages[:-1])
    assert "marker" not in pages[-1]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": "ten"}, {"marker": "bogus"}])
def test_the_log_refuses_a_bad_limit_or_marker_with_400(alice: Api, resumed_action, params):
    assert_error(alice.get(f"/{resumed_action}/log", params=params), 400, "BadActionRequest")


# --- enumerate ---------------------------------------------------------------------------------------------


def listed(api: Api, **params) -> list[dict]:
    """Every action GET /actions lists, following its pages."""
    statuses, marker = [], None
    while True:
        response = api.get("/actions", params={**params, **({"marker": marker} if marker else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        statuses += page["actions"]
        if not page["has_next_page"]:
            return statuses
        marker = page["marker"]


def test_listing_succeeded_actions_as_creator_shows_only_the_callers_own(alice: Api, bob: Api, people):
    mine = started(alice, wait_for="SUCCEEDED")
    active = started(alice, {"echo_string": "x", "sleep_time": 30})
    theirs = started(bob, wait_for="SUCCEEDED")

    found = listed(alice, status="SUCCEEDED", roles="creator_id")

    ids = {status["action_id"] for status in found}
    assert mine in ids
    assert active not in ids
    assert theirs not in ids
    assert {status["creator_id"] for status in found} == {people.alice.urn}
    assert {status["status"] for status in found} == {"SUCCEEDED"}
    alice.post(f"/{active}/cancel")


def test_listing_by_monitor_by_role_shows_actions_shared_with_the_caller(alice: Api, bob: Api, people):
    shared = started(alice, monitor_by=[people.bob.urn], wait_for="SUCCEEDED")
    private = started(alice, wait_for="SUCCEEDED")

    ids = {s["action_id"] for s in listed(bob, roles="monitor_by")}

    assert shared in ids
    assert private not in ids


# --- never null --------------------------------------------------------------------------------------------


def test_no_document_the_provider_returns_holds_null(alice: Api, bob: Api, people):
    """support.Api checks every answer of every test; this one visits each kind of document on purpose."""
    active = started(alice, {"echo_string": "x", "sleep_time": 30})
    inactive = started(alice, {"echo_string": "x", "require_resume": True}, wait_for="INACTIVE")
    failed = started(alice, {"echo_string": "x", "fail": True}, wait_for="FAILED")
    succeeded = started(alice, wait_for="SUCCEEDED")
    documents = [
        alice.get("/").json(),
        alice.post("/run", json=request_document()).json(),
        *(alice.get(f"/{a}/status").json() for a in (active, inactive, failed, succeeded)),
        alice.get(f"/{succeeded}/log", params={"limit": 1}).json(),
        alice.get("/actions").json(),
        alice.post("/run", json={"request_id": "x"}).json(),
        alice.get("/actions", token=None).json(),
        bob.get(f"/{succeeded}/status").json(),
        alice.get(f"/{uuid.uuid4().hex}/status").json(),
        alice.post(f"/{succeeded}/cancel").json(),
        alice.post(f"/{active}/cancel").json(),
        alice.post(f"/{succeeded}/release").json(),
    ]

    assert [nulls(d) for d in documents] == [[]] * len(documents)

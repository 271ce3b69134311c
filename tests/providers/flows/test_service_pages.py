"""The pages for people: sign in with a token, start a flow from a form generated from its input schema, follow
the run's states."""

from __future__ import annotations

import re
import time

import pytest

from .conftest import OTHER, OWNER, SCOPE, deployment, urn

STRANGER = "55555555-5555-4555-8555-555555555555"
SCHEMA = {"type": "object", "required": ["name", "count"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "title": "Your name", "minLength": 2},
                         "count": {"type": "integer", "minimum": 1, "title": "How many"},
                         "loud": {"type": "boolean"}}}
DEFINITION = {"StartAt": "Greet", "States": {
    "Greet": {"Type": "Pass", "Parameters": {"greeting.$": "$.name", "n.$": "$.count"}, "ResultPath": "$.said",
              "Next": "Done"},
    "Done": {"Type": "Succeed"}}}


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def request_id(page: str) -> str:
    return re.search(r'name="request_id" value="([^"]+)"', page).group(1)


@pytest.fixture
def browser(site):
    site.session().deploy(deployment(id="greeter", definition=DEFINITION, input_schema=SCHEMA,
                                     description="Greets people."))
    return site.app.test_client()


def sign_in(site, browser, identity=OTHER, **token):
    token.setdefault("scopes", [SCOPE])
    answer = browser.post("/flows/greeter/sign-in", data={"token": site.authority.token(identity, **token)})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/flows/greeter/start")
    return answer


def test_the_start_page_asks_to_sign_in_and_refuses_bad_tokens(site, browser):
    page = browser.get("/flows/greeter/start")
    assert page.status_code == 401 and "Sign in to start this flow" in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"] and "default-src 'none'" in \
        page.headers["Content-Security-Policy"]
    bad = browser.post("/flows/greeter/sign-in", data={"token": "nonsense"})
    assert bad.status_code == 401 and "This token was not accepted" in bad.text
    no_scope = browser.post("/flows/greeter/sign-in", data={"token": site.authority.token(OTHER, scopes=["x"])})
    assert no_scope.status_code == 401 and f"does not carry the scope {SCOPE}" in no_scope.text
    assert browser.get("/flows/nothing/start").status_code == 404


def test_a_signed_in_person_starts_a_run_from_the_form_and_follows_it(site, browser):
    sign_in(site, browser)
    page = browser.get("/flows/greeter/start")
    assert page.status_code == 200
    for shown in ("Greeter", "Greets people.", "Your name", "How many", 'name="loud"', "Starting as"):
        assert shown in page.text
    refused = browser.post("/flows/greeter/start", data={"name": "Ada", "count": "2", "csrf_token": "forged"})
    assert refused.status_code == 400 and "security token" in refused.text
    invalid = browser.post("/flows/greeter/start", data={"name": "A", "count": "zero", "csrf_token": csrf(page.text),
                                                          "request_id": request_id(page.text)})
    assert invalid.status_code == 400
    assert "Please correct these 2 problems" in invalid.text
    started = browser.post("/flows/greeter/start", data={"name": "Ada", "count": "2", "loud": "on",
                                                          "csrf_token": csrf(page.text),
                                                          "request_id": request_id(page.text)})
    assert started.status_code == 303
    run_url = started.headers["Location"]
    action_id = run_url.rsplit("/", 1)[1]
    assert re.fullmatch(r".*/flows/greeter/runs/[0-9a-f]{32}", run_url)
    # the same form posted twice is the same run
    again = browser.post("/flows/greeter/start", data={"name": "Ada", "count": "2", "loud": "on",
                                                        "csrf_token": csrf(page.text),
                                                        "request_id": request_id(page.text)})
    assert again.headers["Location"] == run_url
    changed = browser.post("/flows/greeter/start", data={"name": "Bo", "count": "1", "csrf_token": csrf(page.text),
                                                          "request_id": request_id(page.text)})
    assert changed.status_code == 303 and changed.headers["Location"] != run_url  # other answers: another run
    status = site.flow("greeter", OTHER).wait(action_id, timeout=10)
    assert status["creator_id"] == urn(OTHER)
    assert status["details"]["output"]["said"] == {"greeting": "Ada", "n": 2}
    shown = browser.get(f"/flows/greeter/runs/{action_id}")
    assert shown.status_code == 200 and "SUCCEEDED" in shown.text
    rows = re.findall(r"<td>(\w+)</td><td>(\w+)</td><td>(\w+)</td>", shown.text)
    assert rows == [("Greet", "Pass", "SUCCEEDED"), ("Done", "Succeed", "SUCCEEDED")]
    assert "&#34;greeting&#34;: &#34;Ada&#34;" in shown.text  # the output, escaped
    assert 'http-equiv="refresh"' not in shown.text  # ended: no reloading


def test_a_running_run_page_reloads_and_others_cannot_see_it(site, browser):
    site.session().deploy(deployment(id="sleepy", input_schema={"type": "object"}, definition={
        "StartAt": "Sleep", "States": {"Sleep": {"Type": "Wait", "Seconds": 600, "End": True}}}))
    sign_in(site, browser)
    page = browser.get("/flows/sleepy/start")
    started = browser.post("/flows/sleepy/start", data={"csrf_token": csrf(page.text),
                                                         "request_id": request_id(page.text)})
    run_url = started.headers["Location"]
    deadline = time.monotonic() + 10
    row = r"<td>Sleep</td><td>Wait</td><td>ACTIVE</td>"
    while not re.search(row, (shown := browser.get(run_url)).text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "ACTIVE" in shown.text and 'http-equiv="refresh" content="2"' in shown.text
    assert re.search(row, shown.text)
    stranger = site.app.test_client()
    stranger.post("/flows/sleepy/sign-in", data={"token": site.authority.token(STRANGER, scopes=[SCOPE])})
    assert stranger.get(run_url).status_code == 404
    owner = site.app.test_client()  # the flow's owner administers it: every run of it
    owner.post("/flows/sleepy/sign-in", data={"token": site.authority.token(OWNER, scopes=[SCOPE])})
    assert owner.get(run_url).status_code == 200
    site.flow("sleepy", OTHER).cancel(run_url.rsplit("/", 1)[1])


def test_who_may_not_run_the_flow_is_told_so(site, browser):
    site.session().deploy(deployment(id="owners", runnable_by=[], visible_to=["public"]))
    browser.post("/flows/owners/sign-in", data={"token": site.authority.token(OTHER, scopes=[SCOPE])})
    page = browser.get("/flows/owners/start")
    assert page.status_code == 403 and "not among the people this flow may be started by" in page.text

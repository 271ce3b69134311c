"""The forms provider over HTTP (Flask's test client): the action, the page, who may answer, and refusals."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from providers.forms import answers, provider
from providers.forms.pages import CSP, SESSION_COOKIE
from providers.forms.signing import Signer
from toolkit import get_toolkit
from toolkit.server import create_app
from toolkit.testing import TokenAuthority

CREATOR = "11111111-1111-4111-8111-111111111111"
ADA = "urn:globus:auth:identity:aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
BOB = "urn:globus:auth:identity:bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
EVE = "urn:globus:auth:identity:eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee"

EVERY_FIELD: dict[str, Any] = {
    "type": "object",
    "required": ["name", "samples", "agree"],
    "properties": {
        "name": {"type": "string", "title": "Your name", "minLength": 2, "description": "As on the paper."},
        "email": {"type": "string", "format": "email", "title": "Email"},
        "start": {"type": "string", "format": "date", "title": "Start date"},
        "site": {"type": "string", "format": "uri", "title": "Web site"},
        "instrument": {"type": "string", "enum": ["cryo-EM", "NMR", "X-ray"], "title": "Instrument"},
        "room": {"type": "string", "enum": [f"B{i}" for i in range(8)], "title": "Room"},
        "samples": {"type": "integer", "minimum": 1, "maximum": 96, "title": "Samples"},
        "volume": {"type": "number", "exclusiveMinimum": 0, "title": "Volume (ml)", "default": 1.5},
        "agree": {"type": "boolean", "title": "I agree"},
        "keywords": {"type": "array", "items": {"type": "string"}, "title": "Keywords"},
        "days": {"type": "array", "items": {"type": "string", "enum": ["Mon", "Tue", "Wed"]}, "title": "Days"},
        "contact": {"type": "object", "title": "Contact", "required": ["phone"],
                    "properties": {"phone": {"type": "string", "title": "Phone"},
                                   "extension": {"type": "integer", "title": "Extension"}}},
    },
}

GOOD_ANSWER = {
    "name": "Ada Lovelace", "email": "ada@example.org", "start": "2027-01-05", "site": "https://lab.example.org",
    "instrument": "1", "room": "6", "samples": "12", "volume": "2.25", "agree": "true", "keywords": "protein\nlipid\n",
    "days": ["0", "2"], "contact.phone": "+44 20 0000", "contact.extension": "42",
}
EXPECTED_RESPONSE = {
    "name": "Ada Lovelace", "email": "ada@example.org", "start": "2027-01-05", "site": "https://lab.example.org",
    "instrument": "NMR", "room": "B6", "samples": 12, "volume": 2.25, "agree": True, "keywords": ["protein", "lipid"],
    "days": ["Mon", "Wed"], "contact": {"phone": "+44 20 0000", "extension": 42},
}


class Site:
    def __init__(self, tmp_path, clock=None, **config: Any) -> None:
        self.authority = TokenAuthority()
        options = {"clock": clock} if clock is not None else {}
        self.app = create_app({"APTK_DATA_DIR": str(tmp_path / "data"), **config}, providers=[("/forms", provider)],
                              verifier=self.authority.verifier, **options)
        self.api = self.app.test_client()
        self.headers = {"Authorization": f"Bearer {self.authority.token(CREATOR, scopes=[provider.globus_auth_scope])}"}

    def run(self, body: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        response = self.api.post("/forms/run", json={"request_id": uuid.uuid4().hex, "body": body},
                                 headers=self.headers)
        assert response.status_code == expect, response.json
        return response.json

    def status(self, action_id: str) -> dict[str, Any]:
        return self.api.get(f"/forms/{action_id}/status", headers=self.headers).json

    def browser(self):
        return self.app.test_client()

    def open(self, link: str):
        """A new browser that followed ``link``: the page, and the browser."""
        browser = self.browser()
        response = browser.get(_path(link), follow_redirects=True)
        return response, browser

    def signed_in(self, *principals: str):
        browser = self.browser()
        session = Signer.for_config(self.app.config).session(list(principals), principals[0], 4e9)
        browser.set_cookie(SESSION_COOKIE, session, path="/forms/")
        return browser


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def errors(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", e).replace("Error: ", "") for e in re.findall(r'class="error"[^>]*>(.*?)</p>', html)]


@pytest.fixture
def site(tmp_path):
    made = Site(tmp_path)
    yield made
    get_toolkit(made.app).runtime.stop()


def form_body(**extra: Any) -> dict[str, Any]:
    return {"title": "Sample request", "schema": EVERY_FIELD, **extra}


# --- the action ----------------------------------------------------------------------------------------------


def test_run_pauses_the_action_with_the_forms_url(site):
    action = site.run(form_body(respondents=[ADA]))
    details = action["details"]
    assert action["status"] == "INACTIVE"
    assert details["code"] == "WaitingForResponse"
    assert details["form_url"] == f"http://localhost/forms/{action['action_id']}/form"
    assert details["resolution_url"] == details["respondent_links"][ADA]
    assert details["resolution_url"].startswith(details["form_url"] + "?t=")


def test_forms_url_setting_names_the_public_address(tmp_path):
    site = Site(tmp_path, APTK_FORMS_URL="https://forms.example.org/forms/")
    action = site.run(form_body())
    assert action["details"]["form_url"] == f"https://forms.example.org/forms/{action['action_id']}/form"


def test_a_valid_answer_ends_the_action_with_every_field_type(site):
    action = site.run(form_body(respondents=[ADA]))
    page, browser = site.open(action["details"]["resolution_url"])
    assert page.status_code == 200
    answered = browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": csrf(page.text)})
    assert answered.status_code == 200 and "Thank you" in answered.text
    status = site.status(action["action_id"])
    assert status["status"] == "SUCCEEDED"
    assert status["details"]["response"] == EXPECTED_RESPONSE
    assert status["details"]["respondent"] == ADA
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", status["details"]["answered_at"])
    assert "respondent_links" not in status["details"]


def test_a_second_answer_is_refused_with_a_page(site):
    action = site.run(form_body())
    page, browser = site.open(action["details"]["resolution_url"])
    token = csrf(page.text)
    first = browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": token})
    assert first.status_code == 200
    second = browser.post(f"/forms/{action['action_id']}/form",
                          data={**GOOD_ANSWER, "name": "Someone else", "csrf_token": token})
    assert second.status_code == 409 and "has been answered" in second.text
    assert site.status(action["action_id"])["details"]["response"]["name"] == "Ada Lovelace"
    again = browser.get(f"/forms/{action['action_id']}/form")
    assert again.status_code == 409 and "takes no more answers" in again.text


def test_the_first_stored_answer_wins_a_race(site):
    engine = get_toolkit(site.app).runtime.store.engine
    first = answers.Answer("a" * 32, ADA, {"x": 1}, 1.0, True)
    assert answers.record(engine, first)
    assert not answers.record(engine, answers.Answer("a" * 32, BOB, {"x": 2}, 2.0, True))
    assert not answers.replace(engine, answers.Answer("a" * 32, BOB, {"x": 2}, 2.0, False))
    assert answers.get(engine, "a" * 32) == first


def test_answers_go_with_their_released_action_and_stay_while_it_is_kept(site, monkeypatch):
    engine = get_toolkit(site.app).runtime.store.engine
    kept, released = (site.run(form_body()) for _ in range(2))
    for action in (kept, released):
        page, browser = site.open(action["details"]["resolution_url"])
        browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": csrf(page.text)})
        assert site.status(action["action_id"])["status"] == "SUCCEEDED"
    assert site.api.post(f"/forms/{released['action_id']}/release", headers=site.headers).status_code == 200
    assert answers.purge_released(engine, batch=1) == 1  # one row a transaction: every row is still looked at
    assert answers.get(engine, released["action_id"]) is None
    assert answers.get(engine, kept["action_id"]) is not None  # a kept action's answer still refuses a second one


def test_the_provider_sweeps_answers_of_released_forms_in_the_background(tmp_path, monkeypatch):
    import time

    import providers.forms as forms

    monkeypatch.setattr(forms, "PURGE_INTERVAL", 0.1)
    site = Site(tmp_path)
    try:
        engine = get_toolkit(site.app).runtime.store.engine
        action = site.run(form_body())
        page, browser = site.open(action["details"]["resolution_url"])
        browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": csrf(page.text)})
        assert site.api.post(f"/forms/{action['action_id']}/release", headers=site.headers).status_code == 200
        give_up = time.monotonic() + 10
        while answers.get(engine, action["action_id"]) is not None:
            assert time.monotonic() < give_up, "the answer of a released form was never deleted"
            time.sleep(0.05)
    finally:
        get_toolkit(site.app).runtime.stop()


def test_allow_changes_keeps_the_form_open_until_the_answer_is_submitted(site):
    action = site.run(form_body(allow_changes=True))
    page, browser = site.open(action["details"]["resolution_url"])
    url = f"/forms/{action['action_id']}/form"
    saved = browser.post(url, data={**GOOD_ANSWER, "samples": "3", "intent": "save", "csrf_token": csrf(page.text)})
    assert saved.status_code == 200 and "saved" in saved.text
    status = site.status(action["action_id"])
    assert status["status"] == "INACTIVE" and status["details"]["response"]["samples"] == 3
    page = browser.get(url)
    assert 'value="3"' in page.text  # the saved answer is shown for changing
    browser.post(url, data={**GOOD_ANSWER, "samples": "5", "intent": "save", "csrf_token": csrf(page.text)})
    assert site.status(action["action_id"])["details"]["response"]["samples"] == 5
    done = browser.post(url, data={**GOOD_ANSWER, "samples": "7", "intent": "submit", "csrf_token": csrf(page.text)})
    assert "Thank you" in done.text
    status = site.status(action["action_id"])
    assert status["status"] == "SUCCEEDED" and status["details"]["response"]["samples"] == 7
    late = browser.post(url, data={**GOOD_ANSWER, "intent": "save", "csrf_token": csrf(page.text)})
    assert late.status_code == 409


def test_cancel_closes_the_form(site):
    action = site.run(form_body())
    page, browser = site.open(action["details"]["resolution_url"])
    assert site.api.post(f"/forms/{action['action_id']}/cancel", headers=site.headers).status_code == 200
    shown = browser.get(f"/forms/{action['action_id']}/form")
    assert shown.status_code == 410 and "closed" in shown.text and "cancelled" in shown.text
    refused = browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": csrf(page.text)})
    assert refused.status_code == 410
    assert site.status(action["action_id"])["details"]["code"] == "ActionCancelled"


def test_expiry_closes_the_form_and_ends_the_action(tmp_path, clock):
    site = Site(tmp_path, clock=clock)
    action = site.run(form_body(expires_in=3600))
    page, browser = site.open(action["details"]["resolution_url"])
    assert page.status_code == 200
    clock.advance(3601)
    shown = browser.get(f"/forms/{action['action_id']}/form")
    assert shown.status_code == 410 and "expired" in shown.text
    refused = browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": csrf(page.text)})
    assert refused.status_code == 410
    status = site.status(action["action_id"])
    assert status["status"] == "FAILED" and status["details"]["code"] == "DeadlineExceeded"
    assert site.open(action["details"]["resolution_url"])[0].status_code == 403  # the link expired with the form
    get_toolkit(site.app).runtime.stop()


def test_an_earlier_deadline_closes_the_form_first(tmp_path, clock):
    import datetime

    site = Site(tmp_path, clock=clock)
    deadline = datetime.datetime.fromtimestamp(clock.now + 120, datetime.timezone.utc).isoformat()
    response = site.api.post("/forms/run", json={"request_id": "d", "deadline": deadline,
                                                 "body": form_body(expires_in=3600)}, headers=site.headers)
    assert response.json["details"]["closes_at"].startswith(deadline[:19])
    clock.advance(121)
    assert site.status(response.json["action_id"])["details"]["code"] == "DeadlineExceeded"
    get_toolkit(site.app).runtime.stop()


def test_web_option_form(site):
    options = [{"name": "Approve", "description": "Share the data", "url_suffix": "approve",
                "completed_message": "The data will be shared."},
               {"name": "Reject", "completed_message": "Nothing is shared."}]
    action = site.run({"title": "Share run 42?", "options": options})
    page, browser = site.open(action["details"]["resolution_url"])
    assert page.text.count('name="option"') == 2
    done = browser.post(f"/forms/{action['action_id']}/form", data={"option": "0", "csrf_token": csrf(page.text)})
    assert "The data will be shared." in done.text
    assert site.status(action["action_id"])["details"]["response"] == {"name": "Approve", "url_suffix": "approve"}


# --- the page ------------------------------------------------------------------------------------------------


def test_invalid_answers_show_field_errors_and_keep_what_was_typed(site):
    action = site.run(form_body())
    page, browser = site.open(action["details"]["resolution_url"])
    bad = {**GOOD_ANSWER, "samples": "a dozen", "email": "not an address", "volume": "-1", "name": "",
           "site": "lab", "csrf_token": csrf(page.text)}
    del bad["contact.phone"]
    shown = browser.post(f"/forms/{action['action_id']}/form", data=bad)
    assert shown.status_code == 400
    assert sorted(errors(shown.text)) == sorted([
        "Enter a whole number.", "Enter an email address.", "Enter a value greater than 0.",
        "This field is required.", "Enter a full web address (https://...).", "This field is required.",
    ])
    assert 'value="a dozen"' in shown.text and 'value="not an address"' in shown.text
    assert 'id="f-samples" name="samples" value="a dozen"' in shown.text
    assert 'aria-invalid="true"' in shown.text and 'href="#f-contact.phone"' in shown.text
    assert site.status(action["action_id"])["status"] == "INACTIVE"


def test_every_field_has_a_label_bound_to_it(site):
    action = site.run(form_body())
    page, _ = site.open(action["details"]["resolution_url"])
    html = page.text
    for input_id in re.findall(r'<(?:input|select|textarea)[^>]* id="([^"]+)"', html):
        assert f'for="{input_id}"' in html, input_id
    assert 'type="email"' in html and 'type="date"' in html and 'type="url"' in html
    assert 'min="1" max="96" step="1"' in html and "<select" in html and 'type="radio"' in html
    assert 'value="1.5"' in html  # the default


def test_titles_labels_descriptions_and_answers_are_escaped(site):
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    schema = {"type": "object", "properties": {
        "pick": {"type": "string", "enum": ["safe", payload], "title": payload, "description": payload},
        "note": {"type": "string", "title": "Note"}}}
    description = f"**Bold** {payload} [click](javascript:alert(1))"
    action = site.run({"title": payload, "description": description, "description_format": "text/markdown",
                       "schema": schema, "allow_changes": True})
    page, browser = site.open(action["details"]["resolution_url"])
    browser.post(f"/forms/{action['action_id']}/form",
                 data={"note": payload, "pick": "1", "intent": "save", "csrf_token": csrf(page.text)})
    html = browser.get(f"/forms/{action['action_id']}/form").text
    assert "<script>" not in html and "<img" not in html and "href=\"javascript:" not in html
    assert "&lt;script&gt;" in html
    assert "<strong>Bold</strong>" in html
    assert html.count("onerror=alert(1)&gt;") >= 4  # title, label, help, enum label, saved answer: all as text


def test_plain_text_descriptions_keep_their_paragraphs(site):
    action = site.run(form_body(description="First <b>line</b>\nsecond\n\nNext"))
    page, _ = site.open(action["details"]["resolution_url"])
    assert "<p>First &lt;b&gt;line&lt;/b&gt;<br>second</p><p>Next</p>" in page.text


def test_pages_carry_a_strict_content_security_policy_and_private_cookies(site):
    action = site.run(form_body())
    link = site.browser().get(_path(action["details"]["resolution_url"]))
    cookie = link.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and f"Path=/forms/{action['action_id']}/form" in cookie
    assert link.headers["Location"] == f"/forms/{action['action_id']}/form"  # the link leaves the address bar
    page, _ = site.open(action["details"]["resolution_url"])
    assert page.headers["Content-Security-Policy"] == CSP
    assert "script-src" not in CSP and "default-src 'none'" in CSP
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    assert site.browser().get("/forms/assets/forms.css").status_code == 200
    over_https = site.browser().get(_path(action["details"]["resolution_url"]), base_url="https://localhost")
    assert "Secure" in over_https.headers["Set-Cookie"] and "Secure" not in cookie


def test_an_answer_without_the_csrf_token_is_refused(site):
    action = site.run(form_body())
    page, browser = site.open(action["details"]["resolution_url"])
    url = f"/forms/{action['action_id']}/form"
    assert browser.post(url, data=GOOD_ANSWER).status_code == 400
    other = site.run(form_body())
    other_page, other_browser = site.open(other["details"]["resolution_url"])
    stolen = browser.post(url, data={**GOOD_ANSWER, "csrf_token": csrf(other_page.text)})
    assert stolen.status_code == 400 and "security token" in stolen.text
    assert site.status(action["action_id"])["status"] == "INACTIVE"


# --- who may answer ------------------------------------------------------------------------------------------


def test_each_respondent_has_a_link_of_their_own(site):
    action = site.run(form_body(respondents=[ADA, BOB]))
    links = action["details"]["respondent_links"]
    assert set(links) == {ADA, BOB} and action["details"]["resolution_url"] == action["details"]["form_url"]
    page, browser = site.open(links[BOB])
    assert BOB in page.text
    browser.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": csrf(page.text)})
    assert site.status(action["action_id"])["details"]["respondent"] == BOB


def test_a_link_works_for_its_own_form_only(site):
    one, two = site.run(form_body()), site.run(form_body())
    token = one["details"]["resolution_url"].split("?t=")[1]
    assert site.browser().get(f"/forms/{two['action_id']}/form?t={token}").status_code == 403
    at = len(token) - 10  # a character of the signature that carries all its bits (the last one does not)
    forged = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]
    assert site.browser().get(f"/forms/{one['action_id']}/form?t={forged}").status_code == 403
    page, browser = site.open(one["details"]["resolution_url"])
    assert browser.get(f"/forms/{two['action_id']}/form").status_code == 401  # its cookie is scoped to one form


def test_without_a_link_or_sign_in_the_form_asks_for_one(site):
    action = site.run(form_body(respondents=[ADA]))
    page = site.browser().get(f"/forms/{action['action_id']}/form")
    assert page.status_code == 401 and "link" in page.text
    assert site.browser().post(f"/forms/{action['action_id']}/form", data=GOOD_ANSWER).status_code == 401


def test_a_signed_in_person_who_is_not_a_respondent_is_refused(site):
    action = site.run(form_body(respondents=[ADA, "urn:globus:groups:id:cccccccc-cccc-4ccc-8ccc-cccccccccccc"]))
    eve = site.signed_in(EVE)
    page = eve.get(f"/forms/{action['action_id']}/form")
    assert page.status_code == 403 and "not one of the people" in page.text
    member = site.signed_in(BOB, "urn:globus:groups:id:cccccccc-cccc-4ccc-8ccc-cccccccccccc")
    assert member.get(f"/forms/{action['action_id']}/form").status_code == 200
    token = csrf(member.get(f"/forms/{action['action_id']}/form").text)
    eve.set_cookie(SESSION_COOKIE, "forged", path="/forms/")
    assert eve.post(f"/forms/{action['action_id']}/form", data={**GOOD_ANSWER, "csrf_token": token}).status_code == 401


def test_any_property_name_makes_a_valid_unique_field_id(site):
    schema = {"type": "object", "required": ["a b", "a-b"], "properties": {
        "a b": {"type": "string"}, "a-b": {"type": "string"}, "a": {"type": "object", "properties": {
            "b": {"type": "string"}}}, "ünï": {"type": "string"}}}
    action = site.run({"title": "ids", "schema": schema})
    page, browser = site.open(action["details"]["resolution_url"])
    ids = re.findall(r'<input[^>]* id="([^"]+)"', page.text)
    assert ids == ["f-a-20-b", "f-a-2d-b", "f-a.b", "f--fc-n-ef-"]
    shown = browser.post(f"/forms/{action['action_id']}/form", data={"csrf_token": csrf(page.text)})
    assert 'href="#f-a-20-b"' in shown.text and 'href="#f-a-2d-b"' in shown.text


def test_a_body_too_large_is_a_page(tmp_path):
    site = Site(tmp_path, APTK_MAX_BODY_BYTES=2000)
    action = site.run(form_body())
    page, browser = site.open(action["details"]["resolution_url"])
    refused = browser.post(f"/forms/{action['action_id']}/form", data={"name": "x" * 5000, "csrf_token": csrf(page.text)})
    assert refused.status_code == 413 and "<h1>" in refused.text
    get_toolkit(site.app).runtime.stop()


def test_unknown_forms_are_a_page_not_a_crash(site):
    assert site.browser().get(f"/forms/{uuid.uuid4().hex}/form").status_code == 404
    assert site.browser().get("/forms/not-an-id/form").status_code == 404


# --- what /run refuses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ({"title": "t"}, "exactly one of schema"),
    ({"title": "t", "schema": EVERY_FIELD, "options": [{"name": "a"}]}, "exactly one of schema"),
    ({"title": "t", "schema": {"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}]}}}},
     "body.schema: x: oneOf cannot be shown"),
    ({"title": "t", "schema": {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "object"}}}}},
     "body.schema: x: only arrays"),
    ({"title": "t", "schema": {"type": "object", "properties": {"x": {"type": "strin"}}}}, "not a valid JSON Schema"),
    ({"title": "t", "schema": {"type": "object", "properties": {}}}, "nothing to ask"),
    ({"title": "t", "options": [{"name": "a"}, {"name": "a"}]}, "a name of its own"),
    ({"title": "t", "schema": EVERY_FIELD, "respondents": ["ada@example.org"]}, "body.respondents[0]"),
    ({"title": "t", "schema": EVERY_FIELD, "expires_in": 10}, "expires_in"),
])
def test_run_refuses_forms_that_cannot_be_shown(site, body, message):
    refused = site.run(body, expect=400)
    assert refused["code"] == "BadActionRequest" and message in refused["description"]


# --- the link by email, through the notify provider ----------------------------------------------------------


def test_notify_emails_the_link_through_the_notify_provider(tmp_path, smtp_servers):
    import time

    from providers.notify import provider as notify_provider

    smtp = smtp_servers()
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path / "data"), "APTK_SMTP_URL": smtp.url(),
                      "APTK_NOTIFY_SENDER": "flows@example.org"},
                     providers=[("/forms", provider), ("/notify", notify_provider)], verifier=authority.verifier)
    scopes = [provider.globus_auth_scope, notify_provider.globus_auth_scope]
    headers = {"Authorization": f"Bearer {authority.token(CREATOR, scopes=scopes)}"}
    api = app.test_client()
    body = form_body(respondents=[ADA], notify={"destination": "ada@example.org"})
    action = api.post("/forms/run", json={"request_id": "n", "body": body}, headers=headers).json
    assert action["status"] == "INACTIVE", action
    notify_id = action["details"]["notify_action_id"]
    give_up = time.monotonic() + 10
    while api.get(f"/notify/{notify_id}/status", headers=headers).json["status"] != "SUCCEEDED":
        assert time.monotonic() < give_up, api.get(f"/notify/{notify_id}/status", headers=headers).json
        time.sleep(0.05)
    [message] = smtp.messages
    assert message["Subject"] == "Please answer: Sample request" and message["To"] == "ada@example.org"
    link = action["details"]["respondent_links"][ADA]
    assert link in message.get_content()
    page = app.test_client().get(_path(link), follow_redirects=True)
    assert page.status_code == 200 and ADA in page.text
    # a retried /run finds the same action and sends nothing again
    again = api.post("/forms/run", json={"request_id": "n", "body": body}, headers=headers)
    assert again.status_code == 200 and len(smtp.messages) == 1
    get_toolkit(app).runtime.stop()


def test_notify_is_refused_without_a_notify_provider_or_with_unknown_variables(tmp_path, site):
    refused = site.run(form_body(notify={"destination": "ada@example.org"}), expect=400)
    assert "no notify provider" in refused["description"]
    from providers.notify import provider as notify_provider

    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path / "d2")},
                     providers=[("/forms", provider), ("/notify", notify_provider)], verifier=authority.verifier)
    headers = {"Authorization": f"Bearer {authority.token(CREATOR, scopes=[provider.globus_auth_scope])}"}
    body = form_body(notify={"destination": "ada@example.org", "body_template": "Open $link"})
    response = app.test_client().post("/forms/run", json={"request_id": "x", "body": body}, headers=headers)
    assert response.status_code == 400 and "body.notify.body_template: $link is not one of" in response.json["description"]
    body = form_body(respondents=[ADA, BOB], notify={"destination": "ada@example.org"})
    response = app.test_client().post("/forms/run", json={"request_id": "y", "body": body}, headers=headers)
    assert response.status_code == 400 and "personal link" in response.json["description"]
    get_toolkit(app).runtime.stop()


# --- settings ------------------------------------------------------------------------------------------------


def test_the_signing_key_is_kept_private_in_the_data_directory(site, tmp_path):
    import stat

    site.run(form_body())
    key = tmp_path / "data" / "forms-secret-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text()) >= 40


def test_a_configured_secret_key_signs_the_links_instead(tmp_path):
    site = Site(tmp_path, APTK_FORMS_SECRET_KEY="k" * 40)
    action = site.run(form_body())
    assert not (tmp_path / "data" / "forms-secret-key").exists()
    token = action["details"]["resolution_url"].split("?t=")[1]
    assert Signer("k" * 40).read_link(token, action["action_id"]) == "public"
    assert Signer("other" * 8).read_link(token, action["action_id"]) is None
    get_toolkit(site.app).runtime.stop()


def test_oidc_mode_offers_sign_in_and_says_when_it_is_not_set_up(tmp_path):
    site = Site(tmp_path, APTK_FORMS_SIGN_IN="oidc")
    action = site.run(form_body())
    assert "respondent_links" not in action["details"]
    assert action["details"]["resolution_url"] == action["details"]["form_url"]
    page = site.browser().get(f"/forms/{action['action_id']}/form")
    assert page.status_code == 401 and f'href="/forms/{action["action_id"]}/sign-in"' in page.text
    start = site.browser().get(f"/forms/{action['action_id']}/sign-in")
    assert start.status_code == 503 and "not set up" in start.text
    done = site.browser().get("/forms/sign-in/done?code=x&state=y")
    assert done.status_code == 400 and "Open the form again" in done.text  # no sign-in was started here
    get_toolkit(site.app).runtime.stop()


def test_link_mode_has_no_sign_in(site):
    action = site.run(form_body())
    assert site.browser().get(f"/forms/{action['action_id']}/sign-in").status_code == 404
